"""Padding ragged rows of token ids into one batch.

Right padding is what scoring uses: in a causal model, ids appended after a row's end never change the logits of
the row's own positions, so every row's scores are read at its own positions and the padding is ignored. Left
padding is what batched decoding uses: every row's last id sits in the same slot, so one step appends one slot
for all rows; the decoders mask the padding and give each row the positions of its own ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from litlab.errors import ConfigError


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """A ``[len(rows), longest]`` int64 tensor: each row's ids from position 0, then ``pad_id``.

    Args:
        rows: Token ids of each row (at least one row, each non-empty).
        pad_id: Id written after the end of each shorter row.
    """
    if not rows or any(len(row) == 0 for row in rows):
        raise ConfigError("right_pad needs at least one row and no empty row")
    ids = torch.full((len(rows), max(len(row) for row in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return ids


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, prefix_length: int = 0, max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows right-aligned after ``pad_id``: ``(ids, real, positions)``, each ``[len(rows), longest]``.

    ``real`` is True at the rows' own ids; ``positions`` counts each row's own ids from 0 (0 on padding).

    Args:
        rows: Token ids of each row (at least one row).
        pad_id: Id written before each shorter row.
        prefix_length: Ids that come before every row (a shared prefix), for the length check.
        max_length: Longest sequence the model takes (``None``: no check).

    Raises:
        ConfigError: the prefix and the longest row do not fit ``max_length``.
    """
    width = max(len(row) for row in rows)
    if max_length is not None and prefix_length + width > max_length:
        raise ConfigError(f"a prompt of {prefix_length + width} ids (prefix {prefix_length} + longest row {width}) "
                          f"does not fit the model's max_length={max_length}")
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    real = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long)
            real[i, width - len(row):] = True
    return ids, real, (real.long().cumsum(-1) - 1).clamp(min=0)
