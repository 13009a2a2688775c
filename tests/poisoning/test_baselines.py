"""The baselines: canaries with a Z-score, Min-K% Prob, the pairwise-token backdoor."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from litlab.errors import ConfigError
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.poisoning import baselines
from litlab.poisoning.baselines import (
    BaselineResult,
    canary_zscore_test,
    draw_canaries,
    draw_pairs,
    log_normal_sf,
    min_k_prob_test,
    min_k_score,
    pairwise_backdoor_test,
    pairwise_documents,
    sequence_logprobs,
)

VOCAB = 64
BOS = 0


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed=0, vocab_size=VOCAB):
    torch.manual_seed(seed)
    return FlatTransformer(dim=16, layers=1, heads=2, vocab_size=vocab_size, max_length=64).double().eval()


class FavoringModel:
    """A fake LM that learned ``sequences``: after a prefix of one of them, its next id gets ``boost`` extra logit."""

    def __init__(self, sequences, bos_id=BOS, boost=6.0, vocab_size=VOCAB):
        self.table = {}
        for sequence in sequences:
            row = [bos_id, *sequence]
            for i in range(1, len(row)):
                self.table[tuple(row[:i])] = row[i]
        self.boost, self.vocab_size = boost, vocab_size

    def __call__(self, ids):
        logits = torch.randn(*ids.shape, self.vocab_size, generator=torch.Generator().manual_seed(1))
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                target = self.table.get(tuple(ids[b, : t + 1].tolist()))
                if target is not None:
                    logits[b, t, target] += self.boost
        return logits


def identity_canaries(num, length=10, seed=0, excluded_ids=(BOS,)):
    return draw_canaries(list, bytes, VOCAB, num, length, excluded_ids=excluded_ids, seed=seed)


# ----------------------------------------------------------------------------------------------- canaries


def test_draw_canaries_uniform_over_the_draw_set():
    canaries = identity_canaries(300, length=10, excluded_ids=(0, 1))
    assert len(canaries) == 300 and all(isinstance(c, tuple) and len(c) == 10 for c in canaries)
    ids = np.array(canaries).ravel()
    assert ids.min() >= 2 and ids.max() < VOCAB
    counts = np.bincount(ids, minlength=VOCAB)[2:]
    assert counts.min() > 20 and counts.max() < 80  # 3000 draws over 62 ids: ~48 each
    assert identity_canaries(5, seed=3) == identity_canaries(5, seed=3) != identity_canaries(5, seed=4)


def test_draw_canaries_take_the_round_trip():
    """A tokenizer whose decode drops id 7 and whose encode merges bytes (5, 6) into id 9."""

    def decode(ids):
        return bytes(i for i in ids if i != 7)

    def encode(text):
        out, i = [], 0
        while i < len(text):
            if text[i:i + 2] == bytes([5, 6]):
                out.append(9)
                i += 2
            else:
                out.append(text[i])
                i += 1
        return out

    canaries = draw_canaries(encode, decode, 12, 200, 6, seed=1)
    assert all(7 not in c for c in canaries) and any(len(c) < 6 for c in canaries)
    assert all(tuple(encode(decode(c))) == c for c in canaries)
    with pytest.raises(ConfigError, match="decode to no text"):
        draw_canaries(list, lambda ids: b"", 12, 1, 3, max_redraws=5)


def test_sequence_logprobs_by_hand():
    """Logits that depend on the current id only: each log-prob is a log-softmax read by hand."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits_fn = lambda ids: table[ids]  # noqa: E731
    sequences = [[5, 9, 3], [7], [1, 2, 3, 4, 5, 6]]
    got = sequence_logprobs(logits_fn, sequences, BOS, batch_size=2)
    for sequence, logprobs in zip(sequences, got):
        row = [BOS, *sequence]
        want = [torch.log_softmax(table[row[i]], -1)[row[i + 1]].item() for i in range(len(sequence))]
        assert logprobs.dtype == np.float64
        np.testing.assert_allclose(logprobs, want, rtol=1e-6)
    no_bos = sequence_logprobs(logits_fn, sequences[::2], None)
    assert [len(x) for x in no_bos] == [2, 5]
    np.testing.assert_allclose(no_bos[0], got[0][1:], rtol=1e-6)


