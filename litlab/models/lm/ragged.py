"""`RaggedDecoder`: batched KV-cached decoding of a flat Transformer over prompts of different lengths.

All sequences share one KV cache ``[N, heads, slots, head_dim]`` per layer. Prompts are left-padded to the
longest, so that every sequence's last prompt id sits in the same slot and each decoding step appends one slot
for all of them. Two things make padding invisible:

* **positions per row**: a sequence's ids get the rotary positions ``0, 1, 2, ...`` of its own tokens, whatever
  slot they occupy (``positions [N, L]``), so its logits are those it has alone;
* **a key mask per row**: a slot holding padding is never attended to (``valid [N, slots]``); a padding query
  attends only to itself, so no softmax row is empty.

**Shared-prefix reuse.** With ``prefix`` (e.g. a few-shot pre-prompt) the prefix is run once, with batch size 1,
and its keys and values are copied into every row's first slots; only the rows' own suffixes (the questions)
are then computed, left-padded after the prefix. The result equals running ``prefix + row`` for every row
(``tests/models/lm/test_batch_generation.py``), at the cost of one prefix instead of ``N``.

Full causal attention only: a sliding window counts *slots* in :class:`~litlab.models.lm.kv_cache.KVCache`, which
padding shifts, so a windowed model is refused (decode it with
:class:`~litlab.models.lm.generation.StepperDecoder`). The cache holds ``max_length`` slots: prefix + the longest
row + the new ids must fit (:meth:`RaggedDecoder.room`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from litlab.errors import ConfigError
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.kv_cache import StackCache
from litlab.models.lm.padding import left_pad

__all__ = ["RaggedDecoder"]


class RaggedDecoder:
    """Decodes many sequences of a :class:`FlatTransformer` in one batch (a :class:`~litlab.models.lm.generation.Decoder`).

    Args:
        model: The flat Transformer (full causal attention: ``window`` None or covering ``max_length``).
        pad_id: Id written into padding slots (never attended to).
    """

    def __init__(self, model: FlatTransformer, pad_id: int = 0) -> None:
        if not isinstance(model, FlatTransformer):
            raise ConfigError(f"RaggedDecoder needs a FlatTransformer, got {type(model).__name__}")
        if model.trunk.window is not None:
            raise ConfigError(f"batched decoding needs full causal attention; this model has window="
                              f"{model.trunk.window} < max_length={model.max_length} (decode one sequence at a time)")
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.cache: StackCache | None = None
        self.valid = torch.zeros(0, 0, dtype=torch.bool)
        self.next_pos = torch.zeros(0, dtype=torch.long)

    def room(self) -> int | None:
        return 0 if self.cache is None else self.model.max_length - self.cache.length

    def prefill(self, rows: Sequence[Sequence[int]], prefix: Sequence[int] | None = None) -> Tensor:
        n, head = len(rows), list(prefix or [])
        ids, real, positions = left_pad(rows, self.pad_id, len(head), self.model.max_length)
        self.cache = self.model.new_cache()
        self.valid = torch.zeros(n, self.model.max_length, dtype=torch.bool, device=self.device)
        self.next_pos = torch.zeros(n, dtype=torch.long, device=self.device)
        if head:
            prefix_logits = self.model(torch.tensor([head], device=self.device), self.cache, last_only=True)[:, -1]
            for layer in self.cache.layers:  # the prefix's keys and values, once per row
                assert layer.k is not None and layer.v is not None
                layer.k, layer.v = layer.k.repeat(n, 1, 1, 1), layer.v.repeat(n, 1, 1, 1)
            self.valid[:, : len(head)] = True
            self.next_pos += len(head)
            if ids.shape[1] == 0:
                return prefix_logits.expand(n, -1)
        if any(len(row) == 0 for row in rows):
            raise ConfigError("every prompt row needs at least one id (give BOS, or the prefix, first)")
        real = real.to(self.device)
        return self._forward(ids.to(self.device), self.next_pos[:, None] + positions.to(self.device), real)[:, -1]

    def step(self, tokens: Tensor) -> Tensor:
        ids = tokens.to(self.device, torch.long)[:, None]
        ones = torch.ones_like(ids, dtype=torch.bool)
        return self._forward(ids, self.next_pos[:, None].clone(), ones)[:, -1]

    def _forward(self, ids: Tensor, positions: Tensor, real: Tensor) -> Tensor:
        """Append ``ids [N, L]`` at the next slots with their ``positions`` and validity; returns their logits."""
        assert self.cache is not None
        start, length = self.cache.length, ids.shape[1]
        if start + length > self.model.max_length:
            raise ConfigError(f"the KV cache of {self.model.max_length} slots is full")
        self.valid[:, start : start + length] = real
        keys = start + length
        q_slot = torch.arange(start, keys, device=self.device)
        allowed = (q_slot[:, None] >= torch.arange(keys, device=self.device)[None, :])[None] & self.valid[:, None, :keys]
        allowed[:, torch.arange(length, device=self.device), q_slot] = True  # a padding query sees itself only
        logits = self.model(ids, self.cache, positions, allowed[:, None], last_only=True)
        self.next_pos = torch.where(real[:, -1], positions[:, -1] + 1, self.next_pos)
        return logits
