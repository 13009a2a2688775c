"""Parameter and FLOP accounting for dense and MoE image classifiers (arXiv 2411.18322: report total and
activated parameters and FLOPs per image).

Parameters
    ``total`` counts every parameter once (shared/tied tensors once). ``activated`` is what one token
    uses: for each :class:`~litlab.models.moe.MoE` layer the whole layer is replaced by
    ``MoE.num_active_params_per_token`` (router + ``top_k`` experts), i.e. ``(E - k)`` experts' worth of
    parameters is subtracted. For full-width GELU experts with biases and the linear router this is
    ``total = dense + (E - 1)(8C^2 + 5C) + CE`` and ``activated = dense + (k - 1)(8C^2 + 5C) + CE`` per layer
    (hidden width 4C).

FLOPs (per image, forward, batch 1)
    Convention: ``torch.utils.flop_counter.FlopCounterMode``'s — one multiply-add is 2 FLOPs, and only
    matrix products are counted (linear layers, convolutions, attention's two batched matmuls); bias adds,
    normalisations, activations, softmax and other element-wise work are not. Divide by 2 for "MACs", the
    unit most vision papers call FLOPs (ViT-B/16 at 224: 17.6 GMACs = 35.1 GFLOPs here).

    The model is run once, in eval mode, under ``FlopCounterMode`` on the ``meta`` device
    (``torch.func.functional_call`` with meta stand-ins for every parameter and buffer, so no weight is
    copied and ViT-B costs a fraction of a second; on ``meta`` attention is decomposed into matmuls and counted, while on the CPU PyTorch's
    fused attention kernel would be missed). Every MoE layer is bypassed during that run, only counting
    the tokens T it receives, and its cost is added analytically per token:

    - router: FLOPs of the layer's own router on one token, measured with ``FlopCounterMode`` on the CPU
      (``2·C·E`` for the linear router);
    - experts: ``top_k × 2 × (fc1 + fc2 weight elements of one expert)`` (``k·16C^2`` for full-width GELU
      experts, 4C hidden), i.e. every token is counted through ``top_k`` experts as in dropless routing.
      With a capacity factor the real cost is lower when tokens are dropped; the figure is the nominal one.

    Not counted, like bias adds and activations: the weighted sum of the ``top_k`` expert outputs
    (``k·C`` multiply-adds per token, element-wise) and the aux-loss / statistics bookkeeping (O(T·E)).

    ``dense_flops`` is the same model with each MoE layer counted as the dense MLP it replaced
    (``2 × 2·C·hidden_dim`` per token for GELU, ``2 × 3·C·hidden_dim`` for SwiGLU), so E=1, k=1 MoE models
    have ``flops == dense_flops + router`` (``2·C`` per token for the linear router).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from litlab.models.moe import MoE, moe_layers

__all__ = ["FLOP_CONVENTION", "count_parameters", "flops_per_image", "moe_flops_per_token", "summarize"]

FLOP_CONVENTION = "forward FLOPs per image, batch 1, multiply-add = 2 FLOPs, matmuls/convs/attention only"


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and activated parameter counts.

    Args:
        model: Any module; MoE layers are found with :func:`litlab.models.moe.moe_layers`.

    Returns:
        ``total``: all parameters; ``activated``: parameters one token uses (each MoE layer counted as its
        router plus ``top_k`` experts); ``moe_total`` / ``moe_activated``: the same restricted to MoE layers;
        ``num_moe_layers``.
    """
    total = sum(p.numel() for p in model.parameters())  # shared tensors are yielded once
    layers = moe_layers(model)
    moe_total = sum(sum(p.numel() for p in m.parameters()) for m in layers.values())
    moe_active = sum(m.num_active_params_per_token for m in layers.values())
    return {
        "total": total,
        "activated": total - moe_total + moe_active,
        "moe_total": moe_total,
        "moe_activated": moe_active,
        "num_moe_layers": len(layers),
    }


def _router_flops_per_token(moe: MoE) -> int:
    """FLOPs of ``moe.router`` on one token, measured on the CPU with zero stand-in parameters."""
    state = {n: torch.zeros(t.shape, dtype=torch.float32, device="cpu") for n, t in moe.router.named_parameters()}
    state.update({n: torch.zeros(t.shape, dtype=torch.float32, device="cpu") for n, t in moe.router.named_buffers()})
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        functional_call(moe.router, state, (torch.zeros(1, moe.dim, device="cpu"),))
    return int(counter.get_total_flops())


