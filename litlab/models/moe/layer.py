"""The mixture-of-experts MLP: a drop-in replacement for a transformer / ConvNeXt block's MLP.

``MoE(dim, hidden_dim)`` maps ``[..., dim] -> [..., dim]`` (any leading dims: ViT ``[B, N, C]``, ConvNeXt
NHWC ``[B, H, W, C]``). Each token is routed to ``top_k`` of ``num_experts`` expert MLPs and the outputs are
summed with the softmax probabilities of the chosen experts (optionally renormalised over the k).
After every forward the layer exposes ``aux_loss`` (weighted, differentiable in training),
``aux_losses`` (unweighted components), ``stats`` (:class:`RouterStats`, detached) and ``expert_index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from litlab.errors import ConfigError
from litlab.models.moe import balancing
from litlab.models.moe.dispatch import (
    IMPLS,
    DispatchPlan,
    combine,
    expert_capacity,
    expert_mlp,
    gather,
    plan_dispatch,
)
from litlab.models.moe.experts import ACTIVATIONS, Experts
from litlab.models.moe.router import ROUTERS, Routing, build_router, route

EXPERT_WIDTHS = ("full", "split")
INITS = ("scratch", "identical")


@dataclass
class RouterStats:
    """Routing statistics of the last forward (detached, on the CPU).

    Attributes:
        tokens_per_expert: [E] share of the kept assignments that went to each expert (sums to 1).
        dead_experts: Experts that received no assignment in this batch.
        entropy: Mean per-token entropy of the routing softmax, in nats.
        dropped_tokens: Number of (token, expert) assignments dropped by the capacity limit.
        num_tokens: Number of tokens in the batch.
    """

    tokens_per_expert: Tensor
    dead_experts: int
    entropy: float
    dropped_tokens: int
    num_tokens: int


class MoE(nn.Module):
    """Mixture-of-experts MLP with sort-based dropless (or capacity-limited) dispatch.

    Args:
        dim: Token width C (input and output).
        hidden_dim: Hidden width of the dense MLP being replaced.
        num_experts: Number of experts E (>= 1).
        top_k: Experts per token, ``1 <= top_k <= num_experts``.
        router: ``"linear"`` (bias-free linear gate), ``"cosine"`` (Tutel/Swin-MoE) or ``"mlp"`` (2-layer).
        activation: ``"gelu"`` (exact erf GELU, timm ``Mlp``) or ``"swiglu"`` (``silu(gate) * up``).
        expert_width: ``"full"``: each expert has ``hidden_dim`` hidden units; ``"split"``:
            ``hidden_dim // num_experts`` each (iso-parameter with the dense MLP).
        renormalize: Renormalise the combine weights over the chosen k (Tutel/DeepSpeed); V-MoE does not.
        router_noise: Training-only Gaussian noise on the router logits, std ``router_noise / num_experts``
            (V-MoE uses 1.0); 0 disables it.
        capacity_factor: Training capacity factor; capacity per expert is
            ``ceil(capacity_factor * tokens * top_k / num_experts)``. None: dropless.
        eval_capacity_factor: The same in eval mode. None: dropless.
        batch_priority: When dropping, give priority to tokens with the largest routing weight (V-MoE BPR)
            instead of token order. Needs a capacity factor.
        load_balance_weight: Weight of the Switch/GShard loss ``E * sum_e f_e * P_e``.
        importance_weight: Weight of the V-MoE importance loss.
        load_weight: Weight of the V-MoE load loss (needs ``router_noise > 0``).
        z_loss_weight: Weight of the router z-loss.
        init: ``"scratch"``: every expert initialised independently like a dense nn.Linear MLP;
            ``"identical"``: all experts equal copies of one such init.
        bias: Biases in the expert linear layers.
        seed: Seed of the initialisation (router and experts); None uses the global RNG.
        dispatch: Grouped-matmul back end: ``"auto"`` (measured choice per device/dtype), ``"grouped_mm"``
            or ``"loop"``. All give the same result.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int = 8,
        top_k: int = 2,
        *,
        router: Literal["linear", "cosine", "mlp"] = "linear",
        activation: Literal["gelu", "swiglu"] = "gelu",
        expert_width: Literal["full", "split"] = "full",
        renormalize: bool = False,
        router_noise: float = 0.0,
        capacity_factor: float | None = None,
        eval_capacity_factor: float | None = None,
        batch_priority: bool = False,
        load_balance_weight: float = 0.01,
        importance_weight: float = 0.0,
        load_weight: float = 0.0,
        z_loss_weight: float = 0.0,
        init: Literal["scratch", "identical"] = "scratch",
        bias: bool = True,
        seed: int | None = None,
        dispatch: Literal["auto", "grouped_mm", "loop"] = "auto",
    ) -> None:
        super().__init__()
        _validate(locals())
        self.dim, self.hidden_dim, self.num_experts, self.top_k = dim, hidden_dim, num_experts, top_k
        self.renormalize, self.router_noise, self.batch_priority = renormalize, router_noise, batch_priority
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.loss_weights = {
            "load_balance": load_balance_weight,
            "importance": importance_weight,
            "load": load_weight,
            "z_loss": z_loss_weight,
        }
        self.dispatch = dispatch
        expert_hidden = hidden_dim // num_experts if expert_width == "split" else hidden_dim
        self.expert_width = expert_width
        self.router = build_router(router, dim, num_experts)
        self.experts = Experts(num_experts, dim, expert_hidden, activation, bias)
        self.seed, self.init_mode = seed, init
        self.reset_parameters()
        self.aux_loss: Tensor = torch.zeros(())
        self.aux_losses: dict[str, Tensor] = {}
        self.expert_index: Tensor = torch.empty(0, top_k, dtype=torch.long)
        self._stats_src: tuple | None = None
        self._stats: RouterStats | None = None

    def reset_parameters(self, seed: int | None = None) -> None:
        """Re-initialise router and experts as the constructor did (e.g. after ``to_empty`` from ``meta``).

        Args:
            seed: Seed of the draws; None: the constructor's ``seed`` (the global RNG if that was None too).
        """
        seed = self.seed if seed is None else seed
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.router.reset_parameters(gen)
        self.experts.reset_parameters(gen, identical=self.init_mode == "identical")

    @property
    def num_active_params_per_token(self) -> int:
        """Parameters one token touches: the whole router plus ``top_k`` experts."""
        router = sum(p.numel() for p in self.router.parameters())
        return router + self.top_k * self.experts.params_per_expert

    def load_dense(
        self, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor, fc2_bias: Tensor | None
    ) -> None:
        """Upcycle a dense MLP (nn.Linear layout) into every expert; see :meth:`Experts.load_dense`.

        ``fc1_weight`` is ``[hidden_dim, dim]`` (GELU) or ``[2 * hidden_dim, dim]`` with the gate rows first
        (SwiGLU, timm ``SwiGLU``: ``cat([fc1_g.weight, fc1_x.weight])``); ``fc2_weight`` is ``[dim, hidden_dim]``.
        With ``expert_width="split"`` expert e gets hidden units ``[e * h, (e + 1) * h)``, ``h = hidden_dim // E``,
        and ``fc2_bias / E``. The router is left as it is.
        """
        self.experts.load_dense(fc1_weight, fc1_bias, fc2_weight, fc2_bias, split=self.expert_width == "split")

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"MoE expects inputs [..., {self.dim}], got {tuple(x.shape)}")
        lead = x.shape[:-1]
        tokens = x.reshape(-1, self.dim)
        T, E, k = tokens.shape[0], self.num_experts, self.top_k
        noise = self.router_noise / E if self.training else 0.0
        r = route(self.router(tokens), k, noise, self.renormalize)
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        capacity = None if factor is None else expert_capacity(factor, T, k, E)
        priority = r.weights[:, 0] if self.batch_priority and capacity is not None else None
        plan = plan_dispatch(r.index, E, capacity, priority)

        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        ex = self.experts
        y = expert_mlp(
            gather(tokens.to(dtype), plan, k),
            ex.fc1_weight.to(dtype),
            None if ex.fc1_bias is None else ex.fc1_bias.to(dtype),
            ex.fc2_weight.to(dtype),
            None if ex.fc2_bias is None else ex.fc2_bias.to(dtype),
            ex.activation,
            plan,
            self.dispatch,
        )
        out = combine(y, r.weights, plan)

        self._record(r, plan, T, lead)
        return out.reshape(*lead, self.dim)

    def _record(self, r: Routing, plan: DispatchPlan, T: int, lead: torch.Size) -> None:
        with torch.no_grad():
            index = r.index if plan.keep is None else r.index.masked_fill(~plan.keep.view_as(r.index), -1)
            self.expert_index = index.reshape(*lead, self.top_k)
            entropy = -(r.probs * torch.log(r.probs.clamp_min(1e-30))).sum(-1).mean() if T else r.probs.new_zeros(())
            dropped = plan.routed_counts.sum() - plan.counts.sum()
            self._stats_src = (plan.counts.detach(), entropy.detach(), dropped.detach(), T)
            self._stats = None
        losses: dict[str, Tensor] = {}
        zero = r.logits.new_zeros(())
        if self.loss_weights["load_balance"] > 0:
            losses["load_balance"] = balancing.load_balance_loss(r.probs, plan.routed_counts) if T else zero
        if self.loss_weights["importance"] > 0:
            losses["importance"] = balancing.importance_loss(torch.softmax(r.logits, dim=-1)) if T else zero
        if self.loss_weights["load"] > 0:
            sigma = self.router_noise / self.num_experts
            losses["load"] = balancing.load_loss(r.logits, r.noisy_logits, self.top_k, sigma) if T else zero
        if self.loss_weights["z_loss"] > 0:
            losses["z_loss"] = balancing.z_loss(r.logits)
        self.aux_losses = losses
        self.aux_loss = sum((self.loss_weights[n] * v for n, v in losses.items()), zero)

    @property
    def stats(self) -> RouterStats:
        """Routing statistics of the last forward (computed on first access: reading them syncs the device)."""
        if self._stats is None:
            if self._stats_src is None:
                raise RuntimeError("MoE.stats is available after the first forward")
            counts, entropy, dropped, T = self._stats_src
            counts = counts.cpu().double()
            share = counts / counts.sum() if counts.sum() > 0 else counts
            self._stats = RouterStats(
                tokens_per_expert=share.float(),
                dead_experts=int((counts == 0).sum()),
                entropy=float(entropy),
                dropped_tokens=int(dropped),
                num_tokens=T,
            )
        return self._stats

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, num_experts={self.num_experts}, top_k={self.top_k}, "
                f"expert_width={self.expert_width}, activation={self.experts.activation}")


