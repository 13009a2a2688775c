"""`PromptScorer`: per-problem exact match of few-shot pre-prompts chosen from a pool, cached by pre-prompt.

EPPO's fitness (arXiv 2412.04291). A pre-prompt is an ordered tuple of pool indices; its text is the pool
problems in the few-shot format of :func:`litlab.text.gsm8k.format_demonstration`. A block of problems
(:class:`ProblemBlock`) is answered by one ``lm.generate_batch`` call with the pre-prompt as ``prefix`` and
``reuse_prefix=True``: the pre-prompt's keys and values are computed once and copied to every problem of the
batch, so with ``batch_size=None`` (one batch per block) they are computed once per candidate and block. The
answer stops at the blank line and is compared exactly (:mod:`litlab.evaluation.math_answer`); with
``samples > 1``, the majority answer of that many samples (self-consistency, arXiv 2203.11171).

Caching. Scores are kept by ``(pre-prompt, block, samples, temperature, seed)``: asking again for a candidate
already scored (an optimizer that re-asks its incumbent, two tuples with the same distinct prefix, a
baseline shared by several runs) computes nothing. :attr:`PromptScorer.computed` and
:attr:`PromptScorer.hits` count both.

Sampling seeds follow the problem, not the batch: row ``r`` of the whole split (problem ``offset + i``,
sample ``j``) samples with ``seed + (offset + i)·samples + j``, the seeds ``generate_batch`` gives when the
whole split is one call. A split cut into blocks (DDP shards) therefore samples exactly as in one process.

Context. A problem whose prompt (BOS + pre-prompt + question) does not fit the model's context
(:func:`context_length`) cannot be answered: it scores 0 and is counted in :attr:`PromptScorer.overflow`.

The language model is duck-typed (``generate_batch`` and ``encode`` as
:class:`~litlab.lightning_modules.language_model.LanguageModel` has them); this floor imports no Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from litlab.errors import ConfigError, check_int
from litlab.evaluation.math_answer import exact_match_scores, majority_scores
from litlab.text.gsm8k import ANSWER_END, MathProblem, format_demonstration, format_question


@dataclass(frozen=True)
class ProblemBlock:
    """Consecutive problems of a split and the position of the first one in that split (for sampling seeds).

    Args:
        problems: The problems, in split order.
        offset: Index of ``problems[0]`` in the whole split.
    """

    problems: tuple[MathProblem, ...]
    offset: int = 0

    def __len__(self) -> int:
        return len(self.problems)


def contiguous_blocks(problems: Sequence[MathProblem], rank: int = 0, world_size: int = 1) -> list[ProblemBlock]:
    """Rank ``rank``'s share of ``problems`` as one block: positions ``[rank·n/W, (rank+1)·n/W)`` (none if empty)."""
    n = len(problems)
    low, high = rank * n // world_size, (rank + 1) * n // world_size
    return [ProblemBlock(tuple(problems[low:high]), low)] if high > low else []


def context_length(lm: Any) -> int | None:
    """The longest sequence the model's batched decoder takes (None: no limit known).

    A Hugging Face model (``lm.hf_model``): ``config.max_position_embeddings``; a flat Transformer with full
    attention (``lm.model.max_length``): its ``max_length``; otherwise (AU-Net, sliding windows) None.
    """
    hf = getattr(lm, "hf_model", None)
    if hf is not None:
        return getattr(getattr(hf, "config", None), "max_position_embeddings", None)
    net = getattr(lm, "model", None)
    trunk = getattr(net, "trunk", None)
    if trunk is not None and getattr(trunk, "window", None) is not None:
        return None
    length = getattr(net, "max_length", None)
    return length if isinstance(length, int) else None


