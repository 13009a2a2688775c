"""Picking the next id of each sequence from its logits: greedy, or sampled with temperature, top-k and top-p.

Each sequence of a batch samples with its own ``torch.Generator``, so a sequence draws the same ids whether it
is decoded alone or beside others (``tests/models/lm/test_batch_generation.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from litlab.errors import ConfigError

__all__ = ["check_sampling", "sample_next", "sample_tokens"]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Validate the sampling options (ConfigError naming the bad one)."""
    if not temperature >= 0:
        raise ConfigError(f"temperature={temperature!r} is not allowed: expected ≥ 0 (0 = greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k={top_k!r} is not allowed: expected a positive integer or None")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p={top_p!r} is not allowed: expected 0 < top_p ≤ 1 or None")


def sample_tokens(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    banned: Sequence[int] = (),
) -> Tensor:
    """The next id of each row of ``logits [N, vocab]``: greedy when ``temperature <= 0``, else sampled.

    Args:
        logits: Next-id logits of ``N`` sequences.
        temperature: Softmax temperature; 0 = greedy (argmax).
        top_k: Keep only the k most likely ids of each row.
        top_p: Keep the smallest set of most likely ids whose probability reaches ``top_p`` (nucleus).
        generators: One random generator per row (seeded for reproducible samples; ``None``: the global RNG).
        banned: Ids never produced (e.g. BOS).

    Returns:
        An int64 tensor ``[N]`` on the CPU (the work is done on the logits' device; the generators are CPU ones).
    """
    check_sampling(temperature, top_k, top_p)
    logits = logits.detach().float()
    if banned:
        logits = logits.clone()
        logits[:, list(banned)] = float("-inf")
    if temperature <= 0:
        return logits.argmax(-1).cpu()
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs, order = logits.softmax(-1).sort(-1, descending=True)
        drop = probs.cumsum(-1) - probs >= top_p  # ids after the nucleus is complete (the first one always stays)
        logits = logits.scatter(-1, order, logits.gather(-1, order).masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1).cpu()
    rows = generators if generators is not None else [None] * len(probs)
    if len(rows) != len(probs):
        raise ConfigError(f"{len(rows)} generators for {len(probs)} rows of logits")
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, rows, strict=True)])


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    banned: Sequence[int] = (),
) -> int:
    """:func:`sample_tokens` for one sequence: the next id from ``logits [vocab]``."""
    return int(sample_tokens(logits[None], temperature, top_k, top_p, [generator], banned)[0])
