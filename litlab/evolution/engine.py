"""`EvolutionEngine`: the seeded ask/tell loop of AfterLearnER, BBoxER and EPPO.

One step asks ``num_workers`` candidates (fewer at the end of the budget), evaluates each on the selection
set (candidate applied in place under ``no_grad``, then restored), and tells them all. The identity is
suggested first, so evaluation 0 is the unmodified model and the result is never worse than it on the
selection set. The best candidate is the best *evaluated* one (strictly better replaces it), not nevergrad's
recommendation (which may be an unevaluated mean); in comparison mode this is the incumbent the optimizer
was told about, so the returned model is a function of the told bits only.

The loop runs inside ``space.session()``: the tensors a candidate touches are copied once, on first touch,
and every evaluation writes ``original·exp(x)`` from that copy and copies it back; the model must not be
changed by anything else during :meth:`~EvolutionEngine.run`.

Determinism: nevergrad's randomness is seeded by ``seed`` (and travels in the optimizer's pickle); with
``seed_evaluations`` every evaluation runs under ``torch.random.fork_rng`` seeded by ``seed`` (common random
numbers for a stochastic fitness, and the caller's torch RNG is left untouched). Same seed, same candidates,
same result.

Checkpoints: after each step in which ``checkpoint_every`` evaluations have accumulated (and after the last
one), rank 0 writes :meth:`~EvolutionEngine.state_dict` atomically to ``checkpoint_path``. Checkpoints are
taken between steps, so no candidate is asked-but-not-told in a checkpoint: after a crash the interrupted
step is asked again from the saved optimizer (same random state, same candidates) and re-evaluated, which
gives exactly the result of an uninterrupted run. Within one process, ``run`` called again after an
exception re-evaluates the pending candidates.

Distributed (``torch.distributed`` initialized, e.g. under Lightning DDP): each rank passes its own shard of
the selection set; scores are reduced over ranks (see :class:`~litlab.evolution.Fitness`), every rank makes
the same ask/tell calls and ends with the same result; only rank 0 writes files.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.evolution import distributed
from litlab.evolution.bounds import generalization_gap
from litlab.evolution.feedback import FEEDBACKS, is_valid, make_feedback
from litlab.evolution.fitness import Fitness, FitnessValue
from litlab.evolution.optimizer import check_optimizer_name, make_optimizer
from litlab.evolution.report import EvolutionResult
from litlab.evolution.search_space import SearchSpace, SpacePart
from litlab.evolution.state import load_state, save_state

STATE_VERSION = 1


class EvolutionEngine:
    """Optimizes a search space over a model against a fitness with a seeded nevergrad optimizer.

    Args:
        model: The model the space's parts change and the fitness evaluates (put in eval mode during the
            run; its training flag is restored afterwards).
        space: The search space (a single part is accepted and named ``"x"``).
        fitness: A :class:`Fitness`, or a callable ``fn(model, batch) -> per-example scores`` (higher is better).
        optimizer: A nevergrad optimizer name (``ng.optimizers.registry``).
        budget: Number of evaluations, the identity included (``>= 1``).
        num_workers: Candidates asked, then evaluated, then told together per step (a population).
        seed: Seed of the optimizer (and of each evaluation's torch RNG with ``seed_evaluations``).
        feedback: ``"value"`` (the exact fitness is told) or ``"comparison"`` (only the ranking of each step's
            candidates and the best so far; see :mod:`litlab.evolution.feedback`).
        heldout: ``heldout(model) -> float``, evaluated on the identity and on the best candidate.
        checkpoint_path: File that receives the state every ``checkpoint_every`` evaluations (rank 0).
        checkpoint_every: Evaluations between checkpoints (at the end of the step that reaches them).
        resume: Continue from ``checkpoint_path`` when it exists at the start of :meth:`run`.
        apply_best: Leave the best candidate applied to the model (and the parts' values) after :meth:`run`.
        delta: Failure probability of the reported generalization bound.
        seed_evaluations: Run each evaluation under a forked torch RNG seeded with ``seed``.
        progress_bar: Show a rank-0 progress bar (tqdm).
        on_evaluation: Called with each history record (``index``, ``step``, ``fitness``, ``best``, ``nan``),
            on every rank (e.g. to log metrics).
    """

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace | SpacePart,
        fitness: Fitness | Callable[[nn.Module, Any], Any],
        optimizer: str = "NGOpt",
        budget: int = 100,
        num_workers: int = 1,
        seed: int = 0,
        feedback: str = "value",
        heldout: Callable[[nn.Module], float] | None = None,
        checkpoint_path: str | Path | None = None,
        checkpoint_every: int = 10,
        resume: bool = True,
        apply_best: bool = True,
        delta: float = 0.05,
        seed_evaluations: bool = True,
        progress_bar: bool = False,
        on_evaluation: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(space, SpacePart):
            space = SearchSpace(space)
        if not isinstance(space, SearchSpace):
            raise ConfigError(f"space must be a SearchSpace or a SpacePart, got {type(space).__name__}")
        if not isinstance(fitness, Fitness):
            fitness = Fitness(fitness)
        check_optimizer_name(optimizer)
        for key, value, low in (("budget", budget, 1), ("num_workers", num_workers, 1), ("seed", seed, 0),
                                ("checkpoint_every", checkpoint_every, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
        if feedback not in FEEDBACKS:
            raise ConfigError(f"feedback must be one of {FEEDBACKS}, got {feedback!r}")
        if heldout is not None and not callable(heldout):
            raise ConfigError(f"heldout must be callable as heldout(model) -> float, or None, got {heldout!r}")
        if not (isinstance(delta, int | float) and 0 < delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
        owned = {id(p) for p in model.parameters()}
        foreign = [p for p in space.parameters() if id(p) not in owned]
        if foreign:
            raise ConfigError(f"space changes {len(foreign)} tensor(s) that are not parameters of the given model")
        self.model = model
        self.space = space
        self.fitness = fitness
        self.optimizer_name = optimizer
        self.budget = budget
        self.num_workers = num_workers
        self.seed = seed
        self.feedback = feedback
        self.heldout = heldout
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.apply_best = apply_best
        self.delta = float(delta)
        self.seed_evaluations = seed_evaluations
        self.progress_bar = progress_bar
        self.on_evaluation = on_evaluation
        self._reset()

    def _reset(self) -> None:
        self._optimizer: Any = None
        self._pending: list[Any] = []
        self._pending_values: list[dict[str, Any]] = []
        self._feedback = make_feedback(self.feedback)
        self.history: list[dict[str, Any]] = []
        self.num_evaluations = 0
        self.num_steps = 0
        self.nan_count = 0
        self.bits: float | None = 0.0
        self.num_examples: int | None = None
        self.selection_before: float | None = None
        self.heldout_before: float | None = None
        self.heldout_after: float | None = None
        self.seconds_total = 0.0
        self.seconds_fitness = 0.0
        self._best_value: dict[str, Any] | None = None
        self._best_score: float | None = None
        self._best_index = -1
        self._best_applied = False
        self._last_checkpoint = 0

    # ------------------------------------------------------------------ ask / evaluate / tell

    @property
    def done(self) -> bool:
        """Whether the budget is spent."""
        return self.num_evaluations >= self.budget

    def ask(self) -> list[dict[str, Any]]:
        """The next step's candidates (the pending ones again if the last step was not told)."""
        if self._pending:
            return list(self._pending_values)
        if self.done:
            return []
        if self._optimizer is None:
            self._optimizer = make_optimizer(self.optimizer_name, self.space.parametrization(), self.budget,
                                             self.num_workers, self.seed)
            self._optimizer.suggest(self.space.encode(self.space.identity()))
        count = min(self.num_workers, self.budget - self.num_evaluations)
        self._pending = [self._optimizer.ask() for _ in range(count)]
        self._pending_values = [self.space.decode(candidate.value) for candidate in self._pending]
        if self.num_evaluations == 0:
            if not self.space.is_identity(self._pending_values[0]):
                raise RuntimeError(f"optimizer {self.optimizer_name} did not ask the suggested identity first")
            self._pending_values[0] = self.space.identity()  # exact defaults (a Log scale may round them)
        return list(self._pending_values)

    def evaluate(self, value: dict[str, Any], selection: Iterable[Any]) -> FitnessValue:
        """The fitness of one candidate (applied for the evaluation, then restored)."""
        with self.space.applied(value), self._seeded():
            start = time.perf_counter()
            try:
                return self.fitness.evaluate(self.model, selection)
            finally:
                self.seconds_fitness += time.perf_counter() - start

    def tell(self, values: Sequence[float | FitnessValue]) -> None:
        """Tells the fitness (metric orientation) of every candidate of the pending step, in :meth:`ask` order."""
        if not self._pending:
            raise RuntimeError("tell() without pending candidates: call ask() first")
        if len(values) != len(self._pending):
            raise ConfigError(f"tell() needs {len(self._pending)} values, one per asked candidate, got {len(values)}")
        values = [v if isinstance(v, FitnessValue) else FitnessValue(float(v), None) for v in values]
        scores = [self.fitness.score(v.value) for v in values]
        if self.num_evaluations == 0:
            if not is_valid(scores[0]):
                raise ConfigError(f"the metric returns {values[0].value} on the unmodified model (the identity "
                                  "candidate); the fitness must be finite there")
            self.selection_before = values[0].value
            self.num_examples = values[0].num_examples
        step_bits = self._feedback.bits(len(scores), self._best_score is not None, self.num_examples)
        self.bits = None if self.bits is None or step_bits is None else self.bits + step_bits
        losses = self._feedback.losses(scores, self._best_score)
        for candidate, loss in zip(self._pending, losses, strict=True):
            self._optimizer.tell(candidate, loss)
        for value, fit, score in zip(self._pending_values, values, scores, strict=True):
            valid = is_valid(score)
            if valid and (self._best_score is None or score > self._best_score):
                self._best_score, self._best_value, self._best_index = score, value, self.num_evaluations
            self.nan_count += not valid
            record = {"index": self.num_evaluations, "step": self.num_steps, "fitness": fit.value if valid else None,
                      "best": self.fitness.score(self._best_score), "nan": not valid}
            self.history.append(record)
            self.num_evaluations += 1
            if self.on_evaluation is not None:
                self.on_evaluation(record)
        self.num_steps += 1
        self._pending, self._pending_values = [], []

    # ------------------------------------------------------------------ the loop

    def run(self, selection: Iterable[Any]) -> EvolutionResult:
        """Runs (or continues) the search on ``selection`` (this rank's batches, iterated once per evaluation)."""
        if selection is None or iter(selection) is selection:
            raise ConfigError("selection must be re-iterable (a list of batches or a DataLoader): it is read once "
                              f"per evaluation; got {type(selection).__name__}")
        if self._optimizer is None and self.resume and self.checkpoint_path and self.checkpoint_path.exists():
            self.load_state_dict(load_state(self.checkpoint_path))
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        bar = self._bar()
        try:
            if self.heldout is not None and self.heldout_before is None:
                self.heldout_before = self._heldout()
            with self.space.session():
                while not self.done:
                    values = self.ask()
                    self.tell([self.evaluate(value, selection) for value in values])
                    if bar is not None:
                        bar.update(len(values))
                        bar.set_postfix(best=self.history[-1]["best"])
                    if self.checkpoint_path and (self.done or self.num_evaluations - self._last_checkpoint
                                                 >= self.checkpoint_every):
                        self.save_checkpoint()
            self._finish()
        finally:
            self.seconds_total += time.perf_counter() - start
            self.model.train(was_training)
            if bar is not None:
                bar.close()
        return self.result()

    def _finish(self) -> None:
        best = self._best_value
        if best is None:
            return
        if self.apply_best:
            if not self._best_applied:
                self.space.apply(best)
                self._best_applied = True
            context: Any = nullcontext()
        else:
            context = self.space.applied(best)
        if self.heldout is not None:
            with context:
                self.heldout_after = self._heldout()

    def _heldout(self) -> float:
        with torch.no_grad(), self._seeded():
            return float(self.heldout(self.model))  # type: ignore[misc]

    @contextmanager
    def _seeded(self) -> Iterator[None]:
        if not self.seed_evaluations:
            yield
            return
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            # the generators themselves: torch.manual_seed also queues a lazy CUDA seeding that records a
            # Python stack trace, about 0.5 ms per call
            torch.default_generator.manual_seed(self.seed)
            for device in devices:
                torch.cuda.default_generators[device].manual_seed(self.seed)
            yield

    def _bar(self) -> Any:
        if not self.progress_bar or distributed.rank() != 0:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=self.budget, initial=self.num_evaluations, desc=f"evolution ({self.optimizer_name})")

    # ------------------------------------------------------------------ results and state

    def result(self) -> EvolutionResult:
        """The run so far (anytime): best candidate, scores, history, bits and generalization gap."""
        if self._best_value is None or self.selection_before is None:
            raise RuntimeError("no candidate has been evaluated yet")
        n = self.num_examples
        gap = None if self.bits is None or not n else generalization_gap(self.bits, n, self.delta)
        return EvolutionResult(
            best=self._best_value,
            best_json=self.space.to_jsonable(self._best_value),
            best_index=self._best_index,
            selection_before=self.selection_before,
            selection_after=self.fitness.score(self._best_score),  # type: ignore[arg-type]
            heldout_before=self.heldout_before,
            heldout_after=self.heldout_after,
            history=[dict(r) for r in self.history],
            num_evaluations=self.num_evaluations,
            nan_count=self.nan_count,
            bits=self.bits,
            num_examples=n,
            delta=self.delta,
            generalization_gap=gap,
            optimizer=self.optimizer_name,
            feedback=self.feedback,
            budget=self.budget,
            num_workers=self.num_workers,
            seed=self.seed,
            mode=self.fitness.mode,
            seconds_total=self.seconds_total,
            seconds_fitness=self.seconds_fitness,
            space=self.space.describe(),
        )

    def _config(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer_name, "budget": self.budget, "num_workers": self.num_workers,
                "seed": self.seed, "feedback": self.feedback, "mode": self.fitness.mode,
                "space": self.space.describe()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run (plain objects and bytes; fits a Lightning checkpoint).

        Raises:
            RuntimeError: between :meth:`ask` and :meth:`tell` (a step in flight is not saved).
        """
        if self._pending:
            raise RuntimeError("state_dict() between ask() and tell(): tell the pending candidates first")
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "optimizer": None if self._optimizer is None else pickle.dumps(self._optimizer),
            "feedback_state": self._feedback.state_dict(),
            "history": [dict(r) for r in self.history],
            "num_evaluations": self.num_evaluations,
            "num_steps": self.num_steps,
            "nan_count": self.nan_count,
            "bits": self.bits,
            "num_examples": self.num_examples,
            "selection_before": self.selection_before,
            "heldout_before": self.heldout_before,
            "best_value": pickle.dumps(self._best_value),
            "best_score": self._best_score,
            "best_index": self._best_index,
            "seconds_total": self.seconds_total,
            "seconds_fitness": self.seconds_fitness,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict`; the engine must have the same configuration and search space."""
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"evolution state version {state.get('version')!r} is not {STATE_VERSION}")
        mine, theirs = self._config(), state["config"]
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        if differ:
            details = "; ".join(f"{k}: saved {theirs.get(k)!r}, engine {mine[k]!r}" for k in differ)
            raise ConfigError(f"the saved evolution state does not match this engine ({details})")
        self._reset()
        self._optimizer = None if state["optimizer"] is None else pickle.loads(state["optimizer"])
        self._feedback.load_state_dict(state["feedback_state"])
        self.history = [dict(r) for r in state["history"]]
        for key in ("num_evaluations", "num_steps", "nan_count", "bits", "num_examples", "selection_before",
                    "heldout_before", "seconds_total", "seconds_fitness"):
            setattr(self, key, state[key])
        self._best_value = pickle.loads(state["best_value"])
        self._best_score = state["best_score"]
        self._best_index = state["best_index"]
        self._last_checkpoint = self.num_evaluations

    def save_checkpoint(self, path: str | Path | None = None) -> Path | None:
        """Writes :meth:`state_dict` to ``path`` (default ``checkpoint_path``) atomically, on rank 0 only."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ConfigError("save_checkpoint needs a path (none given and checkpoint_path is None)")
        self._last_checkpoint = self.num_evaluations
        if distributed.rank() != 0:
            return None
        return save_state(self.state_dict(), path)

