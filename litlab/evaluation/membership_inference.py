"""The loss-based membership-inference attack (Yeom et al., arXiv 1709.01604) as an audit of post-training.

The attacker scores each problem by the model's loss on its reference solution and guesses "member" (was
trained on) for low losses. With members (the training problems) and non-members (fresh problems of the same
distribution), the attack's quality is the ROC of the score ``-loss``:

- ``auc``: the area under it (0.5: the model leaks nothing this attack can see), with the Hanley-McNeil standard
  error (Radiology 1982);
- ``tpr_at_fpr``: the true-positive rate at false-positive rates 1% and 0.1% (the low-FPR regime of
  Carlini et al., arXiv 2112.03570): the share of members whose score exceeds the threshold that at most that
  share of non-members exceed. With ``m`` non-members, false-positive rates below ``1/m`` can only be met by
  flagging no non-member at all (``fpr_resolution`` says which).

The loss of a problem is the mean negative log-likelihood per byte of ``" " + answer text + "\\n\\n"`` given the
zero-shot prompt ``Question: ...\\nAnswer:`` (``lm.score``, duck-typed: any model with ``score(contexts,
continuations, batch_size)`` returning log-likelihoods in nats, as
:class:`~litlab.lightning_modules.language_model.LanguageModel` has).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from litlab.errors import ConfigError
from litlab.text.gsm8k import ANSWER_END, MathProblem, format_question

FPRS = (0.01, 0.001)


def solution_losses(lm: Any, problems: Sequence[MathProblem], batch_size: int = 16) -> list[float]:
    """Mean NLL (nats) per byte of each problem's reference solution given its zero-shot prompt."""
    if not problems:
        raise ConfigError("solution_losses needs at least one problem")
    contexts = [format_question(p.question).encode() for p in problems]
    continuations = [f" {p.answer_text}{ANSWER_END}".encode() for p in problems]
    loglik = lm.score(contexts, continuations, batch_size=batch_size)
    return [-float(ll) / len(cont) for ll, cont in zip(loglik, continuations, strict=True)]


def roc_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """P(member score > non-member score) + P(tie)/2 (the Mann-Whitney statistic), higher scores = "member"."""
    members, others = _check(member_scores, nonmember_scores)
    ranks = _midranks(np.concatenate([members, others]))
    u = ranks[:members.size].sum() - members.size * (members.size + 1) / 2
    return float(u / (members.size * others.size))


def tpr_at_fpr(member_scores: Sequence[float], nonmember_scores: Sequence[float], fpr: float) -> float:
    """Share of members scoring above the lowest threshold that at most ``fpr`` of the non-members exceed."""
    members, others = _check(member_scores, nonmember_scores)
    if not 0 <= fpr < 1:
        raise ConfigError(f"fpr={fpr!r} is not allowed: it must be in [0, 1)")
    allowed = math.floor(fpr * others.size + 1e-9)  # non-members that may score above the threshold
    ordered = np.sort(others)[::-1]
    threshold = ordered[allowed] if allowed < others.size else -np.inf  # flag scores strictly above it
    return float((members > threshold).mean())


def hanley_mcneil_se(auc: float, num_members: int, num_nonmembers: int) -> float:
    """Standard error of an AUC estimate from ``num_members`` positives and ``num_nonmembers`` negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (num_members - 1) * (q1 - auc * auc)
           + (num_nonmembers - 1) * (q2 - auc * auc)) / (num_members * num_nonmembers)
    return math.sqrt(max(var, 0.0))


def loss_attack(member_losses: Sequence[float], nonmember_losses: Sequence[float]) -> dict[str, Any]:
    """The loss-based attack's AUC (± standard error) and TPR at 1% and 0.1% FPR; members should have lower loss.

    Args:
        member_losses: Losses of the training problems.
        nonmember_losses: Losses of fresh problems of the same distribution.
    """
    members = [-x for x in member_losses]
    others = [-x for x in nonmember_losses]
    auc = roc_auc(members, others)
    return {
        "auc": auc, "auc_se": hanley_mcneil_se(auc, len(members), len(others)),
        "tpr_at_fpr": {str(f): tpr_at_fpr(members, others, f) for f in FPRS},
        "members": len(members), "nonmembers": len(others),
        "fpr_resolution": 1.0 / len(others),
        "member_loss_mean": float(np.mean(member_losses)), "nonmember_loss_mean": float(np.mean(nonmember_losses)),
    }


def _check(members: Sequence[float], others: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(members, dtype=np.float64), np.asarray(others, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or not a.size or not b.size:
        raise ConfigError(f"the attack needs members and non-members (got {a.size} and {b.size} scores)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("the attack's scores must be finite (a loss is NaN or infinite)")
    return a, b


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N of ``values``, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    ordered = values[order]
    start = 0
    while start < values.size:
        stop = start
        while stop + 1 < values.size and ordered[stop + 1] == ordered[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks
