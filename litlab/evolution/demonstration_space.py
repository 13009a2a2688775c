"""`DemonstrationSpace`: EPPO's search space (arXiv 2412.04291), ordered pre-prompts of distinct pool items.

A candidate is an ordered tuple of indices into a pool of ``N`` demonstrations; its pre-prompt is the *first
``k`` distinct* indices of the tuple, in order (a repeated index is dropped, never shown twice). The tuple is
an :class:`~litlab.evolution.index_space.IndexSpace` (one integer-cast Gaussian-CDF coordinate per slot, so a
discrete mutation or a random draw gives a uniform pool index; ``k`` dimensions, not ``k·N``).

``k`` is fixed (``shots``), or searched in ``shots_range = (low, high)`` (the paper's 2–8): then the tuple has
``high`` slots and a second ``IndexSpace`` of one coordinate holds ``k - low``; slots past the ``k``-th
distinct index are unused, so two candidates that differ only there have the same pre-prompt (and share a
cached fitness).

The identity (the engine's first candidate) is a real pre-prompt: ``start`` (distinct indices), by default the
first ``k`` pool items, with ``k = shots``. With a searched ``k`` the unused slots after ``start`` hold the
smallest indices not in ``start``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from litlab.errors import ConfigError, check_int
from litlab.evolution.index_space import IndexSpace
from litlab.evolution.search_space import SearchSpace


class DemonstrationSpace(SearchSpace):
    """Ordered pre-prompts of ``k`` distinct demonstrations out of a pool; :meth:`selected` decodes a candidate.

    Args:
        pool_size: ``N``, the number of demonstrations to choose from (>= 1).
        shots: ``k``, demonstrations per pre-prompt (the starting ``k`` when ``shots_range`` is given).
        shots_range: ``(low, high)``: search ``k`` in this range (``1 <= low <= shots <= high <= N``); None: ``k``
            is fixed.
        start: The starting pre-prompt, ``shots`` distinct pool indices (default: ``0, 1, ..., shots - 1``).
    """

    def __init__(self, pool_size: int, shots: int, shots_range: Sequence[int] | None = None,
                 start: Sequence[int] | None = None) -> None:
        if isinstance(pool_size, int) and not isinstance(pool_size, bool) and pool_size == 0:
            raise ConfigError("the demonstration pool is empty: EPPO needs at least one solved problem to choose from")
        check_int("pool_size", pool_size, 1)
        check_int("shots", shots, 1)
        if shots > pool_size:
            raise ConfigError(f"shots={shots} is not allowed: it exceeds the pool of {pool_size} demonstrations")
        low = high = shots
        if shots_range is not None:
            if len(shots_range) != 2:
                raise ConfigError(f"shots_range={shots_range!r} is not allowed: give two integers [low, high]")
            low, high = (check_int("shots_range", int(v) if isinstance(v, np.integer) else v, 1)
                         for v in shots_range)
            if not low <= shots <= high:
                raise ConfigError(f"shots_range={list(shots_range)} is not allowed: it must hold shots={shots}")
            if high > pool_size:
                raise ConfigError(f"shots_range={list(shots_range)} is not allowed: its high end exceeds the pool "
                                  f"of {pool_size} demonstrations")
        first = list(range(shots)) if start is None else [int(i) for i in start]
        if start is not None:
            if len(first) != shots or any(not 0 <= i < pool_size for i in first):
                raise ConfigError(f"start={list(start)!r} is not allowed: give {shots} pool indices in [0, "
                                  f"{pool_size})")
            if len(set(first)) != len(first):
                raise ConfigError(f"start={list(start)!r} is not allowed: its indices must be distinct")
        taken = set(first)
        filler = (i for i in range(pool_size) if i not in taken)
        slots = first + [next(filler) for _ in range(high - shots)]
        parts: dict[str, Any] = {"demonstrations": IndexSpace(pool_size, high, start=slots)}
        if high > low:
            parts["shots"] = IndexSpace(high - low + 1, 1, start=[shots - low])
        super().__init__(parts)
        self.pool_size = pool_size
        self.shots = shots
        self.shots_range = None if high == low else (low, high)
        self.start = tuple(first)

    def selected(self, value: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """The pre-prompt of candidate ``value`` (default: the one in effect): its first ``k`` distinct indices."""
        slots = self.parts["demonstrations"].current if value is None else value["demonstrations"]
        if self.shots_range is None:
            k = self.shots
        else:
            offset = self.parts["shots"].current if value is None else value["shots"]
            k = self.shots_range[0] + int(np.asarray(offset).reshape(-1)[0])
        chosen: list[int] = []
        for index in np.asarray(slots).reshape(-1).tolist():
            if index not in chosen:
                chosen.append(int(index))
                if len(chosen) == k:
                    break
        return tuple(chosen)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(),
                "pre_prompt": {"pool_size": self.pool_size, "shots": self.shots,
                               "shots_range": None if self.shots_range is None else list(self.shots_range),
                               "start": list(self.start)}}
