"""`IndexSpace`: ``k`` indices into a pool of ``N`` items (EPPO's pre-prompt: which demonstrations, in order).

Encoding (measured with nevergrad 1.0.12, N = 7,473, k = 8): each index is one real number ``u`` mapped to
``[-0.5, N - 0.5]`` by the Gaussian CDF (``set_bounds(method="gaussian")``) and rounded
(``set_integer_casting``). The reference point sits at ``u = 0`` (the middle of the pool), so a fresh standard
normal draw, which is what nevergrad's discrete mutations (``DiscreteOnePlusOne``,
``DiscreteLenglerOnePlusOne``, ``Portfolio*``) and ``RandomSearch`` use, gives a uniform index. The space has
``k`` dimensions; an ask-and-tell takes about 0.3 ms, against about 0.7 s for ``ng.p.Choice(range(N),
repetitions=k)`` (a ``k×N`` softmax space of 59,784 dimensions) and 0.8 s for ``TransitionChoice``.
Continuous optimizers (``OnePlusOne``, CMA) mutate locally in ``u`` and are a poor fit for an unordered pool.

The identity is ``start`` (a real starting pre-prompt); without it, the first ``k`` items. nevergrad's own
default start would repeat one item ``k`` times. Duplicates are allowed: drop or penalise them in the fitness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nevergrad as ng
import numpy as np

from litlab.errors import ConfigError
from litlab.evolution.search_space import SpacePart


class IndexSpace(SpacePart):
    """``k`` indices in ``[0, num_items)``, uniform under discrete mutations; the fitness reads :attr:`current`.

    A native nevergrad parameter (integer-cast), so optimizers that look at the parametrization (``NGOpt``)
    see a discrete space.

    Args:
        num_items: ``N``, the size of the pool.
        k: The number of indices.
        start: The starting indices (the identity candidate); default ``[0, 1, ..., k-1]`` (modulo ``N``).
    """

    standardized = False

    def __init__(self, num_items: int, k: int, start: Sequence[int] | None = None) -> None:
        if not isinstance(num_items, int) or isinstance(num_items, bool) or num_items < 1:
            raise ConfigError(f"num_items must be a positive integer, got {num_items!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if start is None:
            start = [i % num_items for i in range(k)]
        values = np.asarray(start)
        if values.shape != (k,) or not np.issubdtype(values.dtype, np.integer):
            raise ConfigError(f"start must be {k} integers, got {start!r}")
        if values.min() < 0 or values.max() >= num_items:
            raise ConfigError(f"start must hold indices in [0, {num_items}), got {list(start)}")
        self.num_items = num_items
        self.k = k
        self.start = values.astype(np.int64)
        self.current: np.ndarray = self.start.copy()
        """The indices now in effect (``start`` outside an evaluation, or the best once applied)."""

    @property
    def dimension(self) -> int:
        return self.k

    def parametrization(self) -> ng.p.Array:
        middle = np.full(self.k, (self.num_items - 1) / 2)  # maps to u = 0, the centre of the Gaussian CDF
        array = ng.p.Array(init=middle).set_bounds(-0.5, self.num_items - 0.5, method="gaussian")
        return array.set_integer_casting()

    def identity(self) -> np.ndarray:
        return self.start.copy()

    def apply(self, value: Any) -> np.ndarray:
        indices = np.asarray(value).astype(np.int64).reshape(-1)
        if indices.shape != (self.k,) or indices.min() < 0 or indices.max() >= self.num_items:
            raise ConfigError(f"IndexSpace value must be {self.k} indices in [0, {self.num_items}), got {value!r}")
        previous, self.current = self.current, indices
        return previous

    def restore(self, token: np.ndarray) -> None:
        self.current = token

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_items": self.num_items, "k": self.k, "start": self.start.tolist()}
