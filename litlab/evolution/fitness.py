"""`Fitness`: the exact, possibly non-differentiable metric (AfterLearnER's ℵ-loss) over a selection set.

``fn(model, batch)`` returns one score per example (a tensor, array or list); the fitness is their mean over
all batches (and all ranks). A metric that needs every prediction at once (macro-F1, BLEU, ...) gives
``aggregate``: ``fn`` then returns any per-batch output (e.g. ``(predictions, targets)``) and
``aggregate(list_of_outputs) -> float`` computes the fitness. ``mode`` says whether higher (``"max"``) or
lower (``"min"``) is better. Evaluation runs under ``torch.no_grad()``.

The number of examples ``n`` (for the generalization bound) is the count of per-example scores; with
``aggregate`` it is the summed length of the per-batch outputs (``len`` of a tensor, array or list, or of the
first element of a tuple or dict), or unknown when an output has no length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.evolution import distributed

MODES = ("max", "min")


@dataclass(frozen=True)
class FitnessValue:
    """One evaluation: the fitness (NaN allowed) and the number of examples it covered (None if unknown)."""

    value: float
    num_examples: int | None


class Fitness:
    """A metric of a model over a selection set, as one float.

    Args:
        fn: ``fn(model, batch)`` -> per-example scores, or any per-batch output when ``aggregate`` is given.
        mode: ``"max"`` if higher is better (accuracy), ``"min"`` if lower is better (error rate, WER).
        aggregate: ``aggregate(list of per-batch outputs) -> float``; default: the mean of all scores.
    """

    def __init__(
        self,
        fn: Callable[[nn.Module, Any], Any],
        mode: str = "max",
        aggregate: Callable[[list[Any]], float] | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"fn must be callable as fn(model, batch), got {fn!r}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if aggregate is not None and not callable(aggregate):
            raise ConfigError(f"aggregate must be callable as aggregate(outputs) or None, got {aggregate!r}")
        self.fn = fn
        self.mode = mode
        self.aggregate = aggregate

    def score(self, value: float) -> float:
        """``value`` oriented so that higher is better (NaN stays NaN)."""
        return value if self.mode == "max" else -value

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> FitnessValue:
        """The fitness of ``model`` on ``batches`` (this rank's shard when distributed; reduced over ranks)."""
        with torch.no_grad():
            if self.aggregate is None:
                return self._mean(model, batches)
            return self._aggregate(model, batches)

    def _mean(self, model: nn.Module, batches: Iterable[Any]) -> FitnessValue:
        total: torch.Tensor | None = None
        count = 0
        for batch in batches:
            scores = self.fn(model, batch)
            scores = scores.detach() if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores))
            batch_sum = scores.reshape(-1).to(torch.float64).sum()  # stays on the device: no sync per batch
            total = batch_sum if total is None else total + batch_sum.to(total.device)
            count += scores.numel()
        stats = torch.stack([
            (total if total is not None else torch.zeros((), dtype=torch.float64)).cpu(),
            torch.tensor(float(count), dtype=torch.float64),
        ])
        stats = distributed.all_reduce_sum(stats)
        total_sum, total_count = float(stats[0]), round(float(stats[1]))
        if total_count == 0:
            raise ConfigError("the selection set is empty: the fitness function produced no per-example score")
        return FitnessValue(total_sum / total_count, total_count)

    def _aggregate(self, model: nn.Module, batches: Iterable[Any]) -> FitnessValue:
        outputs = [self.fn(model, batch) for batch in batches]
        if distributed.is_distributed():
            outputs = [out for rank_outputs in distributed.all_gather_objects([_to_cpu(o) for o in outputs])
                       for out in rank_outputs]
        if not outputs:
            raise ConfigError("the selection set is empty: it yielded no batch")
        counts = [_length(out) for out in outputs]
        num_examples = None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]
        return FitnessValue(float(self.aggregate(outputs)), num_examples)  # type: ignore[misc]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _length(out: Any) -> int | None:
    if isinstance(out, torch.Tensor | np.ndarray):
        return int(out.shape[0]) if out.ndim else 1
    if isinstance(out, list):
        return len(out)
    if isinstance(out, tuple) and out:
        return _length(out[0])
    if isinstance(out, Mapping) and out:
        return _length(next(iter(out.values())))
    return None
