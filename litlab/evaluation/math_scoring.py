"""Exact match of a language model on math word problems: batched generation with a k-shot chain-of-thought
prompt, the final answer compared exactly with the reference (:mod:`litlab.evaluation.math_answer`).

Shared by ``litlab evaluate_math`` (:mod:`litlab.methods.evaluate_math`) and the evolutionary methods that score
a model on problems (BBoxER's fitness, :class:`MathAccuracy`). The language model is duck-typed: anything with
``generate_batch(prompts, max_new_bytes=..., temperature=..., seed=..., num_return_sequences=..., stop=...,
prefix=..., batch_size=...)`` returning one ``bytes`` continuation per row, as
:class:`~litlab.lightning_modules.language_model.LanguageModel` has (this floor imports no Lightning).

The prompt is the ``demonstrations`` in the few-shot format of :func:`litlab.text.gsm8k.format_demonstration`
followed by ``Question: <question>\\nAnswer:``; the model's solution ends at the blank line; the few-shot prefix
is computed once per batch (shared-prefix reuse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from litlab.errors import ConfigError, check_int
from litlab.evaluation.math_answer import exact_match_scores, majority_scores
from litlab.text.gsm8k import ANSWER_END, MathProblem, format_demonstration, format_question


def math_scores(
    lm: Any,
    problems: Sequence[MathProblem],
    demonstrations: Sequence[MathProblem] = (),
    samples: int = 1,
    temperature: float = 0.0,
    max_new_bytes: int = 320,
    seed: int = 0,
    batch_size: int = 32,
) -> list[float]:
    """Per-problem exact match (1.0/0.0) of ``lm`` with a few-shot prompt of ``demonstrations``.

    Args:
        lm: The language model (``generate_batch`` as :class:`LanguageModel` has it).
        problems: The problems to solve.
        demonstrations: The solved problems of the prompt, in order (none: zero-shot).
        samples: Solutions sampled per problem; > 1 scores their majority answer (self-consistency).
        temperature: Sampling temperature (0: greedy; needs > 0 when ``samples`` > 1).
        max_new_bytes: Longest solution.
        seed: Seed of the sampling.
        batch_size: Solutions generated together.
    """
    if samples > 1 and temperature <= 0:
        raise ConfigError(f"samples={samples} needs temperature > 0 (greedy samples would all be the same)")
    prefix = "".join(format_demonstration(d) for d in demonstrations)
    outputs = lm.generate_batch(
        [format_question(p.question).encode() for p in problems], max_new_bytes=max_new_bytes,
        temperature=temperature, seed=seed, num_return_sequences=samples, stop=(ANSWER_END.encode(),),
        prefix=prefix.encode() if prefix else None, batch_size=batch_size)
    texts = [out.decode("utf-8", errors="replace") for out in outputs]
    references = [p.answer for p in problems]
    return exact_match_scores(texts, references) if samples == 1 else majority_scores(texts, references, samples)


def draw_demonstrations(pool: Sequence[MathProblem], shots: int, seed: int) -> list[MathProblem]:
    """``shots`` distinct problems of ``pool`` in a seeded random order."""
    if shots > len(pool):
        raise ConfigError(f"shots={shots} exceeds the {len(pool)} train problems to draw demonstrations from")
    return [pool[i] for i in np.random.RandomState(seed).permutation(len(pool))[:shots]]


def binomial_se(p: float, n: int) -> float:
    """Standard error ``sqrt(p(1-p)/n)`` of an accuracy ``p`` over ``n`` problems."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


class MathAccuracy:
    """Greedy exact match as a per-example fitness: ``MathAccuracy(...)(model, batch)`` -> one 0/1 score per problem.

    The form :class:`litlab.evolution.Fitness` takes (``fn(model, batch)``, a batch being a list of
    :class:`MathProblem`); the whole batch is generated together, so the batches set the generation batch size.

    Args:
        demonstrations: Solved problems of the prompt (none: zero-shot).
        max_new_bytes: Longest solution.
        lm: The language model to generate with (default: the ``model`` the fitness is called with; give it
            when that model is a wrapper of the language model).
    """

    def __init__(self, demonstrations: Sequence[MathProblem] = (), max_new_bytes: int = 320, lm: Any = None) -> None:
        check_int("max_new_bytes", max_new_bytes, 1)
        self.demonstrations = list(demonstrations)
        self.max_new_bytes = max_new_bytes
        self.lm = lm

    def __call__(self, model: Any, batch: Sequence[MathProblem]) -> list[float]:
        lm = model if self.lm is None else self.lm
        if not hasattr(lm, "generate_batch"):
            raise ConfigError(f"the math fitness needs a language model with generate_batch(); got "
                              f"{type(lm).__name__}")
        return math_scores(lm, list(batch), self.demonstrations, max_new_bytes=self.max_new_bytes,
                           batch_size=max(1, len(batch)))


def problem_batches(problems: Sequence[MathProblem], batch_size: int) -> list[list[MathProblem]]:
    """``problems`` cut into consecutive batches of ``batch_size`` (the last may be shorter)."""
    check_int("batch_size", batch_size, 1)
    return [list(problems[i:i + batch_size]) for i in range(0, len(problems), batch_size)]
