"""What an EPPO run is compared with, on the fitness subset and on the held-out problems, in the same run.

- **zero-shot**: no pre-prompt;
- **start**: the starting pre-prompt (first ``k`` of the pool, or the given one), the search's identity;
- **random k-shot**: ``draws`` pre-prompts of ``k`` distinct pool items drawn uniformly (draw ``r`` from
  ``numpy.random.RandomState(baseline_seed + r)``), mean ± sd over the draws;
- **random search at equal budget**: the best on the fitness subset of ``budget`` random pre-prompts (the
  engine with ``RandomSearch``: the start, then uniform draws), whose choice tells at most ``log2(budget)``
  bits;
- **EPPO**: the chosen pre-prompt.

Each is measured on the fitness subset and on the held-out problems (greedy); the start and the chosen
pre-prompt also with self-consistency (``sc_samples`` answers at ``sc_temperature``, majority vote, same
sampling seeds for both). The chosen pre-prompt's held-out gain over the start and over the mean of the
random draws is *paired* over the held-out problems (one difference per problem), with the standard error
``sd(differences)/sqrt(n)``; each accuracy comes with its binomial standard error ``sqrt(p(1-p)/n)``.

Every number is a sum over this rank's blocks, all-reduced over ranks, so all ranks agree with one process.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from litlab.evaluation.math_scoring import binomial_se
from litlab.evaluation.prompt_scores import ProblemBlock, PromptScorer
from litlab.evolution.bounds import generalization_gap
from litlab.evolution.distributed import all_reduce_sum
from litlab.evolution.report import EvolutionResult


def random_prompts(pool_size: int, shots: int, draws: int, seed: int) -> list[tuple[int, ...]]:
    """``draws`` pre-prompts of ``shots`` distinct pool indices; draw ``r`` from ``RandomState(seed + r)``."""
    return [tuple(int(i) for i in np.random.RandomState(seed + r).permutation(pool_size)[:shots])
            for r in range(draws)]


class PromptEvaluator:
    """Exact match of pre-prompts on this rank's selection and held-out blocks, reduced over ranks.

    Args:
        scorer: The cached scorer of the run.
        selection: This rank's blocks of the fitness subset.
        heldout: This rank's blocks of the held-out problems (None: no held-out set).
        sampling: ``(samples, temperature, seed)`` of the self-consistency measurements (samples < 2: none).
    """

    def __init__(self, scorer: PromptScorer, selection: Sequence[ProblemBlock],
                 heldout: Sequence[ProblemBlock] | None, sampling: tuple[int, float, int] = (1, 0.0, 0)) -> None:
        self.scorer = scorer
        self.parts = {"selection": list(selection), "heldout": None if heldout is None else list(heldout)}
        self.sampling = sampling

    def _sums(self, part: str, indices: Sequence[int], others: Sequence[Sequence[int]] = (),
              sampled: bool = False) -> tuple[float, float, float, int]:
        """Reduced (Σ score, Σ d, Σ d², n) with ``d`` = score − mean score of ``others``, problem by problem."""
        samples, temperature, seed = self.sampling if sampled else (1, 0.0, 0)
        sums = torch.zeros(4, dtype=torch.float64)
        for block in self.parts[part] or []:
            own = np.asarray(self.scorer.scores(indices, block, samples, temperature, seed))
            diff = own - (np.mean([self.scorer.scores(o, block) for o in others], axis=0) if others else 0.0)
            sums += torch.tensor([own.sum(), diff.sum(), (diff ** 2).sum(), own.size], dtype=torch.float64)
        sums = all_reduce_sum(sums)
        return float(sums[0]), float(sums[1]), float(sums[2]), round(float(sums[3]))

    def accuracy(self, indices: Sequence[int], part: str = "heldout", sampled: bool = False) -> float | None:
        """Exact match of a pre-prompt on ``part`` (None when that part is empty or absent)."""
        total, _, _, n = self._sums(part, indices, sampled=sampled)
        return total / n if n else None

    def paired_gain(self, indices: Sequence[int], others: Sequence[Sequence[int]]) -> dict[str, float] | None:
        """Held-out gain of ``indices`` over the mean of ``others``, paired per problem: mean and its SE."""
        _, total, squares, n = self._sums("heldout", indices, others)
        if n < 2:
            return None
        mean = total / n
        variance = max(squares / n - mean ** 2, 0.0) * n / (n - 1)
        return {"gain": mean, "se": math.sqrt(variance / n)}

    def measure(self, indices: Sequence[int], self_consistency: bool = False) -> dict[str, Any]:
        """A pre-prompt's indices and its selection and held-out exact match (with binomial SEs)."""
        out: dict[str, Any] = {"indices": [int(i) for i in indices], "shots": len(indices)}
        for part in ("selection", "heldout"):
            total, _, _, n = self._sums(part, indices)
            if n:
                out[part], out[f"{part}_se"] = total / n, binomial_se(total / n, n)
        if self_consistency and self.sampling[0] > 1 and "heldout" in out:
            total, _, _, n = self._sums("heldout", indices, sampled=True)
            out["heldout_sc"], out["heldout_sc_se"] = total / n, binomial_se(total / n, n)
        return out


def compare_prompts(evaluator: PromptEvaluator, chosen: Sequence[int], start: Sequence[int],
                    random: Sequence[Sequence[int]], search: EvolutionResult | None,
                    search_choice: Sequence[int] | None, delta: float) -> dict[str, Any]:
    """The baselines and the chosen pre-prompt, measured (see the module docstring).

    Args:
        evaluator: Measures pre-prompts.
        chosen: EPPO's pre-prompt.
        start: The starting pre-prompt.
        random: The random k-shot pre-prompts (none: no random baseline).
        search: The random-search run at equal budget (None: not run).
        search_choice: The pre-prompt random search chose.
        delta: Failure probability of the random search's generalization bound.
    """
    report: dict[str, Any] = {
        "zero_shot": evaluator.measure(()),
        "start": evaluator.measure(start, self_consistency=True),
        "chosen": evaluator.measure(chosen, self_consistency=True),
    }
    if random:
        draws = [evaluator.measure(r) for r in random]
        summary: dict[str, Any] = {"draws": draws}
        for part in ("selection", "heldout"):
            values = [d[part] for d in draws if part in d]
            if values:
                summary[f"{part}_mean"] = statistics.fmean(values)
                summary[f"{part}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        report["random"] = summary
    if search is not None and search_choice is not None:
        bits = math.log2(search.num_evaluations)
        n = search.num_examples
        report["random_search"] = {**evaluator.measure(search_choice), "budget": search.num_evaluations,
                                   "bits": bits, "generalization_gap": generalization_gap(bits, n, delta) if n else None}
    gains = {"over_start": evaluator.paired_gain(chosen, [start])}
    if random:
        gains["over_random"] = evaluator.paired_gain(chosen, random)
    if search_choice is not None:
        gains["over_random_search"] = evaluator.paired_gain(chosen, [search_choice])
    report["heldout_gain"] = {key: value for key, value in gains.items() if value is not None}
    return report
