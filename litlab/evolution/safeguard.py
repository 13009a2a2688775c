"""The safeguard of every evolutionary method: keep the evolved model only if the held-out set agrees.

The engine suggests the identity first, so the best candidate is never worse than the unmodified model on the
*selection* set; nothing says so on unseen data. The safeguard compares the held-out score of the best
candidate with that of the identity (both measured by the engine, :class:`~litlab.evolution.EvolutionResult`)
and keeps the candidate only when it is not worse, in the metric's own orientation (``result.mode``). A NaN
held-out score of the candidate is never kept; a run without a held-out set has nothing to veto and keeps.
"""

from __future__ import annotations

from litlab.evolution.report import EvolutionResult


def safeguard_keeps(result: EvolutionResult) -> bool:
    """Whether ``result.best`` is kept: its held-out score is not worse than the identity's (no held-out: True)."""
    before, after = result.heldout_before, result.heldout_after
    if before is None or after is None:
        return True
    if result.mode == "min":
        before, after = -before, -after
    return bool(after >= before)  # False when ``after`` is NaN
