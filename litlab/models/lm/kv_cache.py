"""KV caches for cached decoding: :class:`KVCache` for one attention layer, :class:`StackCache` for a stack.

Keys and values are appended at the cache's current length, which is also the rotary offset of the new
positions (see :mod:`litlab.models.lm.transformer`).
"""

from __future__ import annotations

from torch import Tensor

from litlab.errors import ConfigError

__all__ = ["KVCache", "StackCache"]


class KVCache:
    """Keys and values of one attention layer for cached decoding, ``[B, H, slots, D]`` each.

    Allocated at the first :meth:`update` with the dtype of the keys written (so autocast works), for the
    positions written so far (at least 64), and doubled when full, up to ``capacity``: a cache costs what it
    holds, not its capacity. Only the first ``length`` positions are ever read; lowering ``length`` (e.g. after a
    padded prefill) forgets the positions beyond.

    Args:
        capacity: Largest number of positions the cache holds.
        window: The layer's sliding window (None = full causal); keys older than the window are not read.
    """

    def __init__(self, capacity: int, window: int | None = None) -> None:
        self.capacity, self.window = capacity, window
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0

    def _grow(self, k: Tensor, v: Tensor, needed: int) -> None:
        """(Re)allocate for at least ``needed`` positions: doubling, at most ``capacity`` (copies the kept ones)."""
        held = 0 if self.k is None else self.k.shape[2]
        size = min(self.capacity, max(needed, 2 * held, 64))
        new_k = k.new_empty((k.shape[0], k.shape[1], size, k.shape[3]))
        new_v = v.new_empty((v.shape[0], v.shape[1], size, v.shape[3]))
        if self.k is not None and self.v is not None and self.length:
            new_k[:, :, : self.length] = self.k[:, :, : self.length]
            new_v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = new_k, new_v

    def first_visible(self, offset: int) -> int:
        """Index of the oldest key that a query at position ``offset`` (or later) may still see."""
        return 0 if self.window is None else max(0, offset - self.window + 1)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k, v [B, H, n, D]`` and return the keys/values from :meth:`first_visible` on."""
        start, n = self.length, k.shape[2]
        if start + n > self.capacity:
            raise ConfigError(f"KV cache overflow: {start} + {n} positions > capacity {self.capacity}")
        if self.k is None or self.v is None or start + n > self.k.shape[2]:
            self._grow(k, v, start + n)
        assert self.k is not None and self.v is not None
        self.k[:, :, start : start + n] = k
        self.v[:, :, start : start + n] = v
        self.length = start + n
        first = self.first_visible(start)
        return self.k[:, :, first : start + n], self.v[:, :, first : start + n]


class StackCache:
    """One :class:`KVCache` per block of a :class:`TransformerStack`; ``length`` is the stack's position offset.

    Args:
        num_layers: Blocks in the stack.
        capacity: Positions each cache holds (the stage's max length).
        window: The stack's sliding window.
    """

    def __init__(self, num_layers: int, capacity: int, window: int | None = None) -> None:
        self.layers = [KVCache(capacity, window) for _ in range(num_layers)]
        self.capacity, self.window = capacity, window

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (used after a prefill over padded pooled sequences)."""
        for layer in self.layers:
            layer.length = min(layer.length, length)
