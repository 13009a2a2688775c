"""The metrics AfterLearnER retrofits against (its ℵ-loss): a small registry, plus a protocol for any module.

``metric`` names one of:

- ``"top1"``: accuracy of the argmax of the logits (per-example 0/1 scores, averaged; higher is better);
- ``"macro_f1"``: F1 score averaged over the classes that occur in the labels or the predictions (scikit-learn's
  ``f1_score(average="macro")``), computed from all predictions at once (higher is better);
- ``"module"``: the LightningModule's own metric, see below.

Classification metrics get ``(logits, labels)`` from ``module.retrofit_logits(batch)`` when the module defines it,
else from ``module(batch[0]), batch[1]`` (an ``(inputs, labels, ...)`` batch, as image classifiers have).

The module protocol (``metric="module"``), for anything else (detection thresholds, word error rates,
generation settings): the LightningModule defines either

- ``retrofit_scores(batch) -> Tensor[B]``: one score per example; the fitness is their mean over the selection
  set (and over all ranks); or
- ``retrofit_outputs(batch) -> Any`` and ``retrofit_aggregate(outputs: list) -> float``: any per-batch output
  (e.g. ``(predictions, targets)``; gathered from all ranks under DDP, in rank order) and the fitness of the
  list of all of them (corpus BLEU, macro-F1, ...).

The callback's ``higher_is_better`` gives the orientation of a module metric (``False`` for an error rate).
All calls run under ``torch.no_grad()`` and the trainer's precision context (autocast for ``*-mixed``).
A NaN or infinite fitness during the run counts as the worst; on the unmodified model it is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.evolution import Fitness

METRICS = ("top1", "macro_f1", "module")


def classifier_outputs(module: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of a batch: ``module.retrofit_logits(batch)``, else ``module(batch[0]), batch[1]``."""
    hook = getattr(module, "retrofit_logits", None)
    if callable(hook):
        return hook(batch)
    if not (isinstance(batch, list | tuple) and len(batch) >= 2):
        raise ConfigError(f"a classification metric needs (inputs, labels, ...) batches or a "
                          f"{type(module).__name__}.retrofit_logits(batch) -> (logits, labels); got a "
                          f"{type(batch).__name__} batch")
    return module(batch[0]), batch[1]


def top1_scores(module: nn.Module, batch: Any) -> torch.Tensor:
    """Per-example 0/1 scores: is the argmax of the logits the label."""
    logits, labels = classifier_outputs(module, batch)
    return (logits.argmax(-1) == labels).float()


def predictions(module: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted classes, labels)`` of a batch (the per-batch output of ``macro_f1``)."""
    logits, labels = classifier_outputs(module, batch)
    return logits.argmax(-1), labels


def macro_f1(outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Macro-averaged F1 of ``[(predictions, labels), ...]`` over the classes present in either."""
    pred = torch.cat([p.reshape(-1).long().cpu() for p, _ in outputs])
    true = torch.cat([t.reshape(-1).long().cpu() for _, t in outputs])
    if pred.numel() == 0:
        return float("nan")
    classes = int(max(pred.max(), true.max())) + 1
    confusion = torch.bincount(true * classes + pred, minlength=classes * classes).reshape(classes, classes)
    tp = confusion.diag().double()
    denominator = (confusion.sum(0) + confusion.sum(1)).double()  # 2TP + FP + FN
    present = denominator > 0
    return float((2 * tp[present] / denominator[present]).mean())


def make_fitness(
    metric: str,
    module: nn.Module,
    context: Callable[[], AbstractContextManager[Any]],
    higher_is_better: bool = True,
) -> Fitness:
    """The engine's :class:`~litlab.evolution.Fitness` for ``metric`` on ``module``.

    Args:
        metric: A name of :data:`METRICS`.
        module: The LightningModule (checked for the ``"module"`` protocol).
        context: A fresh context manager per call (the trainer's precision context).
        higher_is_better: Orientation of a ``"module"`` metric (built-in metrics are higher-is-better).
    """

    def wrap(fn: Callable[..., Any]) -> Callable[[nn.Module, Any], Any]:
        def call(model: nn.Module, batch: Any) -> Any:
            with context():
                return fn(model, batch)

        return call

    if metric == "top1":
        return Fitness(wrap(top1_scores), mode="max")
    if metric == "macro_f1":
        return Fitness(wrap(predictions), mode="max", aggregate=macro_f1)
    if metric != "module":
        raise ConfigError(f"metric={metric!r} is not allowed: choose one of {list(METRICS)}")
    mode = "max" if higher_is_better else "min"
    if callable(getattr(module, "retrofit_scores", None)):
        return Fitness(wrap(lambda model, batch: model.retrofit_scores(batch)), mode=mode)
    if callable(getattr(module, "retrofit_outputs", None)) and callable(getattr(module, "retrofit_aggregate", None)):
        return Fitness(wrap(lambda model, batch: model.retrofit_outputs(batch)), mode=mode,
                       aggregate=module.retrofit_aggregate)
    raise ConfigError(f"metric='module' needs {type(module).__name__} to define retrofit_scores(batch) -> per-example "
                      "scores, or retrofit_outputs(batch) and retrofit_aggregate(outputs) -> float")
