"""The crafting objective: gradients against finite differences, soft vs hard paths, hard sampling rules."""

import pytest
import torch
import torch.nn.functional as F

from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.poisoning.crafting import (
    alignment_objective,
    cosine,
    double_backward_attention,
    gumbel_noise,
    relaxed_tokens,
    sample_poisons,
    secret_bigrams,
    secret_loss,
    shared_ngrams,
    soft_lm_loss,
)

V = 23


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(dtype=torch.float64) -> FlatTransformer:
    torch.manual_seed(0)
    return FlatTransformer(dim=8, layers=1, heads=2, vocab_size=V, max_length=32, ffn_multiple_of=8).to(dtype)


def objective_fn(model, psi, noise, secret=((3, 4, 5), (6, 7, 8)), temperature=0.7):
    params = list(model.parameters())
    to_logits = lambda e: model(None, inputs_embeds=e)  # noqa: E731
    with torch.enable_grad(), double_backward_attention():
        s = secret_loss(to_logits, model.embedding, secret[0], secret[1], bos_id=0)
        sg = [g.detach() for g in torch.autograd.grad(s, params)]
        probs = relaxed_tokens(psi, temperature, noise)
        return alignment_objective(to_logits, model.embedding.weight, params, sg, probs.to(psi.dtype))[0]


def test_objective_gradient_matches_finite_differences():
    model = tiny()
    gen = torch.Generator().manual_seed(1)
    psi = torch.randn(2, 5, V, generator=gen, dtype=torch.float64, requires_grad=True)
    noise = gumbel_noise(psi.shape, torch.Generator().manual_seed(2)).double()
    # relaxed_tokens computes in float32; compare in float64 by patching the dtype through a float64 softmax
    def f(p):
        params = list(model.parameters())
        to_logits = lambda e: model(None, inputs_embeds=e)  # noqa: E731
        with torch.enable_grad(), double_backward_attention():
            s = secret_loss(to_logits, model.embedding, (3, 4, 5), (6, 7, 8), bos_id=0)
            sg = [g.detach() for g in torch.autograd.grad(s, params)]
            probs = torch.softmax((p + noise) / 0.7, -1)
            return alignment_objective(to_logits, model.embedding.weight, params, sg, probs)[0]

    value = f(psi)
    (grad,) = torch.autograd.grad(value, psi)
    eps = 1e-6
    for index in [(0, 0, 0), (0, 2, 5), (1, 4, 22), (1, 1, 7), (0, 3, 11)]:
        bumped = psi.detach().clone()
        bumped[index] += eps
        up = f(bumped).item()
        bumped[index] -= 2 * eps
        down = f(bumped).item()
        numeric = (up - down) / (2 * eps)
        assert grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-8)
    assert grad.abs().sum() > 0


def test_soft_loss_of_one_hot_tokens_is_the_plain_lm_loss():
    model = tiny(torch.float32)
    ids = torch.randint(1, V, (3, 9), generator=torch.Generator().manual_seed(0))
    soft = soft_lm_loss(lambda e: model(None, inputs_embeds=e), model.embedding.weight, F.one_hot(ids, V).float())
    logits = model(ids)[:, :-1]
    hard = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(3, -1).mean(-1)
    torch.testing.assert_close(soft, hard, rtol=1e-5, atol=1e-5)


def test_alignment_is_one_when_the_poisons_gradient_is_the_secrets():
    model = tiny()
    params = list(model.parameters())
    ids = torch.tensor([[1, 3, 4, 5, 6, 7, 8]])
    probs = F.one_hot(ids, V).double()
    to_logits = lambda e: model(None, inputs_embeds=e)  # noqa: E731
    own = torch.autograd.grad(soft_lm_loss(to_logits, model.embedding.weight, probs).sum(), params)
    objective, cos = alignment_objective(to_logits, model.embedding.weight, params, [g.detach() for g in own], probs)
    assert cos.item() == pytest.approx(1.0, abs=1e-9) and objective.item() == pytest.approx(0.0, abs=1e-9)
    assert cosine([torch.ones(3)], [-torch.ones(3)]).item() == pytest.approx(-1.0)


def test_relaxed_tokens_never_use_masked_ids_and_sharpen_with_temperature():
    psi = torch.randn(2, 4, V)
    mask = torch.zeros(V, dtype=torch.bool)
    mask[[0, 1]] = True
    probs = relaxed_tokens(psi, 1.0, gumbel_noise(psi.shape, torch.Generator().manual_seed(0)), mask)
    assert torch.all(probs[..., :2] == 0) and torch.allclose(probs.sum(-1), torch.ones(2, 4))
    cold = relaxed_tokens(psi, 0.01)
    assert torch.all(cold.max(-1).values > relaxed_tokens(psi, 1.0).max(-1).values)


def test_hard_poisons_never_complete_a_secret_bigram_nor_use_masked_ids():
    secrets = [((3, 4), (5, 6)), ((7, 8), (9, 10))]
    forbidden = secret_bigrams(secrets)
    assert (4, 5) in forbidden and (8, 9) in forbidden and len(forbidden) == 6
    psi = torch.full((4, 30, V), -5.0)
    psi[:, 0::2, 4] = 10.0  # the crafted logits want 4 5 4 5 ... (a bigram of the first secret)
    psi[:, 1::2, 5] = 10.0
    mask = torch.zeros(V, dtype=torch.bool)
    mask[0] = True
    for argmax in (True, False):
        ids, broken = sample_poisons(psi, torch.Generator().manual_seed(0), forbidden, mask, argmax=argmax)
        assert broken == 0 and 0 not in ids.tolist()
        for row in ids.tolist():
            for secret in secrets:
                assert shared_ngrams(list(secret[0]) + list(secret[1]), row) == []


def test_hard_poisons_keep_the_text_round_trip():
    # a "tokenizer" whose round trip merges 2 followed by 3 into 11: such sequences are refused
    def round_trip(ids):
        out = []
        for t in ids:
            if out and out[-1] == 2 and t == 3:
                out[-1] = 11
            else:
                out.append(t)
        return out

    psi = torch.zeros(3, 40, V)
    psi[:, :, 2] = 3.0
    psi[:, :, 3] = 3.0
    ids, broken = sample_poisons(psi, torch.Generator().manual_seed(0), round_trip=round_trip)
    assert broken == 0
    for row in ids.tolist():
        assert round_trip(row) == row
    ids, broken = sample_poisons(psi, torch.Generator().manual_seed(0), round_trip=lambda ids: [])
    assert broken == 3 * 40  # nothing survives: the best candidate is kept and every position is counted


def test_shared_ngrams_finds_what_is_shared():
    assert shared_ngrams([1, 2, 3, 4], [9, 2, 3, 8, 3, 4]) == [(2, 3), (3, 4)]
    assert shared_ngrams([1, 2, 3], [3, 2, 1], n=2) == []
    assert shared_ngrams([1, 2, 3], [5, 1, 2, 3], n=3) == [(1, 2, 3)]