def moe_flops_per_token(moe: MoE) -> dict[str, int]:
    """Per-token forward FLOPs of an MoE layer (``router``, ``experts`` for top_k experts, ``dense`` MLP).

    Args:
        moe: The layer.

    Returns:
        ``router``: its router's FLOPs; ``experts``: ``top_k`` experts' matmul FLOPs; ``dense``: the
        FLOPs of the dense MLP of width ``moe.hidden_dim`` it stands for (same activation).
    """
    ex = moe.experts
    per_expert = 2 * (ex.fc1_weight[0].numel() + ex.fc2_weight[0].numel())
    glu = 3 if ex.activation == "swiglu" else 2
    return {
        "router": _router_flops_per_token(moe),
        "experts": moe.top_k * per_expert,
        "dense": 2 * glu * moe.dim * moe.hidden_dim,
    }


@contextmanager
def _bypass_moe(model: nn.Module, tokens: dict[str, int]) -> Iterator[None]:
    """Make every MoE layer an identity that adds the number of tokens it sees to ``tokens[name]``."""
    layers = moe_layers(model)

    def make(name: str) -> Any:
        def forward(self: MoE, x: Tensor) -> Tensor:
            tokens[name] = tokens.get(name, 0) + x.numel() // x.shape[-1]
            return x

        return forward

    try:
        for name, m in layers.items():
            m.forward = types.MethodType(make(name), m)
        yield
    finally:
        for m in layers.values():
            m.__dict__.pop("forward", None)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def flops_per_image(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3) -> dict[str, Any]:
    """Forward FLOPs for one image (see the module docstring for the convention).

    Args:
        model: An image classifier taking ``[B, in_chans, H, W]``; on any device, including ``meta``.
        img_size: Input resolution (``H = W = img_size``) or ``(H, W)``.
        in_chans: Number of input channels.

    Returns:
        ``flops``: activated FLOPs per image (MoE layers with router and ``top_k`` experts per token);
        ``dense_flops``: the same with every MoE layer counted as the dense MLP it replaced;
        ``moe_router_flops``, ``moe_expert_flops``: the MoE parts of ``flops``;
        ``moe_tokens``: tokens per image seen by each MoE layer; ``convention``: a reminder of the unit.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    tokens: dict[str, int] = {}
    state = {n: torch.empty_like(p, device="meta") for n, p in model.named_parameters(remove_duplicate=False)}
    state.update({n: torch.empty_like(b, device="meta") for n, b in model.named_buffers(remove_duplicate=False)})
    x = torch.zeros(1, in_chans, h, w, device="meta")
    with _eval_mode(model), _bypass_moe(model, tokens), torch.no_grad(), FlopCounterMode(display=False) as counter:
        functional_call(model, state, (x,))
    base = int(counter.get_total_flops())
    router = experts = dense = 0
    for name, m in moe_layers(model).items():
        cost = moe_flops_per_token(m)
        t = tokens.get(name, 0)
        router += t * cost["router"]
        experts += t * cost["experts"]
        dense += t * cost["dense"]
    return {
        "flops": base + router + experts,
        "dense_flops": base + dense,
        "moe_router_flops": router,
        "moe_expert_flops": experts,
        "moe_tokens": tokens,
        "convention": FLOP_CONVENTION,
    }


def summarize(model: nn.Module, img_size: int | tuple[int, int], in_chans: int = 3) -> dict[str, Any]:
    """What to log and print about a model: parameters, FLOPs per image, MoE blocks.

    Args:
        model: Usually the output of :func:`litlab.models.vision.surgery.create_model`.
        img_size: Input resolution.
        in_chans: Input channels.

    Returns:
        ``total_params``, ``activated_params``, ``flops_per_image`` (activated), ``dense_flops_per_image``,
        ``moe_blocks`` (``model.moe_blocks`` if present, else the names of the MoE layers' parent modules).
    """
    params = count_parameters(model)
    flops = flops_per_image(model, img_size, in_chans)
    blocks = getattr(model, "moe_blocks", None)
    if blocks is None:
        blocks = [name.rsplit(".", 1)[0] if "." in name else name for name in moe_layers(model)]
    return {
        "total_params": params["total"],
        "activated_params": params["activated"],
        "flops_per_image": flops["flops"],
        "dense_flops_per_image": flops["dense_flops"],
        "moe_blocks": list(blocks),
    }
