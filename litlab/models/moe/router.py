"""Routers: token -> expert logits, then softmax and top-k selection.

Every router returns fp32 logits: the router runs outside autocast on an fp32 copy of the tokens
("selective precision", as in Switch Transformer), because the softmax and the top-k decision are
sensitive to rounding while costing little.

Routers:
  * ``linear``: one bias-free linear map ``dim -> num_experts`` (the paper's plain linear gate, best there).
  * ``cosine``: Tutel / Swin-MoE cosine router: project tokens to ``proj_dim`` (256), L2-normalise tokens and
    expert embeddings, multiply by a learnable logit scale ``1 / temperature`` (initial temperature 0.5) stored
    as its log and clamped at ``log(100)``, so that ``1 / temperature <= 100``.
  * ``mlp``: a small two-layer MLP (Linear -> GELU -> Linear), for ablations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litlab.models.moe.experts import init_uniform_

ROUTERS = ("linear", "cosine", "mlp")


def _fp32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


class LinearRouter(nn.Module):
    """Bias-free linear gate ``logits = x @ W^T``.

    Args:
        dim: Token width.
        num_experts: Number of experts (logits per token).
    """

    def __init__(self, dim: int, num_experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """nn.Linear's default init (uniform with bound 1/sqrt(fan_in))."""
        init_uniform_(self.weight, 1.0 / math.sqrt(self.weight.shape[1]), generator)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(_fp32(x), _fp32(self.weight))


class CosineRouter(nn.Module):
    """Cosine router of Tutel / Swin-MoE.

    Args:
        dim: Token width.
        num_experts: Number of experts.
        proj_dim: Width of the projection in which cosine similarities are taken.
        init_temperature: Initial temperature (logits are cosines divided by it).
        max_logit_scale: Clamp of the log of the logit scale ``1 / temperature`` (log(100) by default).
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        proj_dim: int = 256,
        init_temperature: float = 0.5,
        max_logit_scale: float = math.log(100.0),
    ) -> None:
        super().__init__()
        self.init_temperature = init_temperature
        self.max_logit_scale = max_logit_scale
        self.proj = nn.Linear(dim, proj_dim)
        self.expert_embed = nn.Parameter(torch.empty(num_experts, proj_dim))
        self.log_scale = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """nn.Linear init for the projection, N(0, 0.01^2) expert embeddings, scale 1/init_temperature."""
        bound = 1.0 / math.sqrt(self.proj.in_features)
        init_uniform_(self.proj.weight, bound, generator)
        init_uniform_(self.proj.bias, bound, generator)
        with torch.no_grad():
            noise = torch.randn(self.expert_embed.shape, generator=generator, device="cpu") * 0.01
            self.expert_embed.copy_(noise)
            self.log_scale.fill_(math.log(1.0 / self.init_temperature))

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            h = F.linear(_fp32(x), _fp32(self.proj.weight), _fp32(self.proj.bias))
            cos = F.normalize(h, dim=-1) @ F.normalize(_fp32(self.expert_embed), dim=-1).t()
            return cos * _fp32(self.log_scale).clamp(max=self.max_logit_scale).exp()


class MLPRouter(nn.Module):
    """Two-layer MLP router (Linear -> GELU -> Linear), for ablations.

    Args:
        dim: Token width.
        num_experts: Number of experts.
        hidden_dim: Width of the hidden layer.
    """

    def __init__(self, dim: int, num_experts: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, num_experts)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """nn.Linear's default init for both layers."""
        for fc in (self.fc1, self.fc2):
            bound = 1.0 / math.sqrt(fc.in_features)
            init_uniform_(fc.weight, bound, generator)
            init_uniform_(fc.bias, bound, generator)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            h = F.gelu(F.linear(_fp32(x), _fp32(self.fc1.weight), _fp32(self.fc1.bias)))
            return F.linear(h, _fp32(self.fc2.weight), _fp32(self.fc2.bias))


def build_router(name: str, dim: int, num_experts: int) -> nn.Module:
    """Router by name (one of ``ROUTERS``) with its default hyper-parameters."""
    return {"linear": LinearRouter, "cosine": CosineRouter, "mlp": MLPRouter}[name](dim, num_experts)


@dataclass
class Routing:
    """Result of :func:`route` for T tokens and E experts (all fp32 except ``index``).

    Attributes:
        logits: Clean router logits [T, E] (z-loss, load loss).
        noisy_logits: Logits the decision was taken on [T, E] (``logits`` when no noise).
        probs: ``softmax(noisy_logits)`` [T, E]; the combine weights are taken from it.
        weights: Combine weights of the chosen experts [T, k] (renormalised over k if asked).
        index: Chosen experts [T, k], int64, in decreasing probability order.
    """

    logits: Tensor
    noisy_logits: Tensor
    probs: Tensor
    weights: Tensor
    index: Tensor


def route(logits: Tensor, top_k: int, noise_std: float = 0.0, renormalize: bool = False) -> Routing:
    """Softmax and top-k over experts.

    Args:
        logits: fp32 router logits [T, E].
        top_k: Experts per token, 1 <= top_k <= E.
        noise_std: Std of Gaussian noise added to the logits before the softmax (V-MoE); 0 disables it.
        renormalize: Divide the k chosen probabilities by their sum (Tutel/DeepSpeed/Mixtral); V-MoE does not.
    """
    noisy = logits + torch.randn_like(logits) * noise_std if noise_std > 0 else logits
    probs = torch.softmax(noisy, dim=-1)
    weights, index = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return Routing(logits=logits, noisy_logits=noisy, probs=probs, weights=weights, index=index)
