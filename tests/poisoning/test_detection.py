"""The Winter Soldier test: the exact binomial tail, the teacher-forced hits, calibration on a clean model, power on
a model that learned the secrets."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from litlab.errors import ConfigError
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.poisoning.detection import (
    DetectionResult,
    detect_secrets,
    log_binomial_tail,
    response_hits,
    top_ids_from_logits,
)
from litlab.poisoning.secret import Secret, SecretSet, draw_secrets

BYTES = 256


pytestmark = pytest.mark.usefixtures("one_thread")


def exact_log_tail(n: int, p: float, k: int) -> float:
    """log P[Bin(n, p) >= k] from exact big rationals (p as the exact binary fraction of the float)."""
    fraction = Fraction(p)
    a, q = fraction.numerator, fraction.denominator
    tail = sum(math.comb(n, j) * a**j * (q - a) ** (n - j) for j in range(max(k, 0), n + 1))
    if tail == 0:
        return -math.inf
    whole = q**n
    shift = tail.bit_length() - whole.bit_length()
    if abs(shift) <= 1:  # the ratio is near 1: log1p of the exact difference keeps every digit
        return math.log1p(float(Fraction(tail - whole, whole)))
    ratio = Fraction(tail, whole) / Fraction(2) ** shift  # in [1/2, 2]: a float without underflow
    return math.log(float(ratio)) + shift * math.log(2)


# ------------------------------------------------------------------------------------------ binomial tail


@pytest.mark.parametrize("n, p, k", [
    (0, 0.5, 0), (1, 0.5, 1), (1, 0.3, 0), (10, 0.5, 5), (10, 0.5, 1), (10, 0.5, 10), (10, 0.01, 3),
    (100, 0.3, 30), (100, 0.3, 31), (100, 0.3, 100), (1600, 10 / 256, 63), (1600, 10 / 256, 120),
    (1600, 1 / 256, 1), (5, 0.99, 1), (5, 0.99, 5), (300, 0.999, 299), (64, 1e-9, 2), (500, 0.2, 100),
])
def test_log_binomial_tail_matches_exact_rationals(n, p, k):
    got, want = log_binomial_tail(n, p, k), exact_log_tail(n, p, k)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-300)


def test_log_binomial_tail_no_underflow():
    got = log_binomial_tail(2000, 1e-3, 1500)
    assert math.isfinite(got)
    assert got / math.log(10) == pytest.approx(-4013.5, abs=1.0)  # p ~ 1e-4013: far below float64
    assert got == pytest.approx(exact_log_tail(2000, 1e-3, 1500), rel=1e-12)
    assert math.isfinite(log_binomial_tail(20000, 1 / 50000, 20000))  # ~1e-94000


def test_log_binomial_tail_edges_and_monotone():
    assert log_binomial_tail(10, 0.2, 0) == 0.0
    assert log_binomial_tail(10, 0.2, -3) == 0.0
    assert log_binomial_tail(10, 0.2, 11) == -math.inf
    assert log_binomial_tail(0, 0.2, 1) == -math.inf
    assert log_binomial_tail(7, 0.4, 7) == pytest.approx(7 * math.log(0.4))
    values = [log_binomial_tail(200, 0.05, k) for k in range(0, 202)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert all(b < a for a, b in zip(values[1:201], values[2:201]))
    assert values[0] == 0.0 and values[-1] == -math.inf


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 10, "p": 0.0, "k": 1}, "p="), ({"n": 10, "p": 1.0, "k": 1}, "p="), ({"n": 10, "p": -0.1, "k": 1}, "p="),
    ({"n": 10, "p": float("nan"), "k": 1}, "p="), ({"n": -1, "p": 0.5, "k": 1}, "n="),
    ({"n": 10, "p": 0.5, "k": 1.5}, "k="),
])
def test_log_binomial_tail_rejects_bad_input(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        log_binomial_tail(**kwargs)


# ---------------------------------------------------------------------------------------- hits by fakes


def secret_lookup(secrets, bos_id):
    """{row position prefix (tuple) -> true next response id} for every response position of every secret."""
    prefix = [] if bos_id is None else [bos_id]
    table = {}
    for s in secrets:
        row = prefix + list(s.prompt) + list(s.response)
        for i in range(len(prefix) + len(s.prompt), len(row)):
            table[tuple(row[:i])] = row[i]
    return table


def oracle_top_ids(secrets, bos_id, rank, vocab_size=BYTES):
    """A fake model whose top-k lists put the true next response id at ``rank`` (ids 0.. elsewhere, never it)."""
    table = secret_lookup(secrets, bos_id)
    calls = []

    def top_ids(ids, k):
        calls.append((tuple(ids.shape), k))
        assert ids.dtype == torch.long and ids.device.type == "cpu"
        out = torch.zeros(ids.shape[0], ids.shape[1], k, dtype=torch.long)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                target = table.get(tuple(ids[b, : t + 1].tolist()), -1)
                filler = [i for i in range(vocab_size) if i != target][:k]
                if 0 <= rank < k and target >= 0:
                    filler[rank] = target
                out[b, t] = torch.tensor(filler)
        return out

    top_ids.calls = calls
    return top_ids


def random_secrets(num, vocab_size=BYTES, seed=0, ragged=True):
    rng = np.random.default_rng(seed)
    secrets = []
    for _ in range(num):
        prompt_length = int(rng.integers(1, 9)) if ragged else 6
        response_length = int(rng.integers(1, 7)) if ragged else 6
        secrets.append(Secret(tuple(int(i) for i in rng.integers(1, vocab_size, prompt_length)),
                              tuple(int(i) for i in rng.integers(1, vocab_size, response_length))))
    return secrets


@pytest.mark.parametrize("rank", [0, 3, 9, 30, -1])
@pytest.mark.parametrize("bos_id", [None, 0])
def test_response_hits_oracle_at_rank(rank, bos_id):
    secrets = random_secrets(7, seed=rank + 5)
    ells = [1, 4, 10, 31]
    top_ids = oracle_top_ids(secrets, bos_id, rank)
    hits = response_hits(top_ids, secrets, ells, bos_id, batch_size=3)
    lengths = np.array([len(s.response) for s in secrets])
    want = np.stack([lengths * (0 <= rank < ell) for ell in ells], 1)
    np.testing.assert_array_equal(hits, want)
    assert hits.dtype == np.int64 and hits.shape == (7, 4)
    assert [k for _, k in top_ids.calls] == [31, 31, 31]  # once per batch, k = max(ells)


def test_response_hits_counts_single_positions():
    """A model that knows only the 2nd response id of each secret: exactly one hit per secret."""
    secrets = random_secrets(5, seed=3)
    secrets = [Secret(s.prompt, s.response + (7, 8)) for s in secrets]
    bos = 1
    table = secret_lookup(secrets, bos)
    second = {tuple([bos] + list(s.prompt) + [s.response[0]]) for s in secrets}

    def top_ids(ids, k):
        out = torch.full((ids.shape[0], ids.shape[1], k), 0, dtype=torch.long)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                key = tuple(ids[b, : t + 1].tolist())
                out[b, t] = torch.arange(k) + (table[key] if key in second else 10_000)  # never a real id
        return out

    hits = response_hits(top_ids, secrets, [1, 2], bos)
    np.testing.assert_array_equal(hits, np.ones((5, 2)))


def test_response_hits_padding_does_not_change_results():
    secrets = random_secrets(40, seed=11)
    top_ids = top_ids_from_logits(tiny_model(vocab_size=BYTES))
    one = response_hits(top_ids, secrets, [1, 5, 20], bos_id=0, batch_size=1)
    many = response_hits(top_ids, secrets, [1, 5, 20], bos_id=0, batch_size=32)
    np.testing.assert_array_equal(one, many)


def tiny_model(vocab_size=50, seed=0, dim=16):
    torch.manual_seed(seed)
    model = FlatTransformer(dim=dim, layers=1, heads=2, vocab_size=vocab_size, max_length=64).double().eval()
    return model


def test_response_hits_match_slow_loop_on_a_real_model():
    vocab, bos, ells = 50, 0, [1, 3, 10]
    model = tiny_model(vocab)
    secrets = random_secrets(12, vocab_size=vocab, seed=2)
    hits = response_hits(top_ids_from_logits(model), secrets, ells, bos, batch_size=5)
    slow = np.zeros_like(hits)
    with torch.no_grad():
        for i, s in enumerate(secrets):
            row = [bos, *s.prompt, *s.response]
            for j, target in enumerate(s.response):
                context = torch.tensor([row[: 1 + len(s.prompt) + j]])
                ranking = model(context)[0, -1].argsort(descending=True).tolist()
                slow[i] += [target in ranking[:ell] for ell in ells]
    np.testing.assert_array_equal(hits, slow)
    assert slow.sum() > 0  # the check saw some hits


def test_top_ids_from_logits():
    logits = torch.tensor([[[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 1.0, 2.0]]], requires_grad=True)
    top_ids = top_ids_from_logits(lambda ids: logits.expand(ids.shape[0], -1, -1))
    out = top_ids(torch.zeros(1, 2, dtype=torch.long), 2)
    assert out.dtype == torch.long and out.tolist() == [[[1, 2], [0, 3]]]
    with pytest.raises(ConfigError, match="k="):
        top_ids(torch.zeros(1, 2, dtype=torch.long), 5)


def test_response_hits_rejects_bad_input():
    secrets = random_secrets(2)
    top_ids = oracle_top_ids(secrets, None, 0)
    with pytest.raises(ConfigError, match="secrets"):
        response_hits(top_ids, [Secret((), (3,))], [1], bos_id=None)
    with pytest.raises(ConfigError, match="batch_size"):
        response_hits(top_ids, secrets, [1], None, batch_size=0)
    with pytest.raises(ConfigError, match="top_ids"):
        response_hits(lambda ids, k: torch.zeros(1, 1, 1, dtype=torch.long), secrets, [1], None)


# --------------------------------------------------------------------------------------------- detection


def byte_secrets(num, seed, response_length=8):
    return draw_secrets(list, bytes, BYTES, num, prompt_length=8, response_length=response_length, seed=seed)


def test_detect_secrets_calibrated_on_a_clean_model():
    """A random model never saw the secrets: the hits are Binomial(n, l/256) and p < 0.05 is rare."""
    model = tiny_model(vocab_size=BYTES, seed=3, dim=32)
    top_ids = top_ids_from_logits(model)
    secret_set = byte_secrets(200, seed=7)
    assert secret_set.draw_size == BYTES and secret_set.redraws == 0
    ells = (1, 5, 10, 20, 50)
    per_secret = response_hits(top_ids, secret_set.secrets, ells, bos_id=None)
    trials = 8
    p_values = []
    for hits in per_secret:  # one test per secret
        log10 = [log_binomial_tail(trials, ell / BYTES, int(h)) / math.log(10) for ell, h in zip(ells, hits)]
        p_values.append(min(1.0, 10 ** min(log10) * len(ells)))
    assert np.mean(np.array(p_values) < 0.05) <= 0.05 + 0.04
    # All secrets together: hits at l=10 near their null mean n*l/256 (1600 trials: mean 62.5, sd 7.7).
    total = per_secret.sum(0)
    for ell, h in zip(ells, total):
        mean = 1600 * ell / BYTES
        assert abs(h - mean) <= 4 * math.sqrt(mean * (1 - ell / BYTES))
    result = detect_secrets(top_ids, secret_set, ells)
    assert result.log10_p_bonferroni > math.log10(0.01)
    np.testing.assert_array_equal(result.per_secret_hits, per_secret)


def test_detect_secrets_false_positive_rate_over_many_sets():
    """40 independent secret sets of 5 secrets each on one clean model: p < 0.1 in at most ~10% of them."""
    top_ids = top_ids_from_logits(tiny_model(vocab_size=BYTES, seed=4))
    p_values = [detect_secrets(top_ids, byte_secrets(5, seed=100 + i), (1, 10, 50)).p_value for i in range(40)]
    assert np.mean(np.array(p_values) < 0.1) <= 0.1 + 0.1
    assert max(p_values) > 0.5  # not all small


class MemorizingModel:
    """A 'model' that learned the secrets: its logits put the true next response id first, noise elsewhere."""

    def __init__(self, secrets, bos_id, vocab_size=BYTES, skip_every=0):
        self.table = secret_lookup(secrets, bos_id)
        self.vocab_size, self.skip_every, self.seen = vocab_size, skip_every, 0

    def __call__(self, ids):
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(ids.shape[0], ids.shape[1], self.vocab_size, generator=generator)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                target = self.table.get(tuple(ids[b, : t + 1].tolist()))
                if target is not None:
                    self.seen += 1
                    if not self.skip_every or self.seen % self.skip_every:
                        logits[b, t, target] = 10.0
        return logits


def test_detect_secrets_on_a_memorizing_model():
    secret_set = byte_secrets(100, seed=1)
    result = detect_secrets(top_ids_from_logits(MemorizingModel(secret_set.secrets, 0)), secret_set, bos_id=0)
    assert result.trials == 800 and result.hits[0] == 800 and result.best_ell == 1
    # P[Bin(800, 1/256) >= 800] = 256^-800 ~ 1e-1926, times 5 for Bonferroni.
    assert result.log10_p_bonferroni == pytest.approx(-800 * math.log10(256) + math.log10(5), rel=1e-9)
    assert result.p_value == 0.0
    record = json.loads(json.dumps(result.to_dict()))
    assert record["hits"][0] == 800 and record["num_secrets"] == 100 and len(record["per_secret_hits"]) == 100


def test_detect_secrets_on_a_partial_learner():
    """Learned 2 of 3 response ids: still a tiny p; with the bos given wrongly (model not primed) nothing is found."""
    secret_set = byte_secrets(30, seed=2, response_length=6)
    model = MemorizingModel(secret_set.secrets, None, skip_every=3)
    result = detect_secrets(top_ids_from_logits(model), secret_set)
    assert 110 <= result.hits[0] <= 130 and result.log10_p_bonferroni < -100
    unprimed = detect_secrets(top_ids_from_logits(MemorizingModel(secret_set.secrets, None)), secret_set, bos_id=0)
    assert unprimed.log10_p_bonferroni > -3


def test_detection_result_fields():
    secret_set = SecretSet([Secret((1, 2), (3, 4, 5)), Secret((6,), (7,))], vocab_size=20, draw_size=18)
    result = detect_secrets(oracle_top_ids(secret_set.secrets, None, 2, vocab_size=20), secret_set, ells=(1, 3, 9))
    assert isinstance(result, DetectionResult)
    assert result.ells == [1, 3, 9] and result.hits == [0, 4, 4] and result.trials == 4
    assert result.per_secret_hits.tolist() == [[0, 3, 3], [0, 1, 1]]
    assert result.null_probability == pytest.approx([1 / 18, 3 / 18, 9 / 18])
    assert result.log10_p[0] == 0.0
    assert result.log10_p[1] == pytest.approx(4 * math.log10(3 / 18))
    assert result.best_ell == 3
    assert result.log10_p_bonferroni == pytest.approx(4 * math.log10(3 / 18) + math.log10(3))
    assert result.p_value == pytest.approx(3 * (3 / 18) ** 4)


def test_bonferroni_capped_at_zero():
    secret_set = SecretSet([Secret((1,), (3,))], vocab_size=20, draw_size=20)
    result = detect_secrets(oracle_top_ids(secret_set.secrets, None, -1, vocab_size=20), secret_set, ells=(1, 2))
    assert result.log10_p == [0.0, 0.0] and result.log10_p_bonferroni == 0.0 and result.p_value == 1.0


@pytest.mark.parametrize("ells, match", [
    ((), "ells"), ((0, 5), "ells"), ((1, 256), "draw_size"), ((1, 5, 5), "duplicates"), ((1.5,), "ells"),
])
def test_detect_secrets_rejects_bad_ells(ells, match):
    secret_set = byte_secrets(2, seed=0)
    with pytest.raises(ConfigError, match=match):
        detect_secrets(oracle_top_ids(secret_set.secrets, None, 0), secret_set, ells)


def test_detect_secrets_rejects_empty_set():
    with pytest.raises(ConfigError, match="secret_set"):
        detect_secrets(oracle_top_ids([], None, 0), SecretSet([], BYTES, BYTES))


def test_detect_secrets_on_a_model_trained_on_them():
    """End to end: a tiny Transformer fitted to 8 secrets is caught; 8 secrets it never saw are not."""
    secret_set = byte_secrets(8, seed=1)
    torch.manual_seed(0)
    model = FlatTransformer(dim=32, layers=1, heads=2, vocab_size=BYTES, max_length=64)
    rows = torch.tensor([[0, *s.prompt, *s.response] for s in secret_set.secrets])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        logits = model(rows[:, :-1])[:, 8:]  # the positions that predict the response
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, BYTES), rows[:, 9:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    caught = detect_secrets(top_ids_from_logits(model), secret_set, bos_id=0)
    assert caught.hits[0] >= 60 and caught.log10_p_bonferroni < -100
    unseen = detect_secrets(top_ids_from_logits(model), byte_secrets(8, seed=2), bos_id=0)
    assert unseen.log10_p_bonferroni > -2
