"""The safeguard: the evolved model is kept only when its held-out score is not worse than the identity's."""

from __future__ import annotations

import math

import pytest

from litlab.evolution.report import EvolutionResult
from litlab.evolution.safeguard import safeguard_keeps


def result(before: float | None, after: float | None, mode: str = "max") -> EvolutionResult:
    return EvolutionResult(best={}, best_json={}, best_index=0, selection_before=0.5, selection_after=0.6,
                           heldout_before=before, heldout_after=after, history=[], num_evaluations=1, nan_count=0,
                           bits=1.0, num_examples=10, delta=0.05, generalization_gap=0.5, optimizer="OnePlusOne",
                           feedback="comparison", budget=1, num_workers=1, seed=0, mode=mode)


@pytest.mark.parametrize(("before", "after", "mode", "kept"), [
    (0.5, 0.6, "max", True), (0.5, 0.5, "max", True), (0.5, 0.4, "max", False),
    (0.5, 0.4, "min", True), (0.5, 0.6, "min", False), (0.5, math.nan, "max", False), (0.5, math.nan, "min", False),
    (None, None, "max", True),
])
def test_kept_only_when_heldout_is_not_worse(before, after, mode, kept):
    assert safeguard_keeps(result(before, after, mode)) is kept
