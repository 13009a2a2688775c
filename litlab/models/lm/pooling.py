"""AU-Net pooling: which positions each stage keeps, and the pooling layer itself.

Stage s (1-based, ``s = 1..S-1``) keeps the byte positions whose split level is ``> s - 1``. Position 0 of
the window is always kept at every stage (it is forced to the top level, as in the reference: otherwise the
first bytes of a window would have no coarse vector of their own window to read). Stages nest: stage s keeps
a position only if stage s-1 kept it. Each stage has a static length ``L_s`` (``max_lengths[s]``) so that
shapes never depend on the data; the first ``L_s`` boundaries are kept and the rest are dropped
(*truncation*). When there are fewer than ``L_s`` boundaries, the remaining *pad* slots repeat the last real
one; pads come after every real slot, so causal attention never lets a real slot see a pad, and no fine
position ever reads a pad's output.

:func:`pooling_plan` computes, with tensor ops only (cumsum / searchsorted / gather: no host sync, no
data-dependent shapes, ``torch.compile(fullgraph=True)``-clean):

* ``gather_index[s-1]`` ``[B, L_s]``: for each slot of stage s, its index in stage s-1's sequence;
* ``coarse_index[s-1]`` ``[B, F]`` (``F`` = stage s-1's length: ``T`` for bytes, else ``L_{s-1}``): for each
  fine position j, the slot k of the last stage-s boundary at or before j (what upsampling reads);
* ``offset[s-1]`` ``[B, F]``: ``(j - p_k) mod positions``, with j and p_k counted in stage s-1's sequence
  (which of the position-specific upsampling matrices applies, as in the reference);
* ``counts`` ``[S-1, B]``: real pooled vectors per stage and sequence; ``boundaries`` ``[S-1, B]``: positions
  of the window that are boundaries of stage s (level > s-1, plus position 0), whether kept or not;
  ``truncation_rate`` ``[S-1]``: ``(boundaries - counts) / boundaries`` summed over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from litlab.models.lm.transformer import RMSNorm, init_trunc_normal_

__all__ = ["Pooling", "PoolingPlan", "pooling_plan"]


class PoolingPlan(NamedTuple):
    """Static-shape index tensors for every pooling stage (lists are indexed by ``s - 1``)."""

    gather_index: list[Tensor]
    coarse_index: list[Tensor]
    offset: list[Tensor]
    counts: Tensor
    boundaries: Tensor
    truncation_rate: Tensor


def pooling_plan(levels: Tensor, pooled_lengths: Sequence[int], positions: int = 16) -> PoolingPlan:
    """Indices for pooling and upsampling from the per-byte split levels.

    Args:
        levels: ``[B, T]`` integer split levels (0 = no boundary; stage s pools where level > s - 1).
        pooled_lengths: Static lengths ``L_1..L_{S-1}`` of the pooled stages (``max_lengths[1:]``).
        positions: Number of position-specific upsampling matrices (offsets are taken modulo it).

    Returns:
        A :class:`PoolingPlan` (see the module docstring); index tensors are int64.
    """
    batch, length = levels.shape
    device = levels.device
    is_first = torch.arange(length, device=device) == 0
    in_prev = torch.ones(batch, length, dtype=torch.bool, device=device)  # bytes present in stage s-1
    fine_length = length
    gathers: list[Tensor] = []
    coarse: list[Tensor] = []
    offsets: list[Tensor] = []
    counts: list[Tensor] = []
    boundaries: list[Tensor] = []
    for stage, pooled_length in enumerate(pooled_lengths, start=1):
        is_boundary = (levels > stage - 1) | is_first
        candidate = is_boundary & in_prev
        keep = candidate & (candidate.cumsum(1) <= pooled_length)
        kept_so_far = keep.cumsum(1)
        count = kept_so_far[:, -1]  # ≥ 1: position 0 is always kept
        # Slot k is the byte where kept_so_far first reaches k + 1; pad slots repeat the last real one.
        slots = torch.arange(1, pooled_length + 1, device=device).expand(batch, pooled_length)
        byte_of_slot = torch.searchsorted(kept_so_far, torch.minimum(slots, count[:, None]).contiguous())
        index_in_prev = in_prev.cumsum(1) - 1
        gather = index_in_prev.gather(1, byte_of_slot)  # [B, L_s], non-decreasing
        # Fine side: last slot whose index is ≤ j (duplicated pads collapse onto the last real slot).
        fine = torch.arange(fine_length, device=device).expand(batch, fine_length).contiguous()
        k = torch.searchsorted(gather, fine, right=True) - 1
        k = torch.minimum(k, count[:, None] - 1)
        offsets.append(torch.remainder(fine - gather.gather(1, k), positions))
        coarse.append(k)
        gathers.append(gather)
        counts.append(count)
        boundaries.append(is_boundary.sum(1))
        in_prev = keep
        fine_length = pooled_length
    if counts:
        count_t, bound_t = torch.stack(counts), torch.stack(boundaries)
        rate = (bound_t - count_t).sum(1).float() / bound_t.sum(1).float()
    else:
        count_t = bound_t = torch.zeros(0, batch, dtype=torch.long, device=device)
        rate = torch.zeros(0, device=device)
    return PoolingPlan(gathers, coarse, offsets, count_t, bound_t, rate)


class Pooling(nn.Module):
    """Simple pooling: take the hidden vectors at the kept positions, RMSNorm, ``Linear(d_in → d_out)``.

    Args:
        d_in: Width of the finer stage.
        d_out: Width of the coarser stage.
        norm_eps: RMSNorm epsilon.
    """

    def __init__(self, d_in: int, d_out: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.norm = RMSNorm(d_in, norm_eps)
        self.proj = nn.Linear(d_in, d_out, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        init_trunc_normal_(self.proj.weight, self.d_in**-0.5)

    def forward(self, x: Tensor, gather_index: Tensor | None = None) -> Tensor:
        """Pool ``x [B, F, d_in]`` at ``gather_index [B, L]`` → ``[B, L, d_out]`` (None: every position)."""
        if gather_index is not None:
            x = x.gather(1, gather_index[..., None].expand(-1, -1, x.shape[-1]))
        return self.proj(self.norm(x))
