"""`EvolutionResult`: what a run found, its scores before and after, its history and its generalization gap.

``to_json`` writes the report (every field, candidates as lists) and ``plot`` a PNG of the fitness curve
(matplotlib's Agg backend, no display needed). Both write on rank 0 only and return ``None`` elsewhere.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from litlab.evolution import distributed


@dataclass
class EvolutionResult:
    """The outcome of an evolutionary run (also the anytime state of one in progress).

    Scores are in the metric's own orientation (``Fitness.mode``). ``history`` has one record per
    evaluation: ``index``, ``step``, ``fitness`` (None for NaN), ``best`` (best fitness so far) and ``nan``.
    ``best`` is the best candidate as the space takes it (``space.apply(result.best)``), ``best_json`` the
    same as JSON-compatible objects (per tensor for a ``ParameterSpace``). ``bits`` is ``Σ log2 K_i`` for the
    feedback used, ``generalization_gap`` the bound on the gap between test and selection score
    ``sqrt((bits·ln2 + ln(2/δ)) / (2n))`` (None when ``n`` is unknown).
    """

    best: dict[str, Any]
    best_json: dict[str, Any]
    best_index: int
    selection_before: float
    selection_after: float
    heldout_before: float | None
    heldout_after: float | None
    history: list[dict[str, Any]]
    num_evaluations: int
    nan_count: int
    bits: float | None
    num_examples: int | None
    delta: float
    generalization_gap: float | None
    optimizer: str
    feedback: str
    budget: int
    num_workers: int
    seed: int
    mode: str
    seconds_total: float = 0.0
    seconds_fitness: float = 0.0
    space: dict[str, Any] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        """Share of the run's wall time spent outside the fitness function (ask, apply, restore, tell, files)."""
        return 0.0 if self.seconds_total <= 0 else max(0.0, 1.0 - self.seconds_fitness / self.seconds_total)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-compatible objects (NaN becomes None)."""
        fields = asdict(self)
        fields["best"] = fields.pop("best_json")
        return _finite({**fields, "overhead": self.overhead})

    def to_json(self, path: str | os.PathLike[str]) -> Path | None:
        """Writes :meth:`to_dict` as JSON (rank 0 only)."""
        if distributed.rank() != 0:
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def plot(self, path: str | os.PathLike[str]) -> Path | None:
        """Draws the fitness of every evaluation and the best so far to a PNG file (rank 0 only)."""
        if distributed.rank() != 0:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        index = [r["index"] for r in self.history]
        fig = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ok = [(r["index"], r["fitness"]) for r in self.history if not r["nan"]]
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=8, color="tab:blue", alpha=0.5, label="candidate")
        nans = [r["index"] for r in self.history if r["nan"]]
        if nans:
            low = min((f for _, f in ok), default=0.0)
            ax.scatter(nans, [low] * len(nans), marker="x", color="tab:red", label=f"NaN ({len(nans)})")
        ax.step(index, [r["best"] for r in self.history], where="post", color="black", label="best so far")
        ax.axhline(self.selection_before, color="gray", linestyle="--", linewidth=1, label="identity")
        ax.set_xlabel("evaluation")
        ax.set_ylabel(f"selection fitness ({self.mode} is better)".replace("max", "higher").replace("min", "lower"))
        gap = "" if self.generalization_gap is None else f", gap bound {self.generalization_gap:.3f} ({self.bits:.0f} bits)"
        ax.set_title(f"{self.optimizer}, {self.feedback} feedback{gap}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        return path


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
