"""What the optimizer is told about a step's candidates (``feedback``), and how many bits that is.

nevergrad minimises, so the engine tells losses. Scores are oriented so that higher is better; a NaN or
infinite score is the worst possible and counted as NaN.

- ``"value"``: the loss is ``-score`` (the exact fitness). A NaN is told as the worst finite loss told so far
  plus one. Bits per evaluation: ``log2(n+1)`` (see :mod:`litlab.evolution.bounds`).
- ``"comparison"``: the optimizer learns only the ranking of the step's ``λ`` candidates together with the
  incumbent (the best so far; ties go to the incumbent, i.e. a candidate must be strictly better; ties
  between candidates go to the earlier one; NaN ranks last). The told losses are a function of that
  ranking and of earlier rankings only: with ``B`` the loss told for the incumbent, ``r*`` its rank and
  ``r_i`` candidate ``i``'s rank (0 = best) among the ``λ + 1``, candidate ``i`` is told
  ``B + (r_i − r*)/(λ+1)`` — below ``B`` exactly when it beats the incumbent. For a (1+1) run this is
  ``B − 1/2`` for an improvement and ``B + 1/2`` otherwise: one bit per step. The first step has no
  incumbent: ``B = 0`` and the step's best becomes the incumbent. Bits per step: ``log2((λ+1)!)``
  (``log2(λ!)`` for the first).
"""

from __future__ import annotations

import math
from typing import Any

from litlab.errors import ConfigError
from litlab.evolution.bounds import comparison_bits, value_bits

FEEDBACKS = ("value", "comparison")


def is_valid(score: float) -> bool:
    """Whether a score counts (finite); NaN and infinities are the worst score."""
    return math.isfinite(score)


class ValueFeedback:
    """Tells the exact fitness (as a loss)."""

    name = "value"

    def __init__(self) -> None:
        self.worst: float | None = None

    def losses(self, scores: list[float], best: float | None) -> list[float]:
        """The losses to tell for one step's scores (``best``: the incumbent's score, unused here)."""
        finite = [-s for s in scores if is_valid(s)]
        if finite:
            self.worst = max(finite) if self.worst is None else max(self.worst, *finite)
        nan_loss = (self.worst if self.worst is not None else 0.0) + 1.0
        return [-s if is_valid(s) else nan_loss for s in scores]

    def bits(self, num_candidates: int, has_incumbent: bool, n: int | None) -> float | None:
        """``log2 K`` for the step (None when ``n`` is unknown)."""
        return None if n is None else value_bits(num_candidates, n)

    def state_dict(self) -> dict[str, Any]:
        return {"worst": self.worst}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.worst = state["worst"]


class ComparisonFeedback:
    """Tells only the ranking of the step's candidates and the incumbent (see the module docstring)."""

    name = "comparison"

    def __init__(self) -> None:
        self.incumbent_loss = 0.0

    def losses(self, scores: list[float], best: float | None) -> list[float]:
        """The losses to tell for one step's scores; ``best`` is the incumbent's score (None at first)."""
        count = len(scores)
        order = sorted(range(count), key=lambda i: (0, -scores[i], i) if is_valid(scores[i]) else (1, 0.0, i))
        if best is None:
            beating = 0
            ranks = {i: position for position, i in enumerate(order)}
        else:
            beating = sum(1 for s in scores if is_valid(s) and s > best)
            ranks = {i: position if position < beating else position + 1 for position, i in enumerate(order)}
        told = [self.incumbent_loss + (ranks[i] - beating) / (count + 1) for i in range(count)]
        if best is None or beating:
            self.incumbent_loss = told[order[0]]
        return told

    def bits(self, num_candidates: int, has_incumbent: bool, n: int | None) -> float:
        """``log2 K`` for the step."""
        return comparison_bits(num_candidates, has_incumbent)

    def state_dict(self) -> dict[str, Any]:
        return {"incumbent_loss": self.incumbent_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.incumbent_loss = state["incumbent_loss"]


def make_feedback(name: str) -> ValueFeedback | ComparisonFeedback:
    """The feedback of that name (``"value"`` or ``"comparison"``)."""
    if name == "value":
        return ValueFeedback()
    if name == "comparison":
        return ComparisonFeedback()
    raise ConfigError(f"feedback must be one of {FEEDBACKS}, got {name!r}")
