"""MoE auxiliary losses: hand-computed values, balanced routing, Monte Carlo check of the load loss."""

from __future__ import annotations

import math

import pytest
import torch

from litlab.models.moe import (
    MoE,
    cv_squared,
    importance_loss,
    load_balance_loss,
    load_loss,
    z_loss,
)


def test_load_balance_hand_computed_and_balanced() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    # k=1, both tokens on expert 0: f = [1, 0], P = [0.7, 0.3] -> 2 * 0.7
    assert float(load_balance_loss(probs, torch.tensor([2, 0]))) == pytest.approx(1.4)
    E, T, k = 8, 32, 2
    uniform = torch.full((T, E), 1.0 / E)
    assert float(load_balance_loss(uniform, torch.full((E,), T * k // E))) == pytest.approx(1.0)


def test_importance_and_cv_squared_hand_computed() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])  # importance [1.4, 0.6]: mean 1, population var 0.16
    assert float(importance_loss(probs)) == pytest.approx(0.16)
    assert float(cv_squared(torch.tensor([2.0, 2.0, 2.0]))) == 0.0
    assert float(cv_squared(torch.tensor([1.0, 3.0]))) == pytest.approx(1.0 / 4.0)


def test_z_loss_hand_computed() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # logsumexp: log 2, log 4
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    assert float(z_loss(logits)) == pytest.approx(expected)


def test_load_loss_two_experts_closed_form() -> None:
    # E=2, k=1: expert e is selected iff l_e + eps > noisy logit of the other expert
    logits = torch.tensor([[1.0, 0.0], [0.2, 0.5]])
    noisy = torch.tensor([[1.3, -0.1], [0.0, 0.9]])
    sigma = 0.5

    def phi(z: float) -> float:  # the standard normal CDF
        return 0.5 * math.erfc(-z / math.sqrt(2))

    p = torch.tensor([[phi((1.0 - (-0.1)) / sigma), phi((0.0 - 1.3) / sigma)],
                      [phi((0.2 - 0.9) / sigma), phi((0.5 - 0.0) / sigma)]])
    assert float(load_loss(logits, noisy, 1, sigma)) == pytest.approx(float(cv_squared(p.sum(0))), rel=1e-5)
    assert float(load_loss(logits, noisy, 2, sigma)) == 0.0  # k = E: always selected


def test_load_loss_probabilities_match_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    E, k, sigma, n = 5, 2, 0.7, 200_000
    logits = torch.randn(1, E, generator=gen)
    noisy = logits + sigma * torch.randn(1, E, generator=gen)
    # empirical: re-draw the noise of expert e only, keep the other experts' noisy logits
    empirical = []
    for e in range(E):
        trials = noisy.repeat(n, 1)
        trials[:, e] = logits[0, e] + sigma * torch.randn(n, generator=gen)
        empirical.append((torch.topk(trials, k, dim=-1).indices == e).any(-1).double().mean())
    empirical = torch.stack(empirical).float()
    # recover the analytic per-expert probabilities from load_loss's pieces on a one-token batch
    top = torch.topk(noisy, k + 1, dim=-1).values
    thr = torch.where(noisy >= top[:, k - 1 : k], top[:, k : k + 1], top[:, k - 1 : k])
    analytic = 0.5 * torch.erfc((thr - logits) / (sigma * math.sqrt(2)))
    torch.testing.assert_close(analytic[0], empirical, atol=5e-3, rtol=0)
    assert float(load_loss(logits, noisy, k, sigma)) == pytest.approx(float(cv_squared(analytic[0])), rel=1e-5)


def test_layer_aux_loss_is_weighted_sum_and_differentiable() -> None:
    m = MoE(16, 32, 4, 2, router_noise=1.0, load_balance_weight=0.01, importance_weight=0.005,
            load_weight=0.005, z_loss_weight=0.001, seed=0)
    x = torch.randn(20, 16)
    m(x)
    assert set(m.aux_losses) == {"load_balance", "importance", "load", "z_loss"}
    expected = 0.01 * m.aux_losses["load_balance"] + 0.005 * m.aux_losses["importance"] \
        + 0.005 * m.aux_losses["load"] + 0.001 * m.aux_losses["z_loss"]
    torch.testing.assert_close(m.aux_loss, expected)
    m.aux_loss.backward()
    assert m.router.weight.grad.abs().sum() > 0
    m.eval()  # eval: same keys, no noise, z-loss on the clean logits
    with torch.no_grad():
        m(x)
        logits = m.router(x)
    assert set(m.aux_losses) == {"load_balance", "importance", "load", "z_loss"}
    torch.testing.assert_close(m.aux_losses["z_loss"], z_loss(logits))
    torch.testing.assert_close(m.aux_losses["importance"], importance_loss(torch.softmax(logits, -1)))
    f = torch.bincount(m.expert_index.reshape(-1), minlength=4)
    torch.testing.assert_close(m.aux_losses["load_balance"], load_balance_loss(torch.softmax(logits, -1), f))


def test_all_weights_zero_gives_zero_tensor() -> None:
    m = MoE(16, 32, 4, 2, load_balance_weight=0.0)
    m(torch.randn(3, 16))
    assert m.aux_losses == {} and m.aux_loss.shape == () and float(m.aux_loss) == 0.0


def test_load_balance_is_one_for_balanced_layer() -> None:
    m = MoE(16, 32, 4, 1, seed=0)
    with torch.no_grad():
        m.router.weight.copy_(torch.eye(4, 16) * 50)  # token i -> expert i % 4, with near one-hot probs
    x = torch.eye(16)[torch.arange(8) % 4]
    m(x)
    assert m.aux_losses["load_balance"].item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(m.stats.tokens_per_expert, torch.full((4,), 0.25))
