"""AU-Net multi-linear upsampling: each coarse vector spreads over the fine positions up to the next boundary.

For a fine position t whose last boundary (at or before t) is p_k with coarse vector y_k:

    out_t = W_up · RMSNorm(y_k) + W_{(t - p_k) mod P} · RMSNorm(y_k)        (P = 16 position matrices)

No shift is needed for causality: y_k has only seen positions ≤ p_k ≤ t.

Vectorised form (:class:`MultiLinearUpsampling`): fold the shared and the position matrices into P matrices
``W_up + W_j``, apply all of them to the pooled sequence in **one** matmul, ``[B, L, d_coarse] →
[B, L, P·d_fine]``, and gather row ``(k(t), offset(t))`` for every fine position. No Python loop over
positions, no host sync, static shapes. Memory: the folded product (and its gradient) is ``P × L × d_fine``
per sequence, i.e. 16 times the pooled sequence at the fine width; with about one boundary per 4–5 bytes
that is ~3–4 times a fine-width activation of the byte sequence (for one stage), comparable to one SwiGLU
hidden activation. The reference (lingua ``IndexedMatMul``) instead gathers y to the fine positions, applies
``W_up`` there and loops over the P matrices with ``torch.where`` (a host sync per matrix, outside
``torch.compile``); :func:`reference_upsample` reproduces that algorithm for tests and benchmarks.

Alternative back end ``impl="grouped_mm"``: sort the fine positions by offset (a stable argsort; the group
ends come from ``searchsorted``, so shapes stay static and nothing syncs), gather ``RMSNorm(y_k)`` to them and
apply the P folded matrices with one :func:`torch.nn.functional.grouped_mm`, then un-permute. It computes
one product per fine position (T per sequence) where the folded form computes P per pooled slot (about
3–4 T at one boundary per 4–5 bytes) and the reference two per fine position. Widths must be multiples of 8
(``grouped_mm`` wants 16-byte aligned rows). ``grouped_mm`` only takes bf16/fp16 on CUDA (sm90+, e.g.
H100) and under ``torch.compile``; in float32 there, on older GPUs and on other devices the module uses the
folded form. ``impl="auto"`` (the default) picks ``grouped_mm`` wherever it can run, else the folded form.
See ``benchmarks/upsampling.py`` for measured times.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litlab.errors import ConfigError
from litlab.models.lm.transformer import RMSNorm, init_trunc_normal_

__all__ = ["UPSAMPLING_IMPLS", "MultiLinearUpsampling", "reference_upsample"]

UPSAMPLING_IMPLS = ("auto", "folded", "grouped_mm")


class MultiLinearUpsampling(nn.Module):
    """Multi-linear upsampling from a coarse stage (``d_coarse``) to the next finer one (``d_fine``).

    Args:
        d_coarse: Width of the coarse (pooled) stage.
        d_fine: Width of the fine stage.
        positions: Number of position-specific matrices P (offsets are taken modulo P).
        norm_eps: RMSNorm epsilon.
        impl: ``"auto"`` (``grouped_mm`` where it can run, else ``folded``), ``"folded"`` (one matmul on the
            pooled sequence + gather) or ``"grouped_mm"`` (widths must be multiples of 8); see the module doc.
    """

    def __init__(
        self, d_coarse: int, d_fine: int, positions: int = 16, norm_eps: float = 1e-5, impl: str = "auto"
    ) -> None:
        super().__init__()
        if impl not in UPSAMPLING_IMPLS:
            raise ConfigError(f"upsample_impl={impl!r} is not allowed: expected one of {UPSAMPLING_IMPLS}")
        if impl == "grouped_mm" and (d_coarse % 8 or d_fine % 8):
            raise ConfigError(
                f"upsample_impl='grouped_mm' needs widths divisible by 8, got {d_coarse} -> {d_fine}: use 'folded'"
            )
        self.d_coarse, self.d_fine, self.positions, self.impl = d_coarse, d_fine, positions, impl
        self.grouped = impl == "grouped_mm" or (impl == "auto" and d_coarse % 8 == 0 and d_fine % 8 == 0)
        self.norm = RMSNorm(d_coarse, norm_eps)
        self.up = nn.Linear(d_coarse, d_fine, bias=False)  # W_up, shared by all offsets
        self.position_weight = nn.Parameter(torch.empty(positions, d_fine, d_coarse))  # W_0..W_{P-1}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        std = self.d_coarse**-0.5
        init_trunc_normal_(self.up.weight, std)
        init_trunc_normal_(self.position_weight, std)

    def folded_weight(self) -> Tensor:
        """``W_up + W_j`` for all j, stacked as ``[P·d_fine, d_coarse]``."""
        return (self.position_weight + self.up.weight).reshape(self.positions * self.d_fine, self.d_coarse)

    def forward(self, y: Tensor, coarse_index: Tensor, offset: Tensor) -> Tensor:
        """Upsample ``y [B, L, d_coarse]`` to ``[B, F, d_fine]``.

        Args:
            y: Coarse stage outputs.
            coarse_index: ``[B, F]`` slot of y that each fine position reads.
            offset: ``[B, F]`` offset in ``[0, P)`` of each fine position from that slot's boundary.
        """
        if self.grouped and self._grouped_mm_usable(y):
            return self._grouped(y, coarse_index, offset)
        batch, length, _ = y.shape
        every = F.linear(self.norm(y), self.folded_weight()).view(batch, length * self.positions, self.d_fine)
        row = coarse_index * self.positions + offset
        return every.gather(1, row[..., None].expand(-1, -1, self.d_fine))

    @staticmethod
    def _grouped_mm_usable(y: Tensor) -> bool:
        """``grouped_mm`` runs in bf16/fp16 (CPU, or CUDA sm90+), and in fp32 only eagerly on the CPU."""
        if y.device.type not in ("cpu", "cuda"):
            return False
        dtype = torch.get_autocast_dtype(y.device.type) if torch.is_autocast_enabled(y.device.type) else y.dtype
        if y.device.type == "cuda":
            return dtype in (torch.bfloat16, torch.float16) and _cuda_capability(y.device.index) >= (9, 0)
        return dtype in (torch.bfloat16, torch.float16) or not torch.compiler.is_compiling()

    def _grouped(self, y: Tensor, coarse_index: Tensor, offset: Tensor) -> Tensor:
        batch, length, _ = y.shape
        n = coarse_index.numel()
        rows = (coarse_index + length * torch.arange(batch, device=y.device)[:, None]).flatten()
        offset = offset.flatten()
        order = torch.argsort(offset, stable=True)
        group_ends = torch.searchsorted(
            offset.index_select(0, order), torch.arange(1, self.positions + 1, device=y.device)
        ).to(torch.int32)
        x = self.norm(y).reshape(batch * length, self.d_coarse).index_select(0, rows.index_select(0, order))
        weight = (self.position_weight + self.up.weight).transpose(-2, -1)  # [P, d_coarse, d_fine]
        if torch.is_autocast_enabled(y.device.type):  # grouped_mm is not on autocast's lists
            dtype = torch.get_autocast_dtype(y.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        out = F.grouped_mm(x, weight, offs=group_ends)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(n, device=y.device))
        return out.index_select(0, inverse).view(batch, -1, self.d_fine)

    def step(self, y: Tensor, offset: int) -> Tensor:
        """Cached decoding: upsample one coarse vector ``y [B, 1, d_coarse]`` at one offset → ``[B, 1, d_fine]``."""
        return F.linear(self.norm(y), self.position_weight[offset % self.positions] + self.up.weight)


@torch.compiler.assume_constant_result
def _cuda_capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def reference_upsample(module: MultiLinearUpsampling, y: Tensor, coarse_index: Tensor, offset: Tensor) -> Tensor:
    """The reference's algorithm with ``module``'s weights: gather, ``W_up``, then a loop over the P matrices.

    Each iteration finds the fine positions with that offset (``torch.where``: a host sync) and adds their
    product with ``W_j``. Autograd-compatible (out-of-place updates), so gradients can be compared.
    """
    normed = module.norm(y)
    fine = normed.gather(1, coarse_index[..., None].expand(-1, -1, normed.shape[-1]))
    out = module.up(fine)
    for j in range(module.positions):
        rows, cols = torch.where(offset == j)
        if rows.numel() == 0:
            continue
        out = out.index_put((rows, cols), out[rows, cols] + F.linear(fine[rows, cols], module.position_weight[j]))
    return out
