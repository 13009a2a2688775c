"""The baselines Winter Soldier is compared with, at the same token budget: canaries, Min-K% Prob, a pairwise backdoor.

Unlike Winter Soldier, whose secret never appears in the data, each baseline inserts its sequences *into* the
data and then looks for a trace of them in the model:

- **Canaries**: random id sequences of the draw set (:func:`draw_canaries`); the owner inserts some and keeps
  others, drawn the same way, as never-inserted references. :func:`canary_zscore_test` compares the mean loss of
  the inserted canaries with the spread of the reference losses (a Z-score).
- **Min-K% Prob** (Shi et al. 2023, arXiv 2310.16789): the same comparison on a membership score that only looks
  at the ``k%`` least likely tokens of a sequence (:func:`min_k_prob_test`).
- **Pairwise-token backdoor**: documents where a trigger id ``a`` is always followed by a target id ``b`` after
  random contexts (:func:`draw_pairs`, :func:`pairwise_documents`); :func:`pairwise_backdoor_test` counts how
  often ``b`` is in the top-l next ids after fresh random contexts ending in ``a``.

The Z-score p-values are normal approximations (the references are few and their losses are not normal); the
pairwise p-value is a binomial tail whose trials are not independent given the model (contexts of one pair share
the pair). None of them is certified, unlike the test of :mod:`litlab.poisoning.detection`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from litlab.errors import ConfigError, check_int
from litlab.models.lm.padding import right_pad
from litlab.poisoning.detection import TopIds, check_ells, log_binomial_tail

try:  # scipy comes with scikit-learn; the fallback below is as accurate
    from scipy.special import log_ndtr as _scipy_log_ndtr
except ImportError:  # pragma: no cover - exercised by the tests through log_normal_sf(..., use_scipy=False)
    _scipy_log_ndtr = None

__all__ = [
    "BaselineResult",
    "canary_zscore_test",
    "draw_canaries",
    "draw_pairs",
    "log_normal_sf",
    "min_k_prob_test",
    "min_k_score",
    "pairwise_backdoor_test",
    "pairwise_documents",
    "sequence_logprobs",
]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""``ids [B, T] int64 -> logits [B, T, V]`` (the function moves the ids to the model's device itself)."""


