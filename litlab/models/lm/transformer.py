"""Shared Transformer blocks: the causal stage Transformer of AU-Net and of the flat baselines.

A stage is a stack of pre-norm blocks (RMSNorm → attention → residual, RMSNorm → SwiGLU → residual) with
rotary position embeddings counted within the stage (positions ``0..L-1`` of that stage's own sequence),
multi-head attention without grouped query heads, and an optional causal sliding window. Like the AU-Net
reference, a stack has **no final norm**: the stage's output feeds pooling, a skip connection or the next
stage as it is, and the language-model head applies its own RMSNorm.

Attention back ends (``attention=``):

* ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` with ``is_causal=True`` when the window
  covers the sequence, else block-local sliding-window attention (:mod:`litlab.models.lm.local_attention`: each
  block of ``w`` queries attends to the ``2w`` keys of its block and the previous one, ``2w/L`` of the work
  and memory of a full band mask; the ``[blocks, w, 2w]`` masks are a non-persistent buffer of the stack).
* ``"flex"``: :func:`torch.nn.attention.flex_attention.flex_attention` with a block mask built per forward
  from the window. On CPU eager it is PyTorch's unfused reference path (it materialises the scores and
  warns once); it is meant to run under ``torch.compile`` on a GPU.

Cached decoding (generation): every stack can run with a :class:`StackCache` (one :class:`KVCache` per
block). Keys and values are appended at the cache's current length, which is also the rotary offset of the
new positions; cached calls always use SDPA (a single new query needs no mask at all).

Initialisation follows the reference (lingua): truncated normal (±3σ) with σ = ``dim^-0.5`` for the
embedding-side matrices (q, k, v, o, w1, w3) and σ = ``hidden^-0.5`` for w2; RMSNorm weights are ones. The
reference can scale output projections by depth (``init_std_factor``), but its AU-Net configs leave that
off, so we do not scale. ``init_std`` overrides σ for every matrix of the stack (the reference's
``init_base_std``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import (
    BlockMask,
    create_block_mask,
    flex_attention,
)

from litlab.errors import ConfigError
from litlab.models.lm.checks import ATTENTION_IMPLS, check_stack_args
from litlab.models.lm.kv_cache import KVCache, StackCache
from litlab.models.lm.local_attention import (
    LocalWindow,
    block_masks,
    local_window_attention,
)

__all__ = [
    "ATTENTION_IMPLS",
    "Attention",
    "Block",
    "FeedForward",
    "RMSNorm",
    "RotaryEmbedding",
    "TransformerStack",
    "apply_rotary",
    "ffn_hidden_dim",
    "init_trunc_normal_",
    "window_mask",
]

# What a block's attention receives as its mask: "causal" (SDPA's is_causal), a boolean tensor (True = may
# attend), a flex BlockMask, a LocalWindow (block-local sliding window) or None (every key given is visible:
# one cached query inside its window).
AttnMask = str | Tensor | BlockMask | LocalWindow | None


def ffn_hidden_dim(dim: int, multiple_of: int = 256, multiplier: float | None = None) -> int:
    """SwiGLU hidden width, Llama's rule: ``2/3·4·dim`` (times ``multiplier``), rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def init_trunc_normal_(weight: Tensor, std: float) -> None:
    """Truncated normal initialisation at ±3σ (the reference's rule for every matrix)."""
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


