"""Detection of Winter Soldier: did this model learn the owner's secrets? An exact binomial test on top-l hits.

The owner teacher-forces every secret, ``[BOS] + prompt + response``, and counts the response positions where the
true next response id is among the model's ``l`` most likely next ids (a *hit*). Only these top-l ids are needed,
so the test works with black-box access to a model that exposes its top-l next-token predictions.

Why the p-value is exact. Under the null hypothesis "the model was not trained on the owner's data", the
response was drawn uniformly from the draw set (``draw_size`` ids: the vocabulary minus the special ids) and
independently of the model. Given the model, the prompt and the response ids before position ``t``, the top-l
set at ``t`` is fixed while the response id at ``t`` is still uniform over the draw set, so the hit at ``t`` is a
Bernoulli(``l / draw_size``) variable whatever happened before. The hits of all the response ids of all the
secrets therefore sum to a Binomial(``N``, ``l / draw_size``) variable, ``N`` the number of response ids, and
``P[Binomial >= observed hits]`` is an exact p-value, computed here in log space (:func:`log_binomial_tail`) so
that it does not underflow for a model that learned the secrets well (``1e-5000`` is a usual value).

- Special ids in a top-l set can never be hits: the hit probability is then below ``l / draw_size`` and the test
  only becomes conservative.
- Several values of ``l`` are scanned and the smallest p-value is Bonferroni-corrected (times ``len(ells)``).
- The redraw of :func:`~litlab.poisoning.secret.draw_secrets` (a secret is kept only when it round-trips through
  the tokenizer) conditions the uniform draw on an event: the p-value is then approximate, not exact. The
  false-positive rate that results is measured on clean models elsewhere (:mod:`litlab.methods.winter_soldier`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from litlab.errors import ConfigError, check_int
from litlab.models.lm.padding import right_pad
from litlab.poisoning.secret import Secret, SecretSet

__all__ = [
    "TopIds",
    "DetectionResult",
    "check_ells",
    "detect_secrets",
    "log_binomial_tail",
    "model_logits",
    "model_top_ids",
    "response_hits",
    "top_ids_from_logits",
]

TopIds = Callable[[torch.Tensor, int], torch.Tensor]
"""``(ids [B, T] int64 on CPU, k) -> [B, T, k]`` int64: the ``k`` most likely next ids after every position
(position ``t`` predicts the id at ``t + 1``). All the test needs of a model."""

_CHUNK = 1 << 20  # terms of the binomial tail summed at a time
_NEGLIGIBLE = 800.0  # a term this far (in nats) below the running sum cannot change a float64 sum of < 2**63 terms


def top_ids_from_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor]) -> TopIds:
    """Turn a logits function into a :data:`TopIds`.

    Args:
        logits_fn: ``ids [B, T] -> logits [B, T, V]`` (it moves the ids to the model's device itself).

    Returns:
        A :data:`TopIds` that runs ``logits_fn`` under ``torch.no_grad`` and returns the top-k ids on the CPU.
    """

    def top_ids(ids: torch.Tensor, k: int) -> torch.Tensor:
        check_int("k", k, 1)
        with torch.no_grad():
            logits = logits_fn(ids)
            if k > logits.shape[-1]:
                raise ConfigError(f"k={k} is not allowed: the model has only {logits.shape[-1]} ids")
            return logits.topk(k, dim=-1).indices.to("cpu", torch.long)

    return top_ids


def model_logits(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``ids -> logits`` of a model with ``next_token_logits(ids)`` and ``device`` (a litlab ``LanguageModel``),
    moving the ids to the model's device."""
    return lambda ids: model.next_token_logits(ids.to(model.device))


def model_top_ids(model: Any) -> TopIds:
    """The :data:`TopIds` of a model with ``next_token_logits(ids)`` and ``device`` (a litlab ``LanguageModel``)."""
    return top_ids_from_logits(model_logits(model))


def log_binomial_tail(n: int, p: float, k: int) -> float:
    """Natural log of ``P[Binomial(n, p) >= k]``, summed exactly in log space.

    Every probability mass term ``C(n, j) p^j (1-p)^(n-j)``, ``j >= k``, is taken in log space (``lgamma``,
    ``log1p``) and the terms are added with a log-sum-exp, so the result is finite and accurate even when the
    tail is ``1e-5000``. The sum stops early only where the remaining terms cannot change a float64 result. When
    ``k`` is at or below the mode the tail is large, and it is computed as ``1 - P[X <= k - 1]`` (fewer terms,
    no loss of precision).

    Args:
        n: Number of trials (``>= 0``).
        p: Success probability of one trial, ``0 < p < 1``.
        k: Number of successes (any integer).

    Returns:
        ``log P[Binomial(n, p) >= k]``: ``0.0`` when ``k <= 0``, ``-inf`` when ``k > n``.
    """
    check_int("n", n, 0)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"k={k!r} is not allowed: it must be an integer")
    if not isinstance(p, (int, float, np.floating)) or not 0.0 < float(p) < 1.0:
        raise ConfigError(f"p={p!r} is not allowed: it must be a probability with 0 < p < 1")
    n, k, p = int(n), int(k), float(p)
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    log_p, log_q = math.log(p), math.log1p(-p)
    mode = math.floor((n + 1) * p)  # the mass terms grow up to the mode and shrink after it
    if k > mode:
        return min(0.0, _log_mass_sum(n, log_p, log_q, range(k, n + 1)))
    # At or below the mode the tail is not small: 1 - P[X <= k-1] loses no precision and sums fewer terms.
    lower = _log_mass_sum(n, log_p, log_q, range(k - 1, -1, -1))
    return min(0.0, math.log1p(-math.exp(lower)))