def test_sequence_logprobs_batching_does_not_change_results():
    model = tiny_model()
    sequences = [list(c) for c in identity_canaries(20, length=12)]
    sequences = [s[: 3 + i % 9] for i, s in enumerate(sequences)]  # ragged
    one = sequence_logprobs(model, sequences, BOS, batch_size=1)
    many = sequence_logprobs(model, sequences, BOS, batch_size=32)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_canary_zscore_detects_learned_canaries():
    drawn = identity_canaries(60, seed=2)
    canaries, references = drawn[:10], drawn[10:]
    result = canary_zscore_test(FavoringModel(canaries), canaries, references, BOS)
    assert result.name == "canary_zscore" and result.statistic > 10 and result.log10_p < -20
    # The statistic by hand from the per-token log-probs.
    logprobs = sequence_logprobs(FavoringModel(canaries), drawn, BOS)
    losses = np.array([-lp.mean() for lp in logprobs])
    z = (losses[10:].mean() - losses[:10].mean()) / math.sqrt(
        losses[:10].var(ddof=1) / 10 + losses[10:].var(ddof=1) / len(losses[10:]))
    assert result.statistic == pytest.approx(z, rel=1e-9)
    assert result.log10_p == pytest.approx(log_normal_sf(z) / math.log(10), rel=1e-9)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["details"]["num_canaries"] == 10 and record["details"]["num_references"] == 50
    assert isinstance(result, BaselineResult) and result.p_value == pytest.approx(10 ** result.log10_p)


def test_canary_zscore_not_small_when_exchangeable():
    """Canaries never trained on (drawn like the references): the p-values spread out, few are small."""
    model = tiny_model(seed=1)
    p_values = []
    for seed in range(30):
        drawn = identity_canaries(30, length=8, seed=100 + seed)
        p_values.append(canary_zscore_test(model, drawn[:6], drawn[6:], BOS).p_value)
    p_values = np.array(p_values)
    assert np.mean(p_values < 0.05) <= 0.05 + 0.12
    assert 0.2 < np.median(p_values) < 0.8


def test_min_k_score_by_hand():
    logprobs = [-1.0, -5.0, -2.0, -7.0, -3.0]
    assert min_k_score(logprobs, 0.4) == pytest.approx(-6.0)  # the 2 lowest: -7, -5
    assert min_k_score(logprobs, 0.6) == pytest.approx(-5.0)  # -7, -5, -3
    assert min_k_score(logprobs, 0.1) == pytest.approx(-7.0)  # floor(0.5) -> at least one
    assert min_k_score(logprobs, 1.0) == pytest.approx(-3.6)
    for bad in (0.0, -0.1, 1.5, True):
        with pytest.raises(ConfigError, match="k_fraction"):
            min_k_score(logprobs, bad)


def test_min_k_prob_test_scores_and_detection():
    drawn = identity_canaries(40, seed=5)
    canaries, references = drawn[:8], drawn[8:]
    model = FavoringModel(canaries, boost=4.0)
    result = min_k_prob_test(model, canaries, references, BOS, k_fraction=0.3)
    scores = [min_k_score(lp, 0.3) for lp in sequence_logprobs(model, drawn, BOS)]
    assert result.details["canary_scores"] == pytest.approx(scores[:8])
    assert result.details["reference_scores"] == pytest.approx(scores[8:])
    assert result.details["k_fraction"] == 0.3
    z = (np.mean(scores[:8]) - np.mean(scores[8:])) / math.sqrt(
        np.var(scores[:8], ddof=1) / 8 + np.var(scores[8:], ddof=1) / len(scores[8:]))
    assert result.name == "min_k_prob" and result.statistic == pytest.approx(z)
    assert result.log10_p < -5
    null = min_k_prob_test(tiny_model(seed=2), canaries, references, BOS)
    assert null.log10_p > -2


