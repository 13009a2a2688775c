"""`EvolutionaryRetrofit`: AfterLearnER (arXiv 2410.11330) as a Lightning callback that runs after ``fit``.

After training, a seeded nevergrad optimizer changes a few chosen parameters (per-class logit biases, norm or
expert scales, ...; :class:`~litlab.evolution.ParameterSpace`) and/or hyperparameters the LightningModule
declares (:class:`~litlab.evolution.HyperParameters`) against the exact, possibly non-differentiable metric
(:mod:`litlab.callbacks.retrofit_metrics`) on the *selection* part of the validation set; the rest of the
validation set (*held-out*, split by :func:`litlab.evolution.split.fraction_split`) only reports the result
and, with ``safeguard``, vetoes it. The engine suggests the identity first, so the result is never worse than
the trained model on the selection set, and reports the information told to the optimizer (bits) and the
generalization gap ``sqrt((bits·ln2 + ln(2/δ)) / (2n))``.

When it runs, the files it writes (``retrofitted.ckpt``, ``report.json``, ``fitness.png``, ``state.pt`` under
``<log dir>/retrofit``), the logged ``retrofit/*`` metrics and resume: see
:mod:`litlab.callbacks.evolution_base`. ``litlab retrofit --config ... --ckpt_path ...``
(:meth:`litlab.lightning_cli.LitlabTrainer.retrofit`) runs the search on a trained checkpoint without training.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer

from litlab.callbacks.evolution_base import EvaluationData, EvolutionCallback
from litlab.callbacks.evolution_data import (
    device_batches,
    subset_loader,
    validation_loader,
)
from litlab.callbacks.retrofit_metrics import METRICS, make_fitness
from litlab.errors import ConfigError, check_choice, check_int
from litlab.evolution import Fitness, HyperParameters, ParameterSpace, SearchSpace
from litlab.evolution.parameter_space import GRANULARITIES, MODES
from litlab.evolution.split import fraction_split


class EvolutionaryRetrofit(EvolutionCallback):
    """Retrofits a trained model after ``fit`` (AfterLearnER): evolves a few parameters against an exact metric.

    Args:
        select: Glob pattern(s) on parameter names of the LightningModule, e.g. ``model.head.bias`` or
            ``model.blocks.*.norm*.weight``.
        regex: Regular expression searched in parameter names.
        module_type: Class name(s) (``LayerNorm``) or dotted path(s) of modules whose direct parameters are
            selected. The given filters are intersected; give at least one of them, or ``hyperparameters``.
        mode: ``multiplicative`` (``W·exp(x)``) or ``additive`` (``W + x``) change of the selected tensors.
        granularity: Numbers searched per tensor: ``tensor`` (one), ``channel`` (one per index of dim 0, e.g. one
            bias per class) or ``entry`` (one per entry).
        scale: Initial mutation size of ``x`` (relative change for ``multiplicative``, absolute for ``additive``).
        box: If given, ``x`` stays in the box ``[-box, box]``.
        hyperparameters: Also search the hyperparameters of ``pl_module.retrofit_hyperparameters()`` (a
            :class:`~litlab.evolution.HyperParameters` that the module's forward or metric reads).
        optimizer: nevergrad optimizer name: ``OnePlusOne`` (one bit per evaluation with comparison feedback),
            ``DiscreteLenglerOnePlusOne``, ``NGOpt``, ``DiagonalCMA``, ...
        budget: Evaluations of the metric on the selection set, the unmodified model included (>= 1).
        num_workers: Candidates asked, evaluated and told together per step (the optimizer's population, not
            data-loading processes).
        seed: Seed of the optimizer and of the selection/held-out split (identical on every rank).
        feedback: ``comparison`` (the optimizer learns only which candidate is better: few bits, a small generalization gap) or
            ``value`` (the exact metric is told).
        metric: ``top1``, ``macro_f1`` (classifiers: logits of ``pl_module(batch[0])`` against ``batch[1]``, or of
            ``pl_module.retrofit_logits(batch)``) or ``module`` (``pl_module.retrofit_scores(batch)``, or
            ``retrofit_outputs(batch)`` + ``retrofit_aggregate(outputs)``); see
            :mod:`litlab.callbacks.retrofit_metrics`.
        higher_is_better: Orientation of a ``module`` metric (built-in metrics are higher-is-better).
        selection_fraction: Share of the validation set the optimizer is scored on, in ``(0, 1]``; the rest is the
            held-out set that reports the result. Both parts are fixed by ``seed``.
        safeguard: Keep the retrofitted model only if its held-out score is not worse than the trained model's;
            otherwise restore the trained model (needs ``selection_fraction < 1``).
        batch_size: Batch size of the selection and held-out loaders (default: the validation loader's).
        cache_batches: Keep the selection and held-out batches on the device after the first pass (they are read
            once per evaluation); turn off when they do not fit in device memory.
        checkpoint_every: Evaluations between writes of the engine's state file.
        resume: Continue from ``<output_dir>/state.pt`` when it exists.
        output_dir: Directory of the report, plot, weights and state (default: ``<trainer.log_dir>/retrofit``).
        delta: Failure probability of the reported generalization gap, in ``(0, 1)``.
        progress_bar: Show a progress bar on rank 0 (default: when the trainer shows one).
    """

    log_prefix = "retrofit"
    weights_name = "retrofitted.ckpt"

    def __init__(
        self,
        select: str | list[str] | None = None,
        regex: str | None = None,
        module_type: str | list[str] | None = None,
        mode: Literal["multiplicative", "additive"] = "multiplicative",
        granularity: Literal["tensor", "channel", "entry"] = "tensor",
        scale: float = 0.01,
        box: float | None = None,
        hyperparameters: bool = False,
        optimizer: str = "OnePlusOne",
        budget: int = 100,
        num_workers: int = 1,
        seed: int = 0,
        feedback: Literal["value", "comparison"] = "comparison",
        metric: str = "top1",
        higher_is_better: bool = True,
        selection_fraction: float = 0.5,
        safeguard: bool = True,
        batch_size: int | None = None,
        cache_batches: bool = True,
        checkpoint_every: int = 10,
        resume: bool = True,
        output_dir: str | None = None,
        delta: float = 0.05,
        progress_bar: bool | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, budget=budget, num_workers=num_workers, seed=seed, feedback=feedback,
                         safeguard=safeguard, checkpoint_every=checkpoint_every, resume=resume,
                         output_dir=output_dir, delta=delta, progress_bar=progress_bar)
        for key, value, allowed in (("mode", mode, MODES), ("granularity", granularity, GRANULARITIES),
                                    ("metric", metric, METRICS)):
            check_choice(key, value, allowed)
        if batch_size is not None:
            check_int("batch_size", batch_size, 1)
        for key, value in (("scale", scale), ("box", box)):
            if value is not None and not (isinstance(value, int | float) and 0 < value < float("inf")):
                raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive finite number")
        if not (isinstance(selection_fraction, int | float) and 0 < selection_fraction <= 1):
            raise ConfigError(f"selection_fraction={selection_fraction!r} is not allowed: it must be in (0, 1]")
        if safeguard and selection_fraction == 1:
            raise ConfigError("safeguard=True needs a held-out set: selection_fraction=1 leaves none (use < 1, "
                              "or safeguard=False)")
        if select is None and regex is None and module_type is None and not hyperparameters:
            raise ConfigError("nothing to retrofit: give select, regex or module_type (parameters), or "
                              "hyperparameters=True")
        self.select = select
        self.regex = regex
        self.module_type = module_type
        self.mode = mode
        self.granularity = granularity
        self.scale = float(scale)
        self.box = box
        self.hyperparameters = hyperparameters
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.selection_fraction = float(selection_fraction)
        self.batch_size = batch_size
        self.cache_batches = cache_batches

    def build_space(self, pl_module: LightningModule) -> SearchSpace:
        parts: dict[str, Any] = {}
        if self.select is not None or self.regex is not None or self.module_type is not None:
            parts["parameters"] = ParameterSpace(
                pl_module, select=self.select, regex=self.regex, module_type=self.module_type, mode=self.mode,
                granularity=self.granularity, scale=self.scale, box=self.box)
        if self.hyperparameters:
            declare = getattr(pl_module, "retrofit_hyperparameters", None)
            hp = declare() if callable(declare) else None
            if not isinstance(hp, HyperParameters):
                raise ConfigError(f"hyperparameters=True needs {type(pl_module).__name__}.retrofit_hyperparameters() "
                                  f"returning a litlab.evolution.HyperParameters; got {type(hp).__name__}")
            parts["hyperparameters"] = hp
        return SearchSpace(parts)

    def build_fitness(self, trainer: Trainer, pl_module: LightningModule) -> Fitness:
        return make_fitness(self.metric, pl_module, trainer.precision_plugin.forward_context, self.higher_is_better)

    def evaluation_data(self, trainer: Trainer, pl_module: LightningModule, limit: int) -> EvaluationData:
        loader = validation_loader(trainer, type(self).__name__)
        selection_idx, heldout_idx = fraction_split(len(loader.dataset), self.selection_fraction, self.seed)
        cache = self.cache_batches
        selection = device_batches(trainer, subset_loader(loader, selection_idx, self.batch_size), limit, cache)
        held = device_batches(trainer, subset_loader(loader, heldout_idx, self.batch_size), limit, cache) \
            if heldout_idx.size else None
        return EvaluationData(selection, held, int(selection_idx.size), int(heldout_idx.size))

    def fitness_name(self) -> str:
        return self.metric

    def report_extras(self) -> dict[str, Any]:
        return {"metric": self.metric}