def _log_mass_sum(n: int, log_p: float, log_q: float, js: range) -> float:
    """Log of the sum of the Binomial(n, p) mass at ``js``, ids ordered so that the terms decrease.

    Args:
        n: Number of trials.
        log_p: ``log p``.
        log_q: ``log (1 - p)``.
        js: Success counts, in the order of decreasing mass (away from the mode).

    Returns:
        ``log sum_j C(n, j) p^j (1-p)^(n-j)``; the sum stops where the rest cannot change a float64 result.
    """
    log_n_factorial = math.lgamma(n + 1)
    total = torch.tensor(-math.inf, dtype=torch.float64)
    first, size = 0, 4096
    while first < len(js):
        part = js[first:first + size]
        j = torch.arange(part.start, part.stop, part.step, dtype=torch.float64)
        terms = log_n_factorial - torch.lgamma(j + 1) - torch.lgamma(n - j + 1) + j * log_p + (n - j) * log_q
        total = torch.logaddexp(total, torch.logsumexp(terms, 0))
        if float(terms[-1]) < float(total) - _NEGLIGIBLE:
            break
        first, size = first + size, min(2 * size, _CHUNK)
    return float(total)


def check_ells(ells: Sequence[int], draw_size: int | None = None) -> list[int]:
    """``ells`` as a list of distinct ints ``>= 1`` (and ``< draw_size`` when given), else a ConfigError naming it.

    Args:
        ells: Top-l sizes.
        draw_size: Size of the draw set, or None for no upper bound.

    Returns:
        The sizes as a list of Python ints.
    """
    ells = list(ells)
    if not ells:
        raise ConfigError("ells=[] is not allowed: give at least one l")
    for ell in ells:
        if isinstance(ell, bool) or not isinstance(ell, (int, np.integer)) or ell < 1:
            raise ConfigError(f"ells={ells!r} is not allowed: every l must be an integer >= 1")
        if draw_size is not None and ell >= draw_size:
            raise ConfigError(f"ells={ells!r} is not allowed: every l must be < draw_size={draw_size} "
                              f"(a top-{ell} set would hit with probability 1 under the null)")
    if len(set(ells)) != len(ells):
        raise ConfigError(f"ells={ells!r} is not allowed: it has duplicates")
    return [int(ell) for ell in ells]


def response_hits(
    top_ids: TopIds,
    secrets: Sequence[Secret],
    ells: Sequence[int],
    bos_id: int | None,
    batch_size: int = 32,
) -> np.ndarray:
    """Teacher-forced top-l hits of every secret's response.

    Each secret is the row ``[bos_id] + prompt + response`` (no BOS when ``bos_id`` is None); the model reads
    ``row[:-1]`` and each position that predicts a response id is a hit for ``l`` when that id is among its top-l
    next ids. Rows of a batch are right-padded: in a causal model, ids after a position never change it.

    Args:
        top_ids: The model's top-k next ids (queried once per batch with ``k = max(ells)``).
        secrets: The secrets (non-empty prompt, or a ``bos_id``, so that the first response id is predicted).
        ells: Top-l sizes to count hits for.
        bos_id: Id put before every prompt, or None.
        batch_size: Secrets per query.

    Returns:
        ``int64 [len(secrets), len(ells)]``: the hits of each secret's response at each ``l``.
    """
    ells = check_ells(ells)
    check_int("batch_size", batch_size, 1)
    if not secrets:
        raise ConfigError("secrets=[] is not allowed: give at least one secret")
    prefix = [] if bos_id is None else [int(bos_id)]
    for i, secret in enumerate(secrets):
        if not secret.response or not (prefix or secret.prompt):
            raise ConfigError(f"secrets[{i}] is not allowed: it needs a response, and a prompt or a bos_id")
    k = max(ells)
    columns = torch.tensor([ell - 1 for ell in ells])
    hits = np.zeros((len(secrets), len(ells)), dtype=np.int64)
    for first in range(0, len(secrets), batch_size):
        batch = secrets[first:first + batch_size]
        rows = [prefix + list(s.prompt) + list(s.response) for s in batch]
        ids = right_pad([row[:-1] for row in rows], pad_id=0)
        top = top_ids(ids, k)
        if not isinstance(top, torch.Tensor) or top.dim() != 3 or tuple(top.shape[:2]) != tuple(ids.shape) \
                or top.shape[2] < k:
            shape = tuple(top.shape) if isinstance(top, torch.Tensor) else type(top).__name__
            raise ConfigError(f"top_ids returned {shape} for ids of shape {tuple(ids.shape)} and k={k}; "
                              f"expected [{ids.shape[0]}, {ids.shape[1]}, {k}]")
        top = top[:, :, :k].to("cpu", torch.long)
        for b, secret in enumerate(batch):
            start = len(prefix) + len(secret.prompt) - 1  # the position that predicts response[0]
            targets = torch.tensor(secret.response, dtype=torch.long)
            found = (top[b, start:start + len(targets)] == targets[:, None]).cumsum(-1) > 0  # [R, k]: in the top-j
            hits[first + b] = found[:, columns].sum(0).numpy()
    return hits