def _validate(a: dict) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    for name in ("dim", "hidden_dim"):
        need(isinstance(a[name], int) and a[name] >= 1, f"{name}={a[name]!r} must be an integer >= 1")
    E, k = a["num_experts"], a["top_k"]
    need(isinstance(E, int) and E >= 1, f"num_experts={E!r} must be an integer >= 1")
    need(isinstance(k, int) and 1 <= k <= E, f"top_k={k!r} must satisfy 1 <= top_k <= num_experts={E}")
    for name, allowed in (("router", ROUTERS), ("activation", ACTIVATIONS), ("expert_width", EXPERT_WIDTHS),
                          ("init", INITS), ("dispatch", IMPLS)):
        need(a[name] in allowed, f"{name}={a[name]!r} is not allowed; choose one of {allowed}")
    if a["expert_width"] == "split":
        need(a["hidden_dim"] % E == 0,
             f"hidden_dim={a['hidden_dim']} must be divisible by num_experts={E} with expert_width='split'")
    noise = a["router_noise"]
    need(noise >= 0 and math.isfinite(noise), f"router_noise={noise!r} must be a finite number >= 0")
    for name in ("capacity_factor", "eval_capacity_factor"):
        v = a[name]
        need(v is None or (v > 0 and math.isfinite(v)), f"{name}={v!r} must be None (dropless) or a number > 0")
    need(not a["batch_priority"] or a["capacity_factor"] is not None or a["eval_capacity_factor"] is not None,
         "batch_priority=True needs capacity_factor or eval_capacity_factor (it only orders dropping)")
    for name in ("load_balance_weight", "importance_weight", "load_weight", "z_loss_weight"):
        need(a[name] >= 0 and math.isfinite(a[name]), f"{name}={a[name]!r} must be a finite number >= 0")
    need(a["load_weight"] == 0 or a["router_noise"] > 0,
         f"load_weight={a['load_weight']} needs router_noise > 0 (got router_noise={a['router_noise']}): "
         "the load loss is a probability under the router noise")
    need(a["seed"] is None or isinstance(a["seed"], int), f"seed={a['seed']!r} must be None or an integer")


def moe_layers(model: nn.Module) -> dict[str, MoE]:
    """All :class:`MoE` sub-modules of ``model`` by qualified name (``named_modules`` order)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MoE)}


def collect_aux_loss(model: nn.Module) -> Tensor:
    """Sum of ``aux_loss`` over the MoE layers of ``model``, on the device of its first parameter.

    A zero scalar if there are no MoE layers (or only layers that have not run a forward yet).
    """
    p = next(model.parameters(), None)
    total = torch.zeros((), device=p.device if p is not None else None)
    for m in moe_layers(model).values():
        total = total + m.aux_loss.to(total.device)
    return total
