"""`EPPO`: evolve the few-shot chain-of-thought pre-prompt of a language model (arXiv 2412.04291), after ``fit``.

Which ``k`` solved problems of a pool, in which order, make the best pre-prompt? A seeded discrete optimizer
(nevergrad ``DiscreteLenglerOnePlusOne`` by default) searches ordered tuples of pool indices
(:class:`~litlab.evolution.demonstration_space.DemonstrationSpace`: distinct demonstrations, ``k`` fixed or
searched in ``shots_range``), each scored by greedy exact match on a fixed fitness subset of problems
(:class:`~litlab.evaluation.prompt_scores.PromptScorer`: batched, the pre-prompt's KV prefix computed once and
reused over the subset, cached by pre-prompt). With ``feedback="comparison"`` the optimizer is told only
whether a candidate beats the incumbent: one bit per evaluation, hence the generalization bound
``sqrt((bits·ln2 + ln(2/δ)) / (2n))`` on the gap between the held-out and the fitness accuracy
(:mod:`litlab.evolution.bounds`).

The problems (:mod:`litlab.callbacks.eppo_data`): the pool is the train split, the fitness subset the
selection split, the held-out set the test split (or ``test_data``). Nothing is searched on the held-out
problems; with ``safeguard=True`` (off by default) they would veto the result, which spends one decision on
them.

The run (:class:`~litlab.callbacks.evolution_base.EvolutionCallback`: after ``fit``, or
:meth:`EPPO.run` on a trainer, as ``litlab eppo`` does): the search, then in the same run the baselines of
:mod:`litlab.callbacks.eppo_baselines` (zero-shot, start, random k-shot over ``random_draws`` draws, random
search at equal budget) and the held-out evaluation with and without self-consistency. It changes no weights:
the result is the pre-prompt, kept as :attr:`EPPO.indices` and :attr:`EPPO.preprompt` and written to
``<output_dir>/preprompt.txt`` (the text to put before a question) and ``preprompt.json`` (pool indices and
questions), beside ``report.json`` (under ``"eppo"``: every prompt's fitness and held-out accuracy, the paired
held-out gains, budget, bits and bound), ``fitness.png`` and ``state.pt`` (resume; the random search's own
state is ``random_search_state.pt``). Under DDP each rank scores its contiguous share of the problems and the
sums are all-reduced, so every rank (and the result) equals a one-process run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from litlab.callbacks.eppo_baselines import PromptEvaluator, compare_prompts, random_prompts
from litlab.callbacks.eppo_data import PromptProblems, load_prompt_problems
from litlab.callbacks.evolution_base import EvaluationData, EvolutionCallback
from litlab.errors import ConfigError, check_choice, check_int
from litlab.evaluation.prompt_scores import PromptScorer, contiguous_blocks
from litlab.evolution import EvolutionEngine, EvolutionResult, Fitness
from litlab.evolution.demonstration_space import DemonstrationSpace
from litlab.evolution.state import load_state

OPTIMIZERS = ("DiscreteLenglerOnePlusOne", "DiscreteOnePlusOne", "RandomSearch", "PortfolioDiscreteOnePlusOne")
"""The discrete optimizers EPPO takes (continuous ones mutate an index locally, which means nothing in a pool)."""


class EPPO(EvolutionCallback):
    """Evolves the few-shot pre-prompt of a language model after ``fit`` (EPPO); changes no weights.

    Args:
        data: Math problems: ``procedural_math:...`` or ``<file>.jsonl:num_train=..,num_selection=..,num_test=..``
            (GSM8K format); default: the trainer's datamodule (a MathProblemsDataModule, or a TextDataModule on
            such a spec).
        test_data: A GSM8K-format ``.jsonl`` of held-out problems (default: the test split of ``data``).
        shots: Demonstrations per pre-prompt, ``k`` (the starting ``k`` when ``shots_range`` is given).
        shots_range: ``[low, high]``: also search ``k`` in this range (e.g. ``[2, 8]``); None: ``k`` is fixed.
        start: Pool indices of the starting pre-prompt (``shots`` distinct ones); default: the first ``shots``.
        pool_size: Use the first ``pool_size`` train problems as the pool (default: all).
        num_fitness: Problems of the selection split the fitness is measured on (the bound's ``n``).
        num_heldout: Held-out problems measured (default: all).
        max_new_bytes: Longest generated answer.
        batch_size: Problems generated together (default: this rank's whole share, so the pre-prompt's prefix is
            computed once per candidate).
        random_draws: Random k-shot pre-prompts measured as a baseline (0: none).
        baseline_seed: Seed of the random k-shot draws and of the self-consistency sampling (independent of
            ``seed``, so runs with several seeds share the baseline).
        random_search: Also run random search at the same budget (a baseline).
        sc_samples: Answers sampled per held-out problem for self-consistency (majority vote); < 2: none.
        sc_temperature: Sampling temperature of self-consistency (> 0).
        optimizer: ``DiscreteLenglerOnePlusOne``, ``DiscreteOnePlusOne``, ``RandomSearch`` or
            ``PortfolioDiscreteOnePlusOne``.
        budget: Fitness evaluations, the start included (cached repeats count).
        num_workers: Candidates asked and told together per step.
        seed: Seed of the optimizer (and of the random search).
        feedback: ``comparison`` (one bit per (1+1) step) or ``value`` (the exact accuracy is told).
        safeguard: Keep the chosen pre-prompt only if its held-out accuracy is not below the start's (this
            selects on the held-out set; off by default).
        checkpoint_every: Evaluations between writes of the search state.
        resume: Continue from ``<output_dir>/state.pt`` (and ``random_search_state.pt``) when they exist.
        output_dir: Directory of the files (default: ``<log dir>/eppo``).
        delta: Failure probability of the reported generalization bounds, in ``(0, 1)``.
        progress_bar: Show a rank-0 progress bar (default: when the trainer shows one).
    """

    log_prefix = "eppo"
    weights_name = None

    def __init__(
        self,
        data: str | None = None,
        test_data: str | None = None,
        shots: int = 4,
        shots_range: tuple[int, int] | None = None,
        start: list[int] | None = None,
        pool_size: int | None = None,
        num_fitness: int = 100,
        num_heldout: int | None = None,
        max_new_bytes: int = 320,
        batch_size: int | None = None,
        random_draws: int = 10,
        baseline_seed: int = 0,
        random_search: bool = True,
        sc_samples: int = 5,
        sc_temperature: float = 0.7,
        optimizer: str = "DiscreteLenglerOnePlusOne",
        budget: int = 100,
        num_workers: int = 1,
        seed: int = 0,
        feedback: str = "comparison",
        safeguard: bool = False,
        checkpoint_every: int = 10,
        resume: bool = True,
        output_dir: str | None = None,
        delta: float = 0.05,
        progress_bar: bool | None = None,
    ) -> None:
        check_choice("optimizer", optimizer, OPTIMIZERS)
        super().__init__(optimizer=optimizer, budget=budget, num_workers=num_workers, seed=seed, feedback=feedback,
                         safeguard=safeguard, checkpoint_every=checkpoint_every, resume=resume,
                         output_dir=output_dir, delta=delta, progress_bar=progress_bar)
        for name, value, low in (("shots", shots, 1), ("num_fitness", num_fitness, 1),
                                 ("max_new_bytes", max_new_bytes, 1), ("random_draws", random_draws, 0),
                                 ("baseline_seed", baseline_seed, 0), ("sc_samples", sc_samples, 0)):
            check_int(name, value, low)
        for name, value in (("pool_size", pool_size), ("num_heldout", num_heldout), ("batch_size", batch_size)):
            if value is not None:
                check_int(name, value, 1 if name != "num_heldout" else 0)
        if shots_range is not None:
            if len(shots_range) != 2 or not all(isinstance(v, int) and 1 <= v for v in shots_range) \
                    or not shots_range[0] <= shots <= shots_range[1]:
                raise ConfigError(f"shots_range={shots_range!r} is not allowed: give [low, high] with 1 <= low <= "
                                  f"shots={shots} <= high")
        if start is not None and (len(start) != shots or len(set(start)) != shots):
            raise ConfigError(f"start={start!r} is not allowed: give shots={shots} distinct pool indices")
        if not (isinstance(sc_temperature, int | float) and sc_temperature > 0):
            raise ConfigError(f"sc_temperature={sc_temperature!r} is not allowed: it must be > 0")
        self.data, self.test_data = data, test_data
        self.shots, self.shots_range = shots, None if shots_range is None else tuple(shots_range)
        self.start = None if start is None else list(start)
        self.pool_size, self.num_fitness, self.num_heldout = pool_size, num_fitness, num_heldout
        self.max_new_bytes, self.batch_size = max_new_bytes, batch_size
        self.random_draws, self.baseline_seed, self.random_search = random_draws, baseline_seed, random_search
        self.sc_samples, self.sc_temperature = sc_samples, float(sc_temperature)
        self.problems: PromptProblems | None = None
        """The pool, fitness subset and held-out problems of the last run."""
        self.space: DemonstrationSpace | None = None
        self.scorer: PromptScorer | None = None
        """The cached scorer of the last run."""
        self.shared_scorer: PromptScorer | None = None
        """Set by code (e.g. a multi-seed demo) to reuse a scorer of the same model, pool and settings, and its
        cached scores, instead of a fresh one."""
        self.indices: tuple[int, ...] | None = None
        """The chosen pre-prompt (pool indices) of the last run."""
        self.preprompt: str | None = None
        """The chosen pre-prompt's text (put it before ``Question: ...\\nAnswer:``)."""
        self.comparison: dict[str, Any] | None = None
        """The baselines and held-out measurements of the last run (``report.json``'s ``"eppo"``)."""
        self.random_search_result: EvolutionResult | None = None
        """The random search at equal budget of the last run (its history: the baseline's fitness curve)."""
        self._fitness: Fitness | None = None

    # ------------------------------------------------------------------ the EvolutionCallback hooks
    def run(self, trainer: Trainer, pl_module: LightningModule) -> EvolutionResult | None:
        if not callable(getattr(pl_module, "generate_batch", None)):
            raise ConfigError(f"EPPO needs a language model with generate_batch() (a litlab LanguageModel or "
                              f"HFCausalLM); got {type(pl_module).__name__}")
        self.problems = load_prompt_problems(self.data, self.test_data, getattr(trainer, "datamodule", None),
                                             self.pool_size, self.num_fitness, self.num_heldout)
        self.comparison = self.random_search_result = None
        return super().run(trainer, pl_module)

    def build_space(self, pl_module: LightningModule) -> DemonstrationSpace:
        assert self.problems is not None
        self.space = DemonstrationSpace(len(self.problems.pool), self.shots, self.shots_range, self.start)
        return self.space

    def build_fitness(self, trainer: Trainer, pl_module: LightningModule) -> Fitness:
        assert self.problems is not None and self.space is not None
        scorer = self.shared_scorer
        if scorer is None:
            scorer = PromptScorer(pl_module, self.problems.pool, self.max_new_bytes, self.batch_size)
        elif scorer.lm is not pl_module or scorer.pool != list(self.problems.pool) or \
                scorer.settings() != (self.max_new_bytes, self.batch_size, True):
            raise ConfigError("shared_scorer scores another model, pool or decoding settings than this run")
        self.scorer, space = scorer, self.space
        too_long = [p for p in (*self.problems.fitness, *self.problems.heldout) if not scorer.fits(space.start, p)]
        if too_long:
            raise ConfigError(f"the starting pre-prompt (shots={self.shots}) and {len(too_long)} question(s) do not "
                              f"fit the model's context of {scorer.context} tokens, e.g. {too_long[0].question!r}: "
                              "use fewer shots or shorter demonstrations")
        forward = trainer.precision_plugin.forward_context

        def exact_match(model: Any, block: Any) -> list[float]:
            with forward():
                return scorer.scores(space.selected(), block)

        self._fitness = Fitness(exact_match)
        return self._fitness

    def evaluation_data(self, trainer: Trainer, pl_module: LightningModule, limit: int) -> EvaluationData:
        assert self.problems is not None
        fitness, heldout = self.problems.fitness, self.problems.heldout
        if limit:
            fitness, heldout = fitness[:limit], heldout[:limit]
        rank, world = trainer.global_rank, trainer.world_size
        held = contiguous_blocks(heldout, rank, world) if heldout else None
        return EvaluationData(contiguous_blocks(fitness, rank, world), held, len(fitness), len(heldout))

    def fitness_name(self) -> str:
        return "exact_match"

    def report_extras(self) -> dict[str, Any]:
        return {"metric": "exact_match"}

    def after_search(self, trainer: Trainer, pl_module: LightningModule, result: EvolutionResult,
                     data: EvaluationData, out: Path | None) -> dict[str, Any]:
        assert self.space is not None and self.scorer is not None and self.problems is not None
        self.indices = self.space.selected(result.best) if self.kept else self.space.start
        self.preprompt = self.scorer.prefix(self.indices)
        if out is None:  # fast_dev_run: the search is a smoke test
            return {}
        evaluator = PromptEvaluator(self.scorer, data.selection, data.heldout,
                                    (self.sc_samples, self.sc_temperature, self.baseline_seed))
        search, choice = None, None
        if self.random_search:
            search = result if self.optimizer == "RandomSearch" else self._random_search(trainer, pl_module, data, out)
            choice = self.space.selected(search.best)
        self.random_search_result = search
        random = random_prompts(len(self.problems.pool), self.shots, self.random_draws, self.baseline_seed)
        self.comparison = {
            "budget": result.num_evaluations, "optimizer": self.optimizer, "feedback": self.feedback,
            "bits": result.bits, "generalization_gap": result.generalization_gap, "delta": self.delta,
            "num_fitness": data.selection_size, "num_heldout": data.heldout_size,
            "pool_size": len(self.problems.pool), "source": self.problems.source,
            "shots": self.shots, "shots_range": None if self.shots_range is None else list(self.shots_range),
            "sc_samples": self.sc_samples, "sc_temperature": self.sc_temperature,
            **compare_prompts(evaluator, self.indices, self.space.start, random, search, choice, self.delta),
            "fitness_computations": self.scorer.computed, "cache_hits": self.scorer.hits,
            "context_overflow": self.scorer.overflow,
        }
        if trainer.is_global_zero:
            self._write(out)
            self._log_comparison(trainer)
        self.paths.update({"preprompt_text": str(out / "preprompt.txt"), "preprompt_json": str(out / "preprompt.json")})
        return {"eppo": self.comparison}

    # ------------------------------------------------------------------ helpers
    def _random_search(self, trainer: Trainer, pl_module: LightningModule, data: EvaluationData,
                       out: Path) -> EvolutionResult:
        """Random search at the same budget on the same fitness (resumable from its own state file)."""
        assert self.space is not None and self._fitness is not None
        engine = EvolutionEngine(
            pl_module, self.space, self._fitness, optimizer="RandomSearch", budget=self.budget,
            num_workers=self.num_workers, seed=self.seed, feedback=self.feedback,
            checkpoint_path=out / "random_search_state.pt", checkpoint_every=self.checkpoint_every, resume=False,
            apply_best=False, delta=self.delta, progress_bar=self._show_progress(trainer))
        path = engine.checkpoint_path
        assert path is not None
        state = load_state(path) if self.resume and trainer.is_global_zero and path.exists() else None
        state = trainer.strategy.broadcast(state)
        if state is not None:
            engine.load_state_dict(state)
        return engine.run(data.selection)

    def _write(self, out: Path) -> None:
        assert self.problems is not None and self.indices is not None and self.preprompt is not None
        out.mkdir(parents=True, exist_ok=True)
        (out / "preprompt.txt").write_text(self.preprompt)
        record = {"indices": list(self.indices), "shots": len(self.indices), "source": self.problems.source,
                  "pool_size": len(self.problems.pool), "kept": self.kept,
                  "questions": [self.problems.pool[i].question for i in self.indices]}
        (out / "preprompt.json").write_text(json.dumps(record, indent=1) + "\n")

    def _log_comparison(self, trainer: Trainer) -> None:
        comparison = self.comparison or {}
        values = {"heldout_chosen": comparison.get("chosen", {}).get("heldout"),
                  "heldout_start": comparison.get("start", {}).get("heldout"),
                  "heldout_zero_shot": comparison.get("zero_shot", {}).get("heldout"),
                  "heldout_random_mean": comparison.get("random", {}).get("heldout_mean"),
                  "heldout_random_search": comparison.get("random_search", {}).get("heldout"),
                  "heldout_chosen_sc": comparison.get("chosen", {}).get("heldout_sc")}
        metrics = {f"{self.log_prefix}/{key}": float(value) for key, value in values.items() if value is not None}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        rank_zero_info(f"EPPO: pre-prompt {list(self.indices or ())}; " + ", ".join(
            f"{key[8:]} {value:.4f}" for key, value in values.items() if value is not None) + " (held-out)")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if state.get("applied") and self.indices is not None:
            state.update(indices=list(self.indices), preprompt=self.preprompt)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict and state_dict.get("applied") and state_dict.get("indices") is not None:
            self.indices, self.preprompt = tuple(state_dict["indices"]), state_dict.get("preprompt")
