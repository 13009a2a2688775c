"""Auxiliary router losses (all computed over the tokens of one forward, in fp32).

* ``load_balance`` (Switch Transformer / GShard): ``E * sum_e f_e * P_e`` with ``f_e`` the share of the
  T*k top-k assignments routed to expert e (before capacity dropping) and ``P_e`` the mean routing
  probability of e. Perfectly balanced routing (uniform f and P) gives exactly 1; with the T*k
  normalisation the value does not grow with k. Only ``P`` carries gradient (f comes from an argmax).
* ``importance`` (V-MoE, Riquelme et al. 2021): ``CV^2`` of the per-expert importance ``sum_t p_te`` of the
  *clean* (noise-free) softmax, where ``CV^2(v) = Var(v) / mean(v)^2`` (population variance).
* ``load`` (V-MoE, after Shazeer et al. 2017): ``CV^2`` of the per-expert load ``sum_t P(e in top-k of t)``,
  a smooth estimate of how many tokens select e. Given the noisy logits ``h_t = l_t + eps_t``,
  eps ~ N(0, sigma^2), re-draw only the noise of expert e: e is selected iff ``l_te + eps' > thr_te`` where
  ``thr_te`` is the k-th largest noisy logit among the *other* experts. Hence
  ``P(e in top-k of t) = Phi((l_te - thr_te) / sigma)``. Among the other experts the k-th largest is the
  (k+1)-th largest of all noisy logits when e itself is in the top-k, and the k-th largest otherwise
  (when k = E every expert is always selected: the threshold is -inf and the loss 0). Gradients flow
  into the clean logits and through the threshold.
* ``z_loss`` (ST-MoE): ``mean_t logsumexp(l_t)^2`` on the clean logits; keeps the logits small.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cv_squared(v: Tensor) -> Tensor:
    """Squared coefficient of variation ``Var(v) / mean(v)^2`` (population variance); 0 for < 2 values."""
    if v.numel() < 2:
        return v.new_zeros(())
    mean = v.mean()
    return v.var(correction=0) / (mean * mean).clamp_min(1e-20)


def load_balance_loss(probs: Tensor, routed_counts: Tensor) -> Tensor:
    """Switch/GShard loss ``E * sum_e f_e * P_e``.

    Args:
        probs: [T, E] routing probabilities.
        routed_counts: [E] top-k assignments per expert before dropping (they sum to T * k).
    """
    E = probs.shape[-1]
    f = routed_counts.to(probs.dtype) / routed_counts.sum().clamp_min(1)
    return E * (f * probs.mean(dim=0)).sum()


def importance_loss(clean_probs: Tensor) -> Tensor:
    """V-MoE importance loss ``CV^2(sum_t p_t)``.

    Args:
        clean_probs: [T, E] softmax of the noise-free logits.
    """
    return cv_squared(clean_probs.sum(dim=0))


def load_loss(logits: Tensor, noisy_logits: Tensor, top_k: int, noise_std: float) -> Tensor:
    """V-MoE load loss ``CV^2(sum_t Phi((l_te - thr_te) / sigma))`` (see the module docstring).

    Args:
        logits: [T, E] clean logits.
        noisy_logits: [T, E] logits plus the noise the routing decision was taken on.
        top_k: Experts per token k.
        noise_std: sigma (> 0).
    """
    E = logits.shape[-1]
    if top_k >= E:
        return logits.new_zeros(())
    top = torch.topk(noisy_logits, top_k + 1, dim=-1).values
    kth, k1th = top[:, top_k - 1 : top_k], top[:, top_k : top_k + 1]
    threshold = torch.where(noisy_logits >= kth, k1th, kth)
    p = 0.5 * torch.erfc((threshold - logits) / (noise_std * math.sqrt(2.0)))  # Phi((l - thr) / sigma)
    return cv_squared(p.sum(dim=0))


def z_loss(logits: Tensor) -> Tensor:
    """Router z-loss ``mean_t logsumexp(l_t)^2``.

    Args:
        logits: [T, E] clean logits.
    """
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    return torch.logsumexp(logits, dim=-1).square().mean()