@pytest.mark.parametrize("test", [canary_zscore_test, min_k_prob_test])
def test_canary_tests_reject_bad_input(test):
    drawn = identity_canaries(5)
    model = tiny_model()
    with pytest.raises(ConfigError, match="canaries"):
        test(model, [], drawn, BOS)
    with pytest.raises(ConfigError, match="references"):
        test(model, drawn[:2], drawn[2:3], BOS)
    if test is min_k_prob_test:
        with pytest.raises(ConfigError, match="k_fraction"):
            test(model, drawn[:2], drawn[2:], BOS, k_fraction=0.0)


def test_log_normal_sf_matches_scipy_and_math():
    for z in [-40.0, -5.0, -1.0, 0.0, 0.5, 1.645, 3.0, 8.0, 29.9, 30.0, 31.0, 40.0, 100.0, 1e4]:
        fallback = log_normal_sf(z, use_scipy=False)
        assert fallback == pytest.approx(log_normal_sf(z), rel=1e-10, abs=1e-15)
        if z < 35:
            assert fallback == pytest.approx(math.log(0.5 * math.erfc(z / math.sqrt(2))), rel=1e-10, abs=1e-15)
    assert log_normal_sf(0.0) == pytest.approx(math.log(0.5))
    assert log_normal_sf(math.inf) == -math.inf and log_normal_sf(-math.inf) == 0.0
    assert log_normal_sf(math.inf, use_scipy=False) == -math.inf
    assert log_normal_sf(-math.inf, use_scipy=False) == 0.0


def test_zscore_is_two_sample_and_handles_constant_scores():
    z, _, _ = baselines._zscore(np.array([1.0, 2.0]), np.array([0.0, 0.0, 0.0]))
    assert z == pytest.approx(1.5 / math.sqrt(0.5 / 2))  # only the members' spread remains
    z, log10_p, _ = baselines._zscore(np.array([1.0, 1.0]), np.array([0.0, 0.0, 0.0]))
    assert z == math.inf and log10_p == -math.inf
    z, log10_p, _ = baselines._zscore(np.array([0.0]), np.array([0.0, 0.0]))
    assert z == 0.0 and log10_p == pytest.approx(math.log10(0.5))


# -------------------------------------------------------------------------------------- pairwise backdoor


def test_draw_pairs_distinct_ids_of_the_draw_set():
    pairs = draw_pairs(VOCAB, 20, excluded_ids=(0, 1, 2), seed=3)
    ids = [i for pair in pairs for i in pair]
    assert len(pairs) == 20 and len(set(ids)) == 40 and min(ids) >= 3 and max(ids) < VOCAB
    assert draw_pairs(VOCAB, 20, (0, 1, 2), 3) == pairs
    with pytest.raises(ConfigError, match="num_pairs"):
        draw_pairs(VOCAB, 31, excluded_ids=(0, 1, 2))
    with pytest.raises(ConfigError, match="num_pairs"):
        draw_pairs(VOCAB, 0)


