"""`EvolutionCallback`: what every evolutionary callback (AfterLearnER, BBoxER, EPPO) needs once.

A subclass says *what* is searched and *how* a candidate is scored (:meth:`EvolutionCallback.build_space`,
:meth:`~EvolutionCallback.build_fitness`, :meth:`~EvolutionCallback.evaluation_data`); this base runs the
search with the :class:`~litlab.evolution.EvolutionEngine` and does the Lightning plumbing around it.

When it runs. In ``on_fit_end``. Checked in Lightning 2.6.6 (``Trainer._run``): the order after the loops is
``strategy.teardown()`` → ``on_fit_end`` → ``teardown`` hooks → ``logger.finalize``. ``DDPStrategy.teardown``
only unwraps the ``DistributedDataParallel`` wrapper, reverts SyncBatchNorm, moves the module and optimizer
states to the CPU and deletes ``WORLD_SIZE`` from the environment; it does *not* destroy the process group
(Lightning destroys it only in an ``atexit`` handler registered for NCCL), so collectives still work in
``on_fit_end``. Compared with ``on_train_end`` (inside the fit loop, model still wrapped), every checkpoint of
the *trained* model has been written and callbacks such as ``EMAWeightAveraging`` have put their final weights
in place; the trained and the evolved model stay separate files. The module is moved to
``trainer.strategy.root_device`` for the search and back afterwards. Inside :meth:`EvolutionCallback.in_validate`
(what ``litlab retrofit`` uses), ``trainer.validate`` runs the same search from a checkpoint without training,
at ``on_validation_end``, outside ``torch.inference_mode``. :meth:`EvolutionCallback.run` can also be called
directly on a fitted trainer.

Every rank runs the engine with the same seed on its shard of the selection set (the engine reduces the
fitness over ranks, so all ranks ask and tell the same candidates and end with the same weights); rank 0 shows
the progress bar and writes the files under ``output_dir`` (default: ``<log dir>/<log_prefix>``):

- ``<weights_name>``: the evolved weights, via ``trainer.save_checkpoint(weights_only=True)`` (all ranks call
  it, rank 0 writes; ``ModelCheckpoint`` has already run and never sees them); none when ``weights_name`` is
  None (a search that changes no weights, e.g. EPPO's pre-prompt);
- ``report.json``: the engine's report (selection and held-out scores before and after, best candidate,
  history, bits, generalization gap, NaN count) plus ``kept`` and the sizes of the two parts;
- ``fitness.png``: the fitness curve; ``state.pt``: the engine's state every ``checkpoint_every`` evaluations;
- whatever :meth:`EvolutionCallback.after_search` writes (it also adds entries to ``report.json``).

The summary (``<log_prefix>/selection_before`` ... ``<log_prefix>/generalization_gap``) goes to every logger
with ``logger.log_metrics`` (``self.log`` is refused after fit).

Safeguard (:mod:`litlab.evolution.safeguard`): with ``safeguard``, the best candidate is kept only if its
held-out score is not worse than the trained model's; otherwise the trained weights stay.

Resume. A run interrupted during the search continues where it stopped, with the same final result as an
uninterrupted one, from either (a) ``<output_dir>/state.pt`` when the search starts again with the same
``output_dir`` (set it explicitly: the default lies in the logger's version directory, which is new for every
run) and ``resume=True``; or (b) the callback's state in a Lightning checkpoint (:meth:`state_dict` holds the
engine's state: the current one, or after an interruption inside a step, the last one written to ``state.pt``),
which ``trainer.fit/validate(ckpt_path=...)`` restores. A state whose search finished and whose result was
applied to the weights it was saved with is not applied twice: the search is skipped. Under ``fast_dev_run``
the search is a smoke test (budget 2, ``fast_dev_run`` batches per part, no files, no resume).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from litlab.errors import ConfigError, check_int
from litlab.evolution import EvolutionEngine, EvolutionResult, Fitness, SearchSpace
from litlab.evolution.feedback import FEEDBACKS
from litlab.evolution.optimizer import check_optimizer_name
from litlab.evolution.safeguard import safeguard_keeps
from litlab.evolution.state import load_state


@dataclass
class EvaluationData:
    """What a search is scored on: this rank's selection batches, held-out batches (None: no held-out set) and
    the sizes of the two parts over all ranks."""

    selection: Any
    heldout: Any | None
    selection_size: int
    heldout_size: int


class EvolutionCallback(Callback, ABC):
    """Base of the callbacks that evolve a trained model after ``fit`` with the evolution engine.

    Args:
        optimizer: nevergrad optimizer name (``OnePlusOne``, ``DiscreteLenglerOnePlusOne``, ``NGOpt``, ...).
        budget: Evaluations of the fitness on the selection set, the unmodified model included (>= 1).
        num_workers: Candidates asked, evaluated and told together per step (the optimizer's population).
        seed: Seed of the optimizer and of the selection/held-out split (identical on every rank).
        feedback: ``comparison`` (the optimizer learns only which candidate is better: few bits, a small
            generalization gap) or ``value`` (the exact fitness is told).
        safeguard: Keep the evolved model only if its held-out score is not worse than the trained model's.
        checkpoint_every: Evaluations between two writes of the engine's state (``state.pt``).
        resume: Continue from ``<output_dir>/state.pt`` when it exists.
        output_dir: Directory of the files (default: ``<log dir>/<log_prefix>``).
        delta: Failure probability of the reported generalization gap, in ``(0, 1)``.
        progress_bar: Show a rank-0 progress bar (default: when the trainer shows one).
    """

    log_prefix = "evolution"
    """Prefix of the logged metrics and name of the default output directory."""
    weights_name: str | None = "evolved.ckpt"
    """File name of the evolved weights in the output directory (None: the search changes no weights; none
    written)."""

    def __init__(
        self,
        optimizer: str = "OnePlusOne",
        budget: int = 100,
        num_workers: int = 1,
        seed: int = 0,
        feedback: str = "comparison",
        safeguard: bool = True,
        checkpoint_every: int = 10,
        resume: bool = True,
        output_dir: str | None = None,
        delta: float = 0.05,
        progress_bar: bool | None = None,
    ) -> None:
        check_optimizer_name(optimizer)
        if feedback not in FEEDBACKS:
            raise ConfigError(f"feedback={feedback!r} is not allowed: choose one of {list(FEEDBACKS)}")
        for key, value, low in (("budget", budget, 1), ("num_workers", num_workers, 1), ("seed", seed, 0),
                                ("checkpoint_every", checkpoint_every, 1)):
            check_int(key, value, low)
        if not (isinstance(delta, int | float) and 0 < delta < 1):
            raise ConfigError(f"delta={delta!r} is not allowed: it must be in (0, 1)")
        self.optimizer = optimizer
        self.budget = budget
        self.num_workers = num_workers
        self.seed = seed
        self.feedback = feedback
        self.safeguard = safeguard
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

    # ------------------------------------------------------------------ to be defined by subclasses
    @abstractmethod
    def build_space(self, pl_module: LightningModule) -> SearchSpace:
        """The search space over ``pl_module`` (its parameters, hyperparameters it declares, ...)."""

    @abstractmethod
    def build_fitness(self, trainer: Trainer, pl_module: LightningModule) -> Fitness:
        """The fitness a candidate is scored with (on the selection batches, and on the held-out ones)."""

    @abstractmethod
    def evaluation_data(self, trainer: Trainer, pl_module: LightningModule, limit: int) -> EvaluationData:
        """The selection and held-out batches, on the device (``limit`` > 0: at most that many batches each)."""

    def fitness_name(self) -> str:
        """The name of the fitness metric in messages (e.g. ``top1``)."""
        return "fitness"

    def report_extras(self) -> dict[str, Any]:
        """Entries added to ``report.json`` (e.g. the metric's name)."""
        return {}

    def after_search(self, trainer: Trainer, pl_module: LightningModule, result: EvolutionResult,
                     data: EvaluationData, out: Path | None) -> dict[str, Any]:
        """Called on every rank once the best candidate is kept or vetoed (``self.kept``), before the report is
        written: baselines, extra evaluations, the subclass's own files under ``out`` (rank 0; None under
        ``fast_dev_run``: write nothing), added to :attr:`paths`. Returns entries added to ``report.json``."""
        return {}

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
        """Runs the search on ``pl_module``, then saves and logs the result.

        Call it on every rank (it is a collective under DDP). Returns the engine's result (None when skipped).
        """
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        out = Path(self.output_dir) if self.output_dir else \
            Path(log_dir or trainer.default_root_dir) / self.log_prefix
        if self._loaded is not None and self._loaded.get("applied"):
            self._loaded = None
            rank_zero_info(f"{type(self).__name__}: the loaded checkpoint holds a finished, applied search; skipped")
            return None
        previous = pl_module.device
        pl_module.to(trainer.strategy.root_device)
        try:
            return self._search(trainer, pl_module, out, smoke=bool(trainer.fast_dev_run))
        finally:
            pl_module.to(previous)

    def _search(self, trainer: Trainer, pl_module: LightningModule, out: Path, smoke: bool) -> EvolutionResult:
        self.paths = {}
        space = self.build_space(pl_module)
        data = self.evaluation_data(trainer, pl_module, int(trainer.fast_dev_run) if smoke else 0)
        fitness = self.build_fitness(trainer, pl_module)
        held = data.heldout
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
            result = engine.run(data.selection)
        except ConfigError as err:
            if engine.num_evaluations == 0:
                raise ConfigError(f"metric={self.fitness_name()!r} on the selection set: {err}") from err
            raise
        self.kept = safeguard_keeps(result) if self.safeguard else True
        if self.kept:
            space.apply(result.best)
        self._applied = self.kept
        self.result = result
        extras = self.after_search(trainer, pl_module, result, data, None if smoke else out)
        report = {**result.to_dict(), **self.report_extras(), **extras, "safeguard": self.safeguard,
                  "kept": self.kept, "selection_size": data.selection_size, "heldout_size": data.heldout_size,
                  "world_size": trainer.world_size, "resumed_at_evaluation": resumed}
        if not smoke:
            self._save(trainer, out, result, report)
        self._log(trainer, result)
        return result

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
            raise ConfigError(f"cannot resume the search from {source}: {err}; delete it or set resume=False") \
                from err
        rank_zero_info(f"{type(self).__name__}: resuming at evaluation {engine.num_evaluations} from {source}")
        return engine.num_evaluations

    def _show_progress(self, trainer: Trainer) -> bool:
        return self.progress_bar if self.progress_bar is not None else trainer.progress_bar_callback is not None

    def _save(self, trainer: Trainer, out: Path, result: EvolutionResult, report: dict[str, Any]) -> None:
        if self.weights_name is not None:
            weights = out / self.weights_name
            trainer.save_checkpoint(weights, weights_only=True)  # every rank calls it; rank 0 writes
            self.paths["weights"] = report["weights"] = str(weights)
        self.paths.update({"report": str(out / "report.json"), "plot": str(out / "fitness.png"),
                           "state": str(out / "state.pt")})
        if trainer.is_global_zero:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            result.plot(out / "fitness.png")

    def _log(self, trainer: Trainer, result: EvolutionResult) -> None:
        values = {"selection_before": result.selection_before, "selection_after": result.selection_after,
                  "heldout_before": result.heldout_before, "heldout_after": result.heldout_after,
                  "bits": result.bits, "generalization_gap": result.generalization_gap,
                  "kept": float(bool(self.kept)), "nan_count": result.nan_count, "evaluations": result.num_evaluations}
        metrics = {f"{self.log_prefix}/{key}": float(value) for key, value in values.items() if value is not None}
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        held = "" if result.heldout_before is None else \
            f", held-out {result.heldout_before:.4f} -> {result.heldout_after:.4f}"
        gap = "" if result.generalization_gap is None else \
            f"; gap bound {result.generalization_gap:.3f} ({result.bits:.0f} bits, n={result.num_examples}, " \
            f"delta={result.delta})"
        rank_zero_info(f"{type(self).__name__}: {self.fitness_name()} on selection {result.selection_before:.4f} -> "
                       f"{result.selection_after:.4f}{held} ({'kept' if self.kept else 'restored by the safeguard'})"
                       f"{gap}; {result.num_evaluations} evaluations, {result.nan_count} NaN"
                       + (f"; report {self.paths['report']}" if self.paths else ""))
