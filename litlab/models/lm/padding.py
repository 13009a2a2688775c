"""Padding ragged rows of token ids into one batch.

Right padding is what scoring uses: in a causal model, ids appended after a row's end never change the logits of
the row's own positions, so every row's scores are read at its own positions and the padding is ignored.
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