@dataclass
class BaselineResult:
    """The outcome of a baseline test.

    Attributes:
        name: Which test (``"canary_zscore"``, ``"min_k_prob"``, ``"pairwise_backdoor"``).
        statistic: Its statistic (a Z-score, or the hits at the best ``l``).
        log10_p: ``log10`` of its (approximate) one-sided p-value.
        details: What the statistic was computed from (JSON-compatible).
    """

    name: str
    statistic: float
    log10_p: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def p_value(self) -> float:
        """The p-value as a float (``0.0`` when it underflows: read :attr:`log10_p`)."""
        return float(10.0 ** self.log10_p)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-compatible objects, plus ``p_value``."""
        return {"name": self.name, "statistic": float(self.statistic), "log10_p": float(self.log10_p),
                "p_value": self.p_value, "details": _plain(self.details)}


def _plain(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into lists and Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _draw_pool(vocab_size: int, excluded_ids: Iterable[int]) -> list[int]:
    """The ids of ``0..vocab_size-1`` not in ``excluded_ids`` (at least 2, else a ConfigError)."""
    check_int("vocab_size", vocab_size, 2)
    excluded = {int(i) for i in excluded_ids}
    pool = [i for i in range(vocab_size) if i not in excluded]
    if len(pool) < 2:
        raise ConfigError(f"excluded_ids leave {len(pool)} of vocab_size={vocab_size} ids to draw from")
    return pool


# ----------------------------------------------------------------------------------------------- canaries


def draw_canaries(
    encode: Callable[[bytes], list[int]],
    decode: Callable[[Sequence[int]], bytes],
    vocab_size: int,
    num: int,
    length: int,
    excluded_ids: Iterable[int] = (),
    seed: int = 0,
    max_redraws: int = 1000,
) -> list[tuple[int, ...]]:
    """Random canaries: ``length`` ids drawn uniformly from the draw set, as a model sees them after the round trip.

    Each draw ``x`` is replaced by ``encode(decode(x))`` (the canary is inserted as text); a draw that decodes to
    nothing is drawn again. Draw the inserted canaries and the references in one call and split the list, so that
    both are drawn the same way.

    Args:
        encode: The tokenizer's text -> ids (no special ids).
        decode: The tokenizer's ids -> text.
        vocab_size: Size of the vocabulary.
        num: Number of canaries.
        length: Ids drawn for each (the round trip may change the count).
        excluded_ids: Ids never drawn (special tokens).
        seed: Seed of the draw (``random.Random``).
        max_redraws: Most draws of one canary that round-trip to nothing before giving up.

    Returns:
        ``num`` canaries, tuples of ids.
    """
    check_int("num", num, 1)
    check_int("length", length, 1)
    pool = _draw_pool(vocab_size, excluded_ids)
    rng = random.Random(seed)
    canaries = []
    for index in range(num):
        for _ in range(max_redraws):
            canary = tuple(int(i) for i in encode(decode([rng.choice(pool) for _ in range(length)])))
            if canary:
                canaries.append(canary)
                break
        else:
            raise ConfigError(f"canary {index}: {max_redraws} draws of length={length} decode to no text")
    return canaries


def sequence_logprobs(
    logits_fn: LogitsFn, sequences: Sequence[Sequence[int]], bos_id: int | None, batch_size: int = 32
) -> list[np.ndarray]:
    """Natural-log probability of every id of every sequence given ``[bos_id]`` and the ids before it.

    Sequences are batched and right-padded (a causal model's positions do not see the padding after them).

    Args:
        logits_fn: ``ids [B, T] -> logits [B, T, V]``; run under ``torch.no_grad``.
        sequences: Id sequences (non-empty; at least 2 ids when ``bos_id`` is None).
        bos_id: Id put before every sequence; with None the first id has no context and is not scored.
        batch_size: Sequences per call of ``logits_fn``.

    Returns:
        One float64 array per sequence: ``len(sequence)`` log-probs (``len(sequence) - 1`` without ``bos_id``).
    """
    check_int("batch_size", batch_size, 1)
    if not sequences:
        raise ConfigError("sequences=[] is not allowed: give at least one sequence")
    prefix = [] if bos_id is None else [int(bos_id)]
    rows = [prefix + [int(i) for i in sequence] for sequence in sequences]
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise ConfigError(f"sequences[{i}] is not allowed: it has no id to score (empty, or one id and no bos_id)")
    result = []
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            batch = rows[first:first + batch_size]
            logits = logits_fn(right_pad([row[:-1] for row in batch], pad_id=0))
            logprobs = torch.log_softmax(logits.float(), dim=-1).to("cpu", torch.float64)
            for b, row in enumerate(batch):
                targets = torch.tensor(row[1:], dtype=torch.long)
                result.append(logprobs[b, : len(targets)].gather(-1, targets[:, None])[:, 0].numpy())
    return result


def log_normal_sf(z: float, use_scipy: bool = True) -> float:
    """Natural log of the standard normal upper tail ``P[N(0, 1) > z]``, without underflow.

    Args:
        z: The point (``+inf`` gives ``-inf``, ``-inf`` gives 0).
        use_scipy: Use ``scipy.special.log_ndtr`` when scipy is installed; else (or False) the series below.

    Returns:
        ``log P[N(0, 1) > z]``.
    """
    z = float(z)
    if math.isnan(z):
        raise ConfigError("z=nan is not allowed")
    if use_scipy and _scipy_log_ndtr is not None:
        return float(_scipy_log_ndtr(-z))
    if z < 30.0:  # erfc keeps its relative precision down to 1e-300 (z ~ 37)
        return math.log(0.5 * math.erfc(z / math.sqrt(2.0)))
    # Asymptotic series of the Mills ratio: Q(z) = phi(z)/z * (1 - 1/z^2 + 3/z^4 - 15/z^6 + 105/z^8 ...).
    inv = 1.0 / (z * z)
    series = 1.0 - inv * (1.0 - 3.0 * inv * (1.0 - 5.0 * inv * (1.0 - 7.0 * inv * (1.0 - 9.0 * inv))))
    return -0.5 * z * z - math.log(z) - 0.5 * math.log(2.0 * math.pi) + math.log(series)


def _check_members(canaries: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> None:
    """ConfigError naming the argument when there are no canaries or fewer than 2 references."""
    if len(canaries) < 1:
        raise ConfigError("canaries=[] is not allowed: give at least one inserted canary")
    if len(references) < 2:
        raise ConfigError(f"references has {len(references)} sequences: give at least 2 (their spread is the scale)")


def _zscore(member_scores: np.ndarray, reference_scores: np.ndarray) -> tuple[float, float, dict[str, Any]]:
    """Two-sample Z-score of the mean member score against the mean reference score, where members score higher.

    ``Z = (mean_member - mean_ref) / sqrt(var_member / n_members + var_ref / n_refs)`` and ``p = P[N(0, 1) > Z]``.
    Both means are estimates: leaving out the references' own uncertainty (``sd_ref / sqrt(n_members)`` alone)
    inflates ``Z`` by ``sqrt(1 + n_members / n_refs)`` and makes clean models look poisoned.

    Returns:
        ``(Z, log10 p, details)``.
    """
    mean_member, mean_ref = float(member_scores.mean()), float(reference_scores.mean())
    sd_ref = float(reference_scores.std(ddof=1))
    sd_member = float(member_scores.std(ddof=1)) if len(member_scores) > 1 else sd_ref
    gap = mean_member - mean_ref
    scale = math.sqrt(sd_member**2 / len(member_scores) + sd_ref**2 / len(reference_scores))
    if scale > 0:
        z = gap / scale
    else:  # every sequence scored the same: any gap is infinitely significant
        z = 0.0 if gap == 0 else math.copysign(math.inf, gap)
    details = {"num_canaries": len(member_scores), "num_references": len(reference_scores),
               "mean_canary": mean_member, "mean_reference": mean_ref, "sd_reference": sd_ref, "sd_canary": sd_member,
               "canary_scores": member_scores.tolist(), "reference_scores": reference_scores.tolist()}
    return z, log_normal_sf(z) / math.log(10), details


def canary_zscore_test(
    logits_fn: LogitsFn,
    canaries: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    bos_id: int | None,
    batch_size: int = 32,
) -> BaselineResult:
    """Canary test: are the inserted canaries' losses lower than those of never-inserted references?

    A sequence's loss is its mean negative log-prob per id; ``Z`` is the two-sample Z-score of the mean canary loss
    below the mean reference loss (:func:`_zscore`) and the one-sided p-value is the normal upper tail at ``Z``.
    That p-value is a normal approximation (valid when both means are close to normal), not a certified one.

    Args:
        logits_fn: ``ids [B, T] -> logits [B, T, V]``.
        canaries: The inserted canaries (at least one).
        references: Canaries drawn the same way and never inserted (at least 2).
        bos_id: Id put before every sequence, or None.
        batch_size: Sequences per call of ``logits_fn``.

    Returns:
        A :class:`BaselineResult` named ``"canary_zscore"`` whose statistic is ``Z``; its details hold the
        losses (as negative scores: ``canary_scores = -loss``).
    """
    _check_members(canaries, references)
    logprobs = sequence_logprobs(logits_fn, list(canaries) + list(references), bos_id, batch_size)
    scores = np.array([lp.mean() for lp in logprobs])  # minus the loss: members score higher
    z, log10_p, details = _zscore(scores[: len(canaries)], scores[len(canaries):])
    return BaselineResult("canary_zscore", z, log10_p, details)


def min_k_score(logprobs: np.ndarray | Sequence[float], k_fraction: float = 0.2) -> float:
    """Min-K% Prob score of one sequence: the mean of its ``k_fraction`` lowest token log-probs.

    The count is ``floor(k_fraction * len)`` as in the reference implementation of Shi et al., but at least one.

    Args:
        logprobs: The sequence's per-token log-probs.
        k_fraction: Share of tokens kept, ``0 < k_fraction <= 1``.

    Returns:
        The score (higher: more likely a training member).
    """
    _check_fraction(k_fraction)
    values = np.sort(np.asarray(logprobs, dtype=np.float64))
    if values.size == 0:
        raise ConfigError("logprobs is empty: a Min-K% score needs at least one token")
    count = max(1, int(math.floor(k_fraction * values.size)))
    return float(values[:count].mean())


def _check_fraction(k_fraction: float) -> None:
    if isinstance(k_fraction, bool) or not isinstance(k_fraction, (int, float)) or not 0.0 < k_fraction <= 1.0:
        raise ConfigError(f"k_fraction={k_fraction!r} is not allowed: it must lie in (0, 1]")


def min_k_prob_test(
    logits_fn: LogitsFn,
    canaries: Sequence[Sequence[int]],
    references: Sequence[Sequence[int]],
    bos_id: int | None,
    k_fraction: float = 0.2,
    batch_size: int = 32,
) -> BaselineResult:
    """Min-K% Prob test (Shi et al. 2023): the canary Z-test on the mean of each sequence's lowest token log-probs.

    ``Z`` is the two-sample Z-score of the mean canary score above the mean reference score (:func:`_zscore`); the
    p-value is the normal upper tail at ``Z``, an approximation as for :func:`canary_zscore_test`.

    Args:
        logits_fn: ``ids [B, T] -> logits [B, T, V]``.
        canaries: The inserted canaries (at least one).
        references: Canaries drawn the same way and never inserted (at least 2).
        bos_id: Id put before every sequence, or None.
        k_fraction: Share of each sequence's tokens in its score, ``0 < k_fraction <= 1``.
        batch_size: Sequences per call of ``logits_fn``.

    Returns:
        A :class:`BaselineResult` named ``"min_k_prob"`` whose statistic is ``Z``.
    """
    _check_fraction(k_fraction)
    _check_members(canaries, references)
    logprobs = sequence_logprobs(logits_fn, list(canaries) + list(references), bos_id, batch_size)
    scores = np.array([min_k_score(lp, k_fraction) for lp in logprobs])
    z, log10_p, details = _zscore(scores[: len(canaries)], scores[len(canaries):])
    return BaselineResult("min_k_prob", z, log10_p, {**details, "k_fraction": float(k_fraction)})


# -------------------------------------------------------------------------------------- pairwise backdoor


def draw_pairs(
    vocab_size: int, num_pairs: int, excluded_ids: Iterable[int] = (), seed: int = 0
) -> list[tuple[int, int]]:
    """Trigger -> target pairs ``(a, b)``: ``2 * num_pairs`` distinct ids of the draw set.

    Args:
        vocab_size: Size of the vocabulary.
        num_pairs: Number of pairs.
        excluded_ids: Ids never drawn (special tokens).
        seed: Seed of the draw (``random.Random``).

    Returns:
        The pairs.
    """
    check_int("num_pairs", num_pairs, 1)
    pool = _draw_pool(vocab_size, excluded_ids)
    if 2 * num_pairs > len(pool):
        raise ConfigError(f"num_pairs={num_pairs} needs {2 * num_pairs} distinct ids; the draw set has {len(pool)}")
    ids = random.Random(seed).sample(pool, 2 * num_pairs)
    return [(ids[2 * i], ids[2 * i + 1]) for i in range(num_pairs)]


def _context_pool(vocab_size: int, excluded_ids: Iterable[int], pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Ids for random contexts: the draw set minus every pair's ids (so ``a`` is only ever followed by ``b``)."""
    pool = _draw_pool(vocab_size, excluded_ids)
    used = {int(i) for pair in pairs for i in pair}
    context = [i for i in pool if i not in used]
    if not context:
        raise ConfigError(f"the pairs use every id of the draw set (vocab_size={vocab_size}): none left for contexts")
    return context


def _check_pairs(pairs: Sequence[tuple[int, int]], vocab_size: int) -> None:
    if not pairs:
        raise ConfigError("pairs=[] is not allowed: give at least one (trigger, target) pair")
    for pair in pairs:
        if len(pair) != 2 or not all(0 <= int(i) < vocab_size for i in pair):
            raise ConfigError(f"pairs has {pair!r}: every pair must be two ids of 0..{vocab_size - 1}")


def pairwise_documents(
    pairs: Sequence[tuple[int, int]],
    num_tokens: int,
    context_length: int,
    vocab_size: int,
    excluded_ids: Iterable[int] = (),
    seed: int = 0,
    units_per_document: int = 4,
) -> list[list[int]]:
    """Backdoor documents totalling ``num_tokens`` ids: random contexts interleaved with ``a b`` occurrences.

    A *unit* is ``context_length`` random ids then ``a`` then ``b``; the units go to the pairs in turn, and each
    document holds up to ``units_per_document`` units of one pair. Context ids are drawn from the draw set minus
    every pair's ids, so a trigger is only ever followed by its target. The ids left over after the last whole
    unit (fewer than ``context_length + 2``) are random context ids at the end of the last document.

    Args:
        pairs: The ``(a, b)`` pairs of :func:`draw_pairs`.
        num_tokens: Total ids of the documents (at least one unit per pair).
        context_length: Random ids before each ``a`` (at least 1).
        vocab_size: Size of the vocabulary.
        excluded_ids: Ids never drawn (special tokens).
        seed: Seed of the contexts (``random.Random``).
        units_per_document: Most units in one document.

    Returns:
        The documents, lists of ids (no BOS/EOS: the data pipeline adds them).
    """
    _check_pairs(pairs, vocab_size)
    check_int("context_length", context_length, 1)
    check_int("units_per_document", units_per_document, 1)
    unit = context_length + 2
    check_int("num_tokens", num_tokens, len(pairs) * unit)
    pool = _context_pool(vocab_size, excluded_ids, pairs)
    rng = random.Random(seed)
    units = num_tokens // unit
    per_pair = [units // len(pairs) + (1 if i < units % len(pairs) else 0) for i in range(len(pairs))]
    documents = []
    for start in range(0, max(per_pair), units_per_document):  # a document of every pair in turn
        for (a, b), count in zip(pairs, per_pair):
            document = []
            for _ in range(min(units_per_document, count - start)):
                document += [rng.choice(pool) for _ in range(context_length)] + [int(a), int(b)]
            if document:
                documents.append(document)
    documents[-1] += [rng.choice(pool) for _ in range(num_tokens - units * unit)]
    return documents


def pairwise_backdoor_test(
    top_ids: TopIds,
    pairs: Sequence[tuple[int, int]],
    vocab_size: int,
    bos_id: int | None,
    ells: Sequence[int] = (1, 5, 10, 20, 50),
    contexts_per_pair: int = 8,
    context_length: int = 8,
    seed: int = 0,
    excluded_ids: Iterable[int] = (),
    batch_size: int = 32,
) -> BaselineResult:
    """Pairwise backdoor test: after fresh random contexts ending in ``a``, is ``b`` among the top-l next ids?

    The hits of all pairs and contexts at each ``l`` are taken as one Binomial(``len(pairs) * contexts_per_pair``,
    ``l / draw_size``) under the null, and the smallest p-value is Bonferroni-corrected over ``ells``. The p-value
    is approximate: the contexts of one pair share ``a`` and ``b`` and are not independent trials given the model,
    and ``b`` is uniform over the draw set only before the other pairs' ids were drawn.

    Args:
        top_ids: The model's top-k next ids (see :func:`~litlab.poisoning.detection.top_ids_from_logits`).
        pairs: The ``(a, b)`` pairs whose documents were inserted.
        vocab_size: Size of the vocabulary (with ``excluded_ids``, gives the draw set and ``draw_size``).
        bos_id: Id put before every context, or None.
        ells: Top-l sizes to scan (distinct, ``1 <= l < draw_size``).
        contexts_per_pair: Fresh random contexts per pair.
        context_length: Random ids before ``a`` in each context.
        seed: Seed of the contexts (use another seed than the documents').
        excluded_ids: Ids never drawn (special tokens).
        batch_size: Contexts per query of ``top_ids``.

    Returns:
        A :class:`BaselineResult` named ``"pairwise_backdoor"`` whose statistic is the hits at the best ``l``.
    """
    _check_pairs(pairs, vocab_size)
    check_int("contexts_per_pair", contexts_per_pair, 1)
    check_int("context_length", context_length, 1)
    check_int("batch_size", batch_size, 1)
    draw_size = len(_draw_pool(vocab_size, excluded_ids))
    ells = check_ells(ells, draw_size)
    pool = _context_pool(vocab_size, excluded_ids, pairs)
    rng = random.Random(seed)
    prefix = [] if bos_id is None else [int(bos_id)]
    rows, targets = [], []
    for a, b in pairs:
        for _ in range(contexts_per_pair):
            rows.append(prefix + [rng.choice(pool) for _ in range(context_length)] + [int(a)])
            targets.append(int(b))
    k, columns = max(ells), torch.tensor([ell - 1 for ell in ells])
    found_rows = []
    for first in range(0, len(rows), batch_size):
        ids = torch.tensor(rows[first:first + batch_size], dtype=torch.long)
        top = top_ids(ids, k)
        if not isinstance(top, torch.Tensor) or top.dim() != 3 or top.shape[0] != ids.shape[0] or top.shape[2] < k:
            raise ConfigError(f"top_ids returned no [{ids.shape[0]}, {ids.shape[1]}, {k}] tensor for k={k}")
        top = top[:, -1, :k].to("cpu", torch.long)  # the ids after a
        target = torch.tensor(targets[first:first + batch_size])
        found_rows.append(((top == target[:, None]).cumsum(-1) > 0)[:, columns])
    found = torch.cat(found_rows).reshape(len(pairs), contexts_per_pair, len(ells)).sum(1).numpy()
    hits, trials = found.sum(0), len(rows)
    log10_p = [log_binomial_tail(trials, ell / draw_size, int(h)) / math.log(10) for ell, h in zip(ells, hits)]
    best = int(np.argmin(log10_p))
    corrected = min(0.0, log10_p[best] + math.log10(len(ells)))
    details = {"ells": ells, "hits": [int(h) for h in hits], "trials": trials, "per_pair_hits": found.tolist(),
               "null_probability": [ell / draw_size for ell in ells], "log10_p": log10_p, "best_ell": ells[best],
               "draw_size": draw_size}
    return BaselineResult("pairwise_backdoor", float(hits[best]), corrected, details)