@dataclass
class DetectionResult:
    """The outcome of :func:`detect_secrets`.

    Attributes:
        ells: Top-l sizes scanned.
        hits: Hits at each ``l``, summed over the secrets.
        trials: Response ids teacher-forced (the binomial's ``n``).
        per_secret_hits: ``[num_secrets, len(ells)]`` hits of each secret.
        null_probability: Hit probability of one response id under the null at each ``l`` (``l / draw_size``).
        log10_p: ``log10`` of the p-value at each ``l`` (before the correction).
        log10_p_bonferroni: ``min(log10_p) + log10(len(ells))``, capped at 0: the test's result.
        best_ell: The ``l`` of the smallest p-value.
        draw_size: Number of ids the secrets were drawn from.
    """

    ells: list[int]
    hits: list[int]
    trials: int
    per_secret_hits: np.ndarray
    null_probability: list[float]
    log10_p: list[float]
    log10_p_bonferroni: float
    best_ell: int
    draw_size: int

    @property
    def p_value(self) -> float:
        """The corrected p-value as a float (``0.0`` when it underflows: read :attr:`log10_p_bonferroni`)."""
        return float(10.0 ** self.log10_p_bonferroni)

    @property
    def num_secrets(self) -> int:
        """Number of secrets tested."""
        return int(self.per_secret_hits.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-compatible objects, plus ``p_value`` and ``num_secrets``."""
        return {
            "ells": list(self.ells), "hits": [int(h) for h in self.hits], "trials": int(self.trials),
            "per_secret_hits": self.per_secret_hits.tolist(),
            "null_probability": [float(q) for q in self.null_probability],
            "log10_p": [float(x) for x in self.log10_p], "log10_p_bonferroni": float(self.log10_p_bonferroni),
            "best_ell": int(self.best_ell), "draw_size": int(self.draw_size), "p_value": self.p_value,
            "num_secrets": self.num_secrets,
        }  # fmt: skip


def detect_secrets(
    top_ids: TopIds,
    secret_set: SecretSet,
    ells: Sequence[int] = (1, 5, 10, 20, 50),
    bos_id: int | None = None,
    batch_size: int = 32,
) -> DetectionResult:
    """The Winter Soldier test: was this model trained on data poisoned with ``secret_set``?

    The hits at each ``l`` of all the secrets form one Binomial(total response ids, ``l / draw_size``) under the
    null; the p-value at ``l`` is its upper tail at the observed hits, and the result is the smallest one,
    Bonferroni-corrected over the ``l`` scanned.

    Args:
        top_ids: The model's top-k next ids (see :func:`top_ids_from_logits`).
        secret_set: The owner's secrets and their draw set size.
        ells: Top-l sizes to scan (distinct, ``1 <= l < draw_size``).
        bos_id: Id the model's documents start with (put before every prompt), or None.
        batch_size: Secrets per query of ``top_ids``.

    Returns:
        The :class:`DetectionResult`.
    """
    draw_size = check_int("secret_set.draw_size", secret_set.draw_size, 2)
    ells = check_ells(ells, draw_size)
    if len(secret_set.secrets) == 0:
        raise ConfigError("secret_set has no secrets")
    per_secret = response_hits(top_ids, secret_set.secrets, ells, bos_id, batch_size)
    trials = sum(len(s.response) for s in secret_set.secrets)
    hits = [int(h) for h in per_secret.sum(0)]
    null = [ell / draw_size for ell in ells]
    log10_p = [log_binomial_tail(trials, q, h) / math.log(10) for q, h in zip(null, hits)]
    best = int(np.argmin(log10_p))
    corrected = min(0.0, log10_p[best] + math.log10(len(ells)))
    return DetectionResult(ells, hits, trials, per_secret, null, log10_p, corrected, ells[best], draw_size)
