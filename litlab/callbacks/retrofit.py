"""`EvolutionaryRetrofit`: AfterLearnER (METHODS §5) as a Lightning callback that runs after ``fit``.

After training, a seeded nevergrad optimizer changes a few chosen parameters (per-class logit biases, norm or
expert scales, ...; :class:`~litlab.evolution.ParameterSpace`) and/or hyperparameters the LightningModule
declares (:class:`~litlab.evolution.HyperParameters`) against the exact, possibly non-differentiable metric
(:mod:`litlab.callbacks.retrofit_metrics`) on the *selection* part of the validation set; the rest of the
validation set (*held-out*, :mod:`litlab.callbacks.retrofit_data`) only reports the result and, with
``safeguard``, vetoes it. The engine (:class:`~litlab.evolution.EvolutionEngine`) suggests the identity first,
so the result is never worse than the trained model on the selection set, and reports the information told to
the optimizer (bits) and the generalization bound ``sqrt((bits·ln2 + ln(2/δ)) / (2n))``.

When it runs. In ``on_fit_end``. Checked in Lightning 2.6.6 (``Trainer._run``): the order after the loops is
``strategy.teardown()`` → ``on_fit_end`` → ``teardown`` hooks → ``logger.finalize``. ``DDPStrategy.teardown``
only unwraps the ``DistributedDataParallel`` wrapper, reverts SyncBatchNorm, moves the module and optimizer
states to the CPU and deletes ``WORLD_SIZE`` from the environment; it does *not* destroy the process group
(Lightning destroys it only in an ``atexit`` handler registered for NCCL), so collectives still work in
``on_fit_end``. Compared with ``on_train_end`` (inside the fit loop, model still wrapped), every checkpoint of
the *trained* model has been written and callbacks such as ``EMAWeightAveraging`` have put their final weights
in place; the trained and the retrofitted model stay separate files. The callback moves the module to
``trainer.strategy.root_device`` for the search and back afterwards. ``litlab retrofit`` (and
:meth:`litlab.cli.LitlabTrainer.retrofit`) runs the same search from a checkpoint without training: inside
``trainer.validate`` (which loads the checkpoint, sets up the data and, under DDP, the processes), at
``on_validation_end``, outside ``torch.inference_mode``. :meth:`EvolutionaryRetrofit.run` can also be called
directly on a fitted trainer.

Every rank runs the engine with the same seed on its shard of the selection set (the engine reduces the
fitness over ranks, so all ranks ask and tell the same candidates and end with the same weights); rank 0 shows
the progress bar and writes the files:

- ``<output_dir>/retrofitted.ckpt``: the retrofitted weights, via ``trainer.save_checkpoint(weights_only=True)``
  (safe at this point on every strategy: all ranks call it, rank 0 writes; ``ModelCheckpoint`` has already run
  and never sees the retrofitted weights). Load it with ``YourModule.load_from_checkpoint(path)``.
- ``<output_dir>/report.json``: the engine's report (selection and held-out scores before and after, best
  candidate, history, bits, bound, NaN count) plus ``metric``, ``kept``, the sizes of the two parts.
- ``<output_dir>/fitness.png``: the fitness curve.
- ``<output_dir>/state.pt``: the engine's state every ``checkpoint_every`` evaluations.

The summary (``retrofit/selection_before`` ... ``retrofit/bound``) goes to every logger with
``logger.log_metrics`` (``self.log`` is refused after fit).

Resume. A run interrupted during the search continues where it stopped, with the same final result as an
uninterrupted one, from either (a) ``<output_dir>/state.pt`` when the search starts again with the same
``output_dir`` (set it explicitly: the default lies in the logger's version directory, which is new for every
run) and ``resume=True``; or (b) the callback's state in a Lightning checkpoint (:meth:`state_dict` holds the
engine's state: the current one, or after an interruption inside a step, the last one written to ``state.pt``),
which ``trainer.fit/validate(ckpt_path=...)`` and ``litlab retrofit --ckpt_path`` restore. A state whose search
finished and whose result was applied to the weights it was saved with is not applied twice: the search is
skipped. Under ``fast_dev_run`` the search is a smoke test (budget 2, ``fast_dev_run`` batches per part, no
files, no resume).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from litlab.callbacks.retrofit_data import (
    split_indices,
    subset_loader,
    validation_loader,
)
from litlab.callbacks.retrofit_metrics import METRICS, make_fitness
from litlab.errors import ConfigError
from litlab.evolution import (
    EvolutionEngine,
    EvolutionResult,
    HyperParameters,
    ParameterSpace,
    SearchSpace,
)
from litlab.evolution.optimizer import check_optimizer_name
from litlab.evolution.parameter_space import GRANULARITIES, MODES
from litlab.evolution.state import load_state

FEEDBACKS = ("value", "comparison")


class EvolutionaryRetrofit(Callback):
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
        bound: If given, ``x`` stays in ``[-bound, bound]``.
        hyperparameters: Also search the hyperparameters of ``pl_module.retrofit_hyperparameters()`` (a
            :class:`~litlab.evolution.HyperParameters` that the module's forward or metric reads).
        optimizer: nevergrad optimizer name: ``OnePlusOne`` (one bit per evaluation with comparison feedback),
            ``DiscreteLenglerOnePlusOne``, ``NGOpt``, ``DiagonalCMA``, ...
        budget: Evaluations of the metric on the selection set, the unmodified model included (>= 1).
        num_workers: Candidates asked, evaluated and told together per step (the optimizer's population, not
            data-loading processes).
        seed: Seed of the optimizer and of the selection/held-out split (identical on every rank).
        feedback: ``comparison`` (the optimizer learns only which candidate is better: few bits, a tight bound) or
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
        delta: Failure probability of the reported generalization bound, in ``(0, 1)``.
        progress_bar: Show a progress bar on rank 0 (default: when the trainer shows one).
    """

    def __init__(
        self,
        select: str | list[str] | None = None,
        regex: str | None = None,
        module_type: str | list[str] | None = None,
        mode: Literal["multiplicative", "additive"] = "multiplicative",
        granularity: Literal["tensor", "channel", "entry"] = "tensor",
        scale: float = 0.01,
        bound: float | None = None,
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
        check_optimizer_name(optimizer)
        for key, value, allowed in (("mode", mode, MODES), ("granularity", granularity, GRANULARITIES),
                                    ("feedback", feedback, FEEDBACKS), ("metric", metric, METRICS)):
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not allowed: choose one of {list(allowed)}")
        for key, value, low in (("budget", budget, 1), ("num_workers", num_workers, 1), ("seed", seed, 0),
                                ("checkpoint_every", checkpoint_every, 1), ("batch_size", batch_size, 1)):
            if key == "batch_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer >= {low}")
        for key, value in (("scale", scale), ("bound", bound)):
            if value is not None and not (isinstance(value, int | float) and 0 < value < float("inf")):
                raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive finite number")
        if not (isinstance(selection_fraction, int | float) and 0 < selection_fraction <= 1):
            raise ConfigError(f"selection_fraction={selection_fraction!r} is not allowed: it must be in (0, 1]")
        if safeguard and selection_fraction == 1:
            raise ConfigError("safeguard=True needs a held-out set: selection_fraction=1 leaves none (use < 1, "
                              "or safeguard=False)")
        if not (isinstance(delta, int | float) and 0 < delta < 1):
            raise ConfigError(f"delta={delta!r} is not allowed: it must be in (0, 1)")
        if select is None and regex is None and module_type is None and not hyperparameters:
            raise ConfigError("nothing to retrofit: give select, regex or module_type (parameters), or "
                              "hyperparameters=True")
        self.select = select
        self.regex = regex
        self.module_type = module_type
        self.mode = mode
        self.granularity = granularity
        self.scale = float(scale)
        self.bound = bound
        self.hyperparameters = hyperparameters
        self.optimizer = optimizer
        self.budget = budget
        self.num_workers = num_workers
        self.seed = seed
        self.feedback = feedback
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.selection_fraction = float(selection_fraction)
        self.safeguard = safeguard
        self.batch_size = batch_size
        self.cache_batches = cache_batches
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.output_dir = output_dir
        self.delta = float(delta)
        self.progress_bar = progress_bar
        self.result: EvolutionResult | None = None
        """The engine's result of the last search (None before)."""
        self.kept: bool | None = None
        """Whether the last search's best candidate was kept (False when the safeguard restored the model)."""
        self.paths: dict[str, str] = {}
        """Files written by the last search: ``weights``, ``report``, ``plot``, ``state``."""
        self._engine: EvolutionEngine | None = None
        self._loaded: dict[str, Any] | None = None
        self._applied = False
        self._in_validate = False

    # ------------------------------------------------------------------ hooks

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.run(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._in_validate and trainer.state.fn == TrainerFn.VALIDATING:
            with torch.inference_mode(False):  # the candidates are written into the parameters in place
                self.run(trainer, pl_module)

    @contextmanager
    def in_validate(self) -> Iterator[None]:
        """While active, ``trainer.validate`` runs the search after its loop (what ``litlab retrofit`` uses)."""
        self._in_validate = True
        try:
            yield
        finally:
            self._in_validate = False

    def state_dict(self) -> dict[str, Any]:
        if self._engine is None:
            return dict(self._loaded) if self._loaded else {}
        try:
            engine = self._engine.state_dict()
        except RuntimeError:  # interrupted inside a step: the last state the run wrote
            path = self._engine.checkpoint_path
            engine = load_state(path) if path is not None and path.exists() else None
        return {"engine": engine, "applied": self._applied} if engine is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict) if state_dict and state_dict.get("engine") else None

    # ------------------------------------------------------------------ the search

    def run(self, trainer: Trainer, pl_module: LightningModule) -> EvolutionResult | None:
        """Runs the search on ``pl_module`` with the trainer's validation data, saves and logs the result.

        Call it on every rank (it is a collective under DDP). Returns the engine's result (None when skipped).
        """
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        out = Path(self.output_dir) if self.output_dir else Path(log_dir or trainer.default_root_dir) / "retrofit"
        if self._loaded is not None and self._loaded.get("applied"):
            self._loaded = None
            rank_zero_info("EvolutionaryRetrofit: the loaded checkpoint holds a finished, applied retrofit; skipped")
            return None
        previous = pl_module.device
        pl_module.to(trainer.strategy.root_device)
        try:
            return self._search(trainer, pl_module, out, smoke=bool(trainer.fast_dev_run))
        finally:
            pl_module.to(previous)

    def _search(self, trainer: Trainer, pl_module: LightningModule, out: Path, smoke: bool) -> EvolutionResult:
        self.paths = {}
        space = self._space(pl_module)
        loader = validation_loader(trainer)
        selection_idx, heldout_idx = split_indices(len(loader.dataset), self.selection_fraction, self.seed)
        limit = int(trainer.fast_dev_run) if smoke else 0
        selection = self._batches(trainer, subset_loader(loader, selection_idx, self.batch_size), limit)
        held = self._batches(trainer, subset_loader(loader, heldout_idx, self.batch_size), limit) \
            if heldout_idx.size else None
        fitness = make_fitness(self.metric, pl_module, trainer.precision_plugin.forward_context, self.higher_is_better)
        engine = EvolutionEngine(
            pl_module, space, fitness, optimizer=self.optimizer, budget=min(self.budget, 2) if smoke else self.budget,
            num_workers=self.num_workers, seed=self.seed, feedback=self.feedback,
            heldout=None if held is None else (lambda model: fitness.evaluate(model, held).value),
            checkpoint_path=None if smoke else out / "state.pt", checkpoint_every=self.checkpoint_every,
            resume=False, apply_best=False, delta=self.delta, progress_bar=self._show_progress(trainer),
        )
        resumed = self._resume(trainer, engine, smoke)
        self._engine, self._applied, self.kept = engine, False, None
        try:
            result = engine.run(selection)
        except ConfigError as err:
            if engine.num_evaluations == 0:
                raise ConfigError(f"metric={self.metric!r} on the selection set: {err}") from err
            raise
        self.kept = self._keep(result, fitness.score)
        if self.kept:
            space.apply(result.best)
        self._applied = self.kept
        self.result = result
        report = {**result.to_dict(), "metric": self.metric, "safeguard": self.safeguard, "kept": self.kept,
                  "selection_size": int(selection_idx.size), "heldout_size": int(heldout_idx.size),
                  "world_size": trainer.world_size, "resumed_at_evaluation": resumed}
        if not smoke:
            self._save(trainer, out, result, report)
        self._log(trainer, result)
        return result

    def _space(self, pl_module: LightningModule) -> SearchSpace:
        parts: dict[str, Any] = {}
        if self.select is not None or self.regex is not None or self.module_type is not None:
            parts["parameters"] = ParameterSpace(
                pl_module, select=self.select, regex=self.regex, module_type=self.module_type, mode=self.mode,
                granularity=self.granularity, scale=self.scale, bound=self.bound)
        if self.hyperparameters:
            declare = getattr(pl_module, "retrofit_hyperparameters", None)
            hp = declare() if callable(declare) else None
            if not isinstance(hp, HyperParameters):
                raise ConfigError(f"hyperparameters=True needs {type(pl_module).__name__}.retrofit_hyperparameters() "
                                  f"returning a litlab.evolution.HyperParameters; got {type(hp).__name__}")
            parts["hyperparameters"] = hp
        return SearchSpace(parts)

    def _batches(self, trainer: Trainer, loader: DataLoader, limit: int) -> Any:
        """The loader's batches on the device: a list (cached, or the first ``limit``), else a re-iterable."""
        if not (self.cache_batches or limit):
            return _OnDevice(loader, trainer)
        batches = []
        for index, batch in enumerate(loader):
            if limit and index >= limit:
                break
            batches.append(trainer.strategy.batch_to_device(batch))
        return batches

    def _resume(self, trainer: Trainer, engine: EvolutionEngine, smoke: bool) -> int | None:
        """Loads the state to continue from (the Lightning checkpoint's, else the state file); its evaluations."""
        state, source = None, None
        if self._loaded is not None and not smoke:
            state, source = self._loaded["engine"], "the callback state of the loaded checkpoint"
        elif self.resume and not smoke and engine.checkpoint_path is not None:
            path = engine.checkpoint_path
            state = load_state(path) if trainer.is_global_zero and path.exists() else None
            state, source = trainer.strategy.broadcast(state), str(path)  # rank 0's file decides for every rank
        self._loaded = None
        if state is None:
            return None
        try:
            engine.load_state_dict(state)
        except ConfigError as err:
            raise ConfigError(f"cannot resume the retrofit from {source}: {err}; delete it or set resume=False") \
                from err
        rank_zero_info(f"EvolutionaryRetrofit: resuming at evaluation {engine.num_evaluations} from {source}")
        return engine.num_evaluations

    def _keep(self, result: EvolutionResult, score: Any) -> bool:
        if not self.safeguard or result.heldout_before is None or result.heldout_after is None:
            return True
        return bool(score(result.heldout_after) >= score(result.heldout_before))  # NaN after: not kept

    def _show_progress(self, trainer: Trainer) -> bool:
        return self.progress_bar if self.progress_bar is not None else trainer.progress_bar_callback is not None

    def _save(self, trainer: Trainer, out: Path, result: EvolutionResult, report: dict[str, Any]) -> None:
        weights = out / "retrofitted.ckpt"
        trainer.save_checkpoint(weights, weights_only=True)  # every rank calls it; rank 0 writes
        self.paths = {"weights": str(weights), "report": str(out / "report.json"), "plot": str(out / "fitness.png"),
                      "state": str(out / "state.pt")}
        if trainer.is_global_zero:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_text(json.dumps({**report, "weights": str(weights)}, indent=1) + "\n")
            result.plot(out / "fitness.png")

    def _log(self, trainer: Trainer, result: EvolutionResult) -> None:
        values = {"selection_before": result.selection_before, "selection_after": result.selection_after,
                  "heldout_before": result.heldout_before, "heldout_after": result.heldout_after,
                  "bits": result.bits, "bound": result.bound, "kept": float(bool(self.kept)),
                  "nan_count": result.nan_count, "evaluations": result.num_evaluations}
        metrics = {f"retrofit/{key}": float(value) for key, value in values.items() if value is not None}
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        held = "" if result.heldout_before is None else \
            f", held-out {result.heldout_before:.4f} -> {result.heldout_after:.4f}"
        bound = "" if result.bound is None else f"; gap bound {result.bound:.3f} ({result.bits:.0f} bits, " \
            f"n={result.num_examples}, delta={result.delta})"
        rank_zero_info(f"EvolutionaryRetrofit: {self.metric} on selection {result.selection_before:.4f} -> "
                       f"{result.selection_after:.4f}{held} ({'kept' if self.kept else 'restored by the safeguard'})"
                       f"{bound}; {result.num_evaluations} evaluations, {result.nan_count} NaN"
                       + (f"; report {self.paths['report']}" if self.paths else ""))


class _OnDevice:
    """Re-iterable batches of a loader, each moved to the strategy's device when read."""

    def __init__(self, loader: DataLoader, trainer: Trainer) -> None:
        self.loader = loader
        self.trainer = trainer

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield self.trainer.strategy.batch_to_device(batch)