def window_mask(q_positions: Tensor, k_positions: Tensor, window: int | None) -> Tensor:
    """Boolean ``[Lq, Lk]`` mask: query at position i may see key j iff ``i - window < j <= i``."""
    diff = q_positions[:, None] - k_positions[None, :]
    allowed = diff >= 0
    if window is not None:
        allowed = allowed & (diff < window)
    return allowed


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in float32 (float64 inputs stay float64) and cast back
    to the input's dtype.

    Args:
        dim: Width of the normalised (last) dimension.
        eps: Added to the mean square before the reciprocal square root.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)
        return F.rms_norm(x.to(wide), (self.dim,), self.weight.to(wide), self.eps).type_as(x)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs ``(x[2i], x[2i+1])`` of ``x [B, L, H, D]`` by the angles of ``cos/sin``
    (``[L, D/2]`` shared by the batch, or ``[B, L, D/2]`` per row).

    Computed in float32 (float64 stays float64) and cast back to ``x``'s dtype.
    """
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class RotaryEmbedding(nn.Module):
    """Precomputed rotary angles for positions ``0..max_length-1`` (non-persistent float32 buffers).

    Args:
        head_dim: Channels per head (even).
        max_length: Largest position + 1 this stage will see.
        theta: RoPE base.
    """

    def __init__(self, head_dim: int, max_length: int, theta: float = 5e5) -> None:
        super().__init__()
        self.head_dim, self.max_length, self.theta = head_dim, max_length, theta
        # float32 throughout, as Llama's reference code (and transformers) computes them: an exported model
        # then sees the very same angles (at position 1000 a float64 table differs by ~1e-5 in its logits).
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        angles = torch.outer(torch.arange(max_length, dtype=torch.int64).float(), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, length: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        """``(cos, sin)``, each ``[length, head_dim/2]``, for positions ``offset..offset+length-1``."""
        return self.cos[offset : offset + length], self.sin[offset : offset + length]

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` of arbitrary ``positions`` (e.g. ``[B, L]`` per row): shape ``[*positions.shape, head_dim/2]``."""
        return self.cos[positions], self.sin[positions]


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE (q, k, v, o projections without bias).

    Args:
        dim: Model width.
        heads: Attention heads; ``head_dim = dim // heads``.
        window: Sliding window w (query i sees keys ``i - w < j <= i``); None = full causal.
        attention: ``"sdpa"`` or ``"flex"`` (training path; cached calls use SDPA).
        init_std: σ for all four projections (None: ``dim^-0.5``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window: int | None = None,
        attention: str = "sdpa",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.window, self.attention, self.init_std = window, attention, init_std
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.init_std or self.dim**-0.5
        for lin in (self.wq, self.wk, self.wv, self.wo):
            init_trunc_normal_(lin.weight, std)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: AttnMask = "causal", cache: KVCache | None = None
    ) -> Tensor:
        """Attend ``x [B, L, dim]``; ``cos/sin [L, head_dim/2]`` are the angles of its positions."""
        b, length, _ = x.shape
        q = apply_rotary(self.wq(x).view(b, length, self.heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rotary(self.wk(x).view(b, length, self.heads, self.head_dim), cos, sin).transpose(1, 2)
        v = self.wv(x).view(b, length, self.heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v)
        if isinstance(mask, BlockMask):
            # Inductor's flex lowering wants plain 4-D inputs (not views of the 5-D rotary buffer).
            out = flex_attention(q.contiguous(), k.contiguous(), v.contiguous(), block_mask=mask)
        elif isinstance(mask, LocalWindow):
            out = local_window_attention(q, k, v, mask)
        elif isinstance(mask, str):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert isinstance(out, Tensor)
        return self.wo(out.transpose(1, 2).reshape(b, length, self.dim))


class FeedForward(nn.Module):
    """SwiGLU MLP: ``w2(silu(w1 x) * w3 x)`` with hidden width :func:`ffn_hidden_dim`.

    Args:
        dim: Model width.
        multiple_of: Hidden width rounded up to a multiple of this.
        multiplier: Optional factor on ``2/3·4·dim`` before rounding.
        init_std: σ for all three matrices (None: ``dim^-0.5`` for w1/w3, ``hidden^-0.5`` for w2).
    """

    def __init__(
        self, dim: int, multiple_of: int = 256, multiplier: float | None = None, init_std: float | None = None
    ) -> None:
        super().__init__()
        self.dim, self.hidden_dim, self.init_std = dim, ffn_hidden_dim(dim, multiple_of, multiplier), init_std
        self.w1 = nn.Linear(dim, self.hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, self.hidden_dim, bias=False)
        self.w2 = nn.Linear(self.hidden_dim, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_trunc_normal_(self.w1.weight, self.init_std or self.dim**-0.5)
        init_trunc_normal_(self.w3.weight, self.init_std or self.dim**-0.5)
        init_trunc_normal_(self.w2.weight, self.init_std or self.hidden_dim**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm Transformer block: ``h = x + attn(norm(x))``, ``out = h + ffn(norm(h))``.

    Args:
        dim: Model width.
        heads: Attention heads.
        window: Sliding window of the attention (None = full causal).
        ffn_multiple_of: SwiGLU hidden rounding.
        ffn_multiplier: SwiGLU hidden factor.
        norm_eps: RMSNorm epsilon.
        attention: ``"sdpa"`` or ``"flex"``.
        init_std: σ override for every matrix (None: the per-matrix defaults).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window: int | None = None,
        ffn_multiple_of: int = 256,
        ffn_multiplier: float | None = None,
        norm_eps: float = 1e-5,
        attention: str = "sdpa",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.attention = Attention(dim, heads, window, attention, init_std)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.feed_forward = FeedForward(dim, ffn_multiple_of, ffn_multiplier, init_std)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: AttnMask = "causal", cache: KVCache | None = None
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class TransformerStack(nn.Module):
    """``layers`` causal blocks sharing one rotary table and one window mask (no final norm).

    Args:
        dim: Model width.
        layers: Number of blocks.
        heads: Attention heads (``dim`` divisible by it, even ``head_dim``).
        max_length: Longest sequence the stack accepts (sizes the RoPE table and the band mask).
        window: Sliding attention window (None or ≥ ``max_length`` = full causal attention).
        rope_theta: RoPE base.
        ffn_multiple_of: SwiGLU hidden rounding.
        ffn_multiplier: SwiGLU hidden factor.
        norm_eps: RMSNorm epsilon.
        attention: ``"sdpa"`` or ``"flex"``.
        init_std: σ override for every matrix.
    """

    def __init__(
        self,
        dim: int,
        layers: int,
        heads: int,
        max_length: int,
        window: int | None = None,
        rope_theta: float = 5e5,
        ffn_multiple_of: int = 256,
        ffn_multiplier: float | None = None,
        norm_eps: float = 1e-5,
        attention: str = "sdpa",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        check_stack_args(dim=dim, layers=layers, heads=heads, max_length=max_length, window=window, attention=attention)
        self.dim, self.heads, self.max_length, self.attention = dim, heads, max_length, attention
        # A window that covers the longest sequence is plain causal attention.
        self.window = window if window is not None and window < max_length else None
        self.rope = RotaryEmbedding(dim // heads, max_length, rope_theta)
        self.layers = nn.ModuleList(
            Block(dim, heads, self.window, ffn_multiple_of, ffn_multiplier, norm_eps, attention, init_std)
            for _ in range(layers)
        )
        self.block_masks: Tensor | None
        if self.window is not None and attention == "sdpa":
            num_blocks = -(-max_length // self.window)
            self.register_buffer("block_masks", block_masks(num_blocks, self.window), persistent=False)
        else:
            self.block_masks = None

    def new_cache(self) -> StackCache:
        """An empty cache for cached decoding (capacity ``max_length``)."""
        return StackCache(len(self.layers), self.max_length, self.window)

    def _training_mask(self, length: int, device: torch.device) -> AttnMask:
        if self.attention == "flex":
            window = self.window

            def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                causal = q_idx >= kv_idx
                return causal if window is None else causal & (q_idx - kv_idx < window)

            return create_block_mask(mask_mod, None, None, length, length, device=device)
        if self.window is None or length <= self.window:
            return "causal"
        assert self.block_masks is not None
        return LocalWindow(self.window, self.block_masks)

    def _cached_mask(self, length: int, offset: int, cache: StackCache, device: torch.device) -> AttnMask:
        if length == 1:
            return None  # KVCache.update already dropped the keys outside the window
        first = cache.layers[0].first_visible(offset)
        q_pos = torch.arange(offset, offset + length, device=device)
        return window_mask(q_pos, torch.arange(first, offset + length, device=device), self.window)

    def forward(
        self, x: Tensor, cache: StackCache | None = None, positions: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Run ``x [B, L, dim]`` (``L ≤ max_length``) through the blocks; with ``cache``, append to it.

        Ragged batches (:mod:`litlab.models.lm.ragged`) give each row's ``positions [B, L]`` (the rotary angles)
        and the boolean attention ``mask [B, 1, L, cache length + L]`` (True: may attend) of the new slots.
        """
        length = x.shape[1]
        offset = 0 if cache is None else cache.length
        if offset + length > self.max_length:
            raise ConfigError(
                f"sequence length {offset + length} exceeds this stage's max_length={self.max_length}"
            )
        cos, sin = self.rope(length, offset) if positions is None else self.rope.at(positions)
        if mask is not None and cache is not None:
            for block, layer_cache in zip(self.layers, cache.layers, strict=True):
                x = block(x, cos, sin, mask, layer_cache)
            return x
        if cache is None:
            mask = self._training_mask(length, x.device)
            for block in self.layers:
                x = block(x, cos, sin, mask)
            return x
        mask = self._cached_mask(length, offset, cache, x.device)
        for block, layer_cache in zip(self.layers, cache.layers, strict=True):
            x = block(x, cos, sin, mask, layer_cache)
        return x


def reference_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
    """Slow, explicit masked softmax attention ``[B, H, L, D]`` (tests compare the fast paths against it)."""
    pos = torch.arange(q.shape[2], device=q.device)
    allowed = window_mask(pos, pos, window)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v.float()).type_as(q)