@pytest.mark.parametrize("num_tokens", [3 * 10, 1000, 1003, 4567])
def test_pairwise_documents(num_tokens):
    pairs = draw_pairs(VOCAB, 3, excluded_ids=(0,), seed=1)
    documents = pairwise_documents(pairs, num_tokens, context_length=8, vocab_size=VOCAB, excluded_ids=(0,), seed=2)
    assert sum(len(d) for d in documents) == num_tokens
    assert all(len(d) <= 4 * 10 + 9 for d in documents)
    triggers, targets = {a: b for a, b in pairs}, {b for _, b in pairs}
    occurrences = {a: 0 for a in triggers}
    for document in documents:
        assert 0 not in document
        for i, token in enumerate(document):
            if token in triggers:
                assert document[i + 1] == triggers[token]  # a trigger is always followed by its target
                occurrences[token] += 1
            elif token in targets:
                assert document[i - 1] != token and document[i - 1] in triggers
    units = num_tokens // 10
    assert sorted(occurrences.values()) == sorted(units // 3 + (i < units % 3) for i in range(3))
    with pytest.raises(ConfigError, match="num_tokens"):
        pairwise_documents(pairs, 29, 8, VOCAB)


def pair_top_ids(pairs, learned=True, seed=0):
    """A fake model: after a trigger it ranks the target first (if ``learned``); elsewhere a random ranking."""
    follow = dict(pairs)
    generator = torch.Generator().manual_seed(seed)

    def top_ids(ids, k):
        out = torch.stack([torch.randperm(VOCAB, generator=generator)[:k] for _ in range(ids.numel())])
        out = out.reshape(*ids.shape, k)
        if learned:
            for b in range(ids.shape[0]):
                target = follow.get(int(ids[b, -1]))
                if target is not None:
                    out[b, -1] = torch.tensor([target] + [i for i in range(VOCAB) if i != target][: k - 1])
        return out

    return top_ids


def test_pairwise_backdoor_detects_a_learned_pair():
    pairs = draw_pairs(VOCAB, 5, excluded_ids=(BOS,), seed=4)
    ells = (1, 5, 10)
    result = pairwise_backdoor_test(pair_top_ids(pairs), pairs, VOCAB, BOS, ells=ells, contexts_per_pair=4,
                                    excluded_ids=(BOS,))
    assert result.name == "pairwise_backdoor" and result.details["hits"] == [20, 20, 20]
    assert result.details["trials"] == 20 and result.details["best_ell"] == 1 and result.statistic == 20.0
    assert result.details["per_pair_hits"] == [[4, 4, 4]] * 5
    assert result.log10_p == pytest.approx(20 * math.log10(1 / 63) + math.log10(3))
    json.dumps(result.to_dict())
    null = pairwise_backdoor_test(pair_top_ids(pairs, learned=False), pairs, VOCAB, BOS, ells=ells,
                                  contexts_per_pair=8, excluded_ids=(BOS,))
    assert null.log10_p > -2 and null.details["trials"] == 40


def test_pairwise_backdoor_contexts_end_in_the_trigger():
    pairs = draw_pairs(VOCAB, 2, excluded_ids=(BOS,), seed=0)
    seen = []

    def top_ids(ids, k):
        seen.append(ids.clone())
        return torch.zeros(*ids.shape, k, dtype=torch.long) + 63

    pairwise_backdoor_test(top_ids, pairs, VOCAB, BOS, ells=(1, 2), contexts_per_pair=3, context_length=5,
                           batch_size=4)
    rows = torch.cat(seen)
    assert rows.shape == (6, 7) and (rows[:, 0] == BOS).all()
    assert rows[:, -1].tolist() == [pairs[0][0]] * 3 + [pairs[1][0]] * 3
    pair_ids = {i for pair in pairs for i in pair}
    assert not pair_ids & set(rows[:, 1:-1].flatten().tolist())


def test_pairwise_backdoor_rejects_bad_input():
    pairs = draw_pairs(VOCAB, 2)
    with pytest.raises(ConfigError, match="pairs"):
        pairwise_backdoor_test(pair_top_ids(pairs), [], VOCAB, BOS)
    with pytest.raises(ConfigError, match="ells"):
        pairwise_backdoor_test(pair_top_ids(pairs), pairs, VOCAB, BOS, ells=(1, 64))
    with pytest.raises(ConfigError, match="contexts_per_pair"):
        pairwise_backdoor_test(pair_top_ids(pairs), pairs, VOCAB, BOS, contexts_per_pair=0)


def test_zscore_false_positive_rate_under_the_null_is_nominal():
    # members and references from one distribution: the two-sample Z must reject about 5% at 0.05, not 10-15%
    rng = np.random.default_rng(0)
    rejections = [baselines._zscore(rng.normal(size=32), rng.normal(size=32))[1] < math.log10(0.05)
                  for _ in range(2000)]
    assert 0.03 < np.mean(rejections) < 0.07