class PromptScorer:
    """Exact match of pre-prompts (tuples of pool indices) on blocks of problems, cached by pre-prompt.

    Args:
        lm: The language model (``generate_batch`` and ``encode``, as a litlab ``LanguageModel``).
        pool: The demonstrations the indices point into.
        max_new_bytes: Longest answer.
        batch_size: Problems generated together (None: each block in one batch, so the pre-prompt is computed
            once per block).
        reuse_prefix: Compute the pre-prompt once per batch (False: once per problem; same scores, slower).
    """

    def __init__(self, lm: Any, pool: Sequence[MathProblem], max_new_bytes: int = 320,
                 batch_size: int | None = None, reuse_prefix: bool = True) -> None:
        if not callable(getattr(lm, "generate_batch", None)):
            raise ConfigError(f"EPPO needs a language model with generate_batch() (a litlab LanguageModel or "
                              f"HFCausalLM); got {type(lm).__name__}")
        if not pool:
            raise ConfigError("the demonstration pool is empty: EPPO needs at least one solved problem to choose from")
        check_int("max_new_bytes", max_new_bytes, 1)
        if batch_size is not None:
            check_int("batch_size", batch_size, 1)
        self.lm = lm
        self.pool = list(pool)
        self.max_new_bytes = max_new_bytes
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.context = context_length(lm) if callable(getattr(lm, "encode", None)) else None
        self.computed = 0
        """Blocks scored by running the model (cache misses)."""
        self.hits = 0
        """Blocks answered from the cache."""
        self.overflow = 0
        """Problems (over all computed blocks) whose prompt did not fit the context and scored 0."""
        self._cache: dict[tuple[Any, ...], list[float]] = {}
        self._prefix_ids: dict[tuple[int, ...], int] = {}
        self._question_ids: dict[str, int] = {}

    def settings(self) -> tuple[Any, ...]:
        """What the cached scores depend on besides the arguments of :meth:`scores` (to check a shared scorer)."""
        return (self.max_new_bytes, self.batch_size, self.reuse_prefix)

    def prefix(self, indices: Sequence[int]) -> str:
        """The pre-prompt's text: the pool problems at ``indices``, in order, in the few-shot format."""
        for i in indices:
            if not 0 <= int(i) < len(self.pool):
                raise ConfigError(f"pre-prompt index {int(i)} is outside the pool of {len(self.pool)} demonstrations")
        return "".join(format_demonstration(self.pool[int(i)]) for i in indices)

    def fits(self, indices: Sequence[int], problem: MathProblem) -> bool:
        """Whether BOS + the pre-prompt + the problem's question fit the model's context."""
        if self.context is None:
            return True
        key = tuple(int(i) for i in indices)
        if key not in self._prefix_ids:
            text = self.prefix(key)
            self._prefix_ids[key] = len(self.lm.encode(text.encode())) if text else 0
        question = problem.question
        if question not in self._question_ids:
            self._question_ids[question] = len(self.lm.encode(format_question(question).encode()))
        return 1 + self._prefix_ids[key] + self._question_ids[question] <= self.context

    def scores(self, indices: Sequence[int], block: ProblemBlock, samples: int = 1, temperature: float = 0.0,
               seed: int = 0) -> list[float]:
        """Per-problem exact match (1.0/0.0) of the block with the pre-prompt ``indices`` (cached).

        Args:
            indices: The pre-prompt (pool indices, in order; empty: zero-shot).
            block: The problems and their offset in the split.
            samples: Sampled answers per problem; > 1 scores their majority answer (self-consistency).
            temperature: Sampling temperature (0: greedy; must be > 0 when ``samples > 1``).
            seed: Seed of the split's first row (see the module docstring).
        """
        check_int("samples", samples, 1)
        if samples > 1 and not temperature > 0:
            raise ConfigError(f"samples={samples} needs temperature > 0 (greedy samples would all be the same)")
        key = (tuple(int(i) for i in indices), block, samples, float(temperature), seed)
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return list(cached)
        problems = block.problems
        prefix = self.prefix(key[0])
        fits = [self.fits(key[0], p) for p in problems]
        scores = [0.0] * len(problems)
        start = 0
        while start < len(problems):  # each run of fitting problems in one call, with its split-wide seed
            if not fits[start]:
                start += 1
                continue
            end = start
            while end < len(problems) and fits[end]:
                end += 1
            run = problems[start:end]
            outputs = self.lm.generate_batch(
                [format_question(p.question).encode() for p in run], max_new_bytes=self.max_new_bytes,
                temperature=temperature, seed=seed + (block.offset + start) * samples, num_return_sequences=samples,
                stop=(ANSWER_END.encode(),), prefix=prefix.encode() if prefix else None,
                reuse_prefix=self.reuse_prefix, batch_size=self.batch_size)
            texts = [out.decode("utf-8", errors="replace") for out in outputs]
            references = [p.answer for p in run]
            scores[start:end] = exact_match_scores(texts, references) if samples == 1 else \
                majority_scores(texts, references, samples)
            start = end
        self.overflow += fits.count(False)
        self.computed += 1
        self._cache[key] = scores
        return list(scores)
