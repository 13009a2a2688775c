"""BBoxER's guarantees beyond generalization (arXiv 2507.01752): extraction, poisoning and differential privacy
of a seeded run that is told only comparisons.

All three rest on one fact: with the optimizer's seed fixed before the data is seen, the run's output is a
function of the comparison outcomes it was told (``bits`` of them in all, :mod:`litlab.evolution.bounds`).

**Extraction.** The output takes at most ``2^bits`` values, so it holds at most ``bits`` bits about the data
(``I(data; output) ≤ H(output) ≤ bits``). An attacker who sees it and must name a secret drawn uniformly from
``2^H`` values (a canary, a record) succeeds with probability at most ``Σ_o max_s P(S=s) = 2^(bits − H)``.

**Poisoning.** The fitness is a mean of per-example scores in ``[0, 1]`` over ``n`` examples, so altering ``k``
examples moves each candidate's fitness by at most ``k/n`` and a *difference* of two fitnesses by at most
``2k/n``: only comparisons closer than that can flip. If no comparison told during the run can flip, the
altered data set produces the same comparisons, hence the same candidates and the same output. For accuracy
(scores that are multiples of ``1/n``) the rule is exact: a comparison whose winner also wins ties (the
incumbent against a candidate; the earlier of two candidates) flips iff its margin ``m/n`` has ``m ≤ 2k − 1``;
one whose winner must be strictly better flips iff ``m ≤ 2k``. :func:`poisoning_certificate` finds, from the
run's history, the comparisons ``k`` altered examples could flip, and the largest ``k`` that provably changes
nothing (``robust_k``).

**Differential privacy.** By the same argument, replacing one example changes the output only if some
comparison is within ``2/n``. If over the optimizer's randomness each of the ``b`` comparisons is that close
with probability at most ``p``, the output distributions of neighbouring data sets differ by at most ``b·p`` in
total variation: the run is ``(ε, δ) = (0, b·p)``-DP. We state it in this form, derived from the paper's
comparison argument; the paper's text was not at hand to check its constants. :func:`dp_statement` shows the
formula with the run's own numbers, ``p`` estimated by the share of its comparisons within ``2/n``; it is not a
worst-case bound, and it is flagged *vacuous* when ``δ ≥ 1/n`` (publishing one random record outright is
``(0, 1/n)``-DP, so such a ``δ`` protects nobody), which is the case as soon as one comparison was that close.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from litlab.errors import ConfigError, check_int
from litlab.evolution.bounds import generalization_gap

_LATTICE_TOLERANCE = 1e-9


def extraction_bound(bits: float, secret_bits: float) -> float:
    """Probability that an attacker reading the output names a uniform secret of ``secret_bits`` bits:
    ``min(1, 2^(bits − secret_bits))``.

    Args:
        bits: Information told to the optimizer (``Σ log2 K_i``).
        secret_bits: Entropy of the secret (e.g. 128 for a random 128-bit canary).
    """
    for name, value in (("bits", bits), ("secret_bits", secret_bits)):
        if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{name}={value!r} is not allowed: it must be a non-negative finite number")
    return min(1.0, 2.0 ** (bits - secret_bits))


def poisoning_margin(k: int, n: int) -> float:
    """``2k/n``: the largest change of a fitness difference that ``k`` altered examples out of ``n`` can cause."""
    check_int("k", k, 0)
    check_int("n", n, 1)
    return 2 * k / n


def step_comparisons(history: Sequence[dict[str, Any]], mode: str = "max") -> list[list[tuple[float, bool]]]:
    """For each step, the (winner − loser) margin of every pair the comparison feedback ranked, and whether the
    winner also wins a tie (the incumbent, or the earlier candidate).

    Args:
        history: The engine's records (``index``, ``step``, ``fitness``, ``best``, ``nan``), in order.
        mode: ``max`` or ``min``: the orientation of ``fitness`` (margins are in the higher-is-better one).
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode={mode!r} is not allowed: choose 'max' or 'min'")
    sign = 1.0 if mode == "max" else -1.0
    steps: dict[int, list[dict[str, Any]]] = {}
    for record in history:
        steps.setdefault(int(record["step"]), []).append(record)
    out, incumbent = [], None
    for step in sorted(steps):
        records = steps[step]
        entrants: list[tuple[float, int]] = []  # (score, tie priority: lower wins ties)
        if incumbent is not None:
            entrants.append((incumbent, -1))
        for position, record in enumerate(records):
            score = -math.inf if record["nan"] or record["fitness"] is None else sign * float(record["fitness"])
            entrants.append((score, position))
        pairs = []
        for (a, pa), (b, pb) in itertools.combinations(entrants, 2):
            if a == b == -math.inf:
                continue  # two NaNs: no data can separate them
            (win, pw), (lose, pl) = ((a, pa), (b, pb)) if (a > b or (a == b and pa < pb)) else ((b, pb), (a, pa))
            pairs.append((win - lose, pw < pl))
        out.append(pairs)
        last = records[-1]["best"]
        incumbent = None if last is None else sign * float(last)
    return out


def flip_threshold(margin: float, winner_wins_ties: bool, n: int) -> int | None:
    """The fewest altered examples (of ``n``) that can flip a comparison decided by ``margin`` (None: none can,
    e.g. against a NaN score). Exact for scores on the ``1/n`` lattice, else the conservative ``⌈margin·n/2⌉``."""
    if not math.isfinite(margin):
        return None
    units = margin * n
    if abs(units - round(units)) <= _LATTICE_TOLERANCE * max(1.0, n):
        m = round(units)
        return (m + 2) // 2 if winner_wins_ties else max(1, (m + 1) // 2)
    return max(1, math.ceil(units / 2))


def poisoning_certificate(history: Sequence[dict[str, Any]], n: int, k: int = 1, mode: str = "max") -> dict[str, Any]:
    """Which comparisons of a run ``k`` altered examples could flip, and the largest ``k`` that changes nothing.

    Args:
        history: The engine's records.
        n: Number of examples of the fitness (the selection set).
        k: Number of altered examples to check.
        mode: Orientation of the fitness values in ``history``.

    Returns:
        ``comparisons`` (pairs ranked), ``steps_compared``, ``min_margin`` (None without comparisons),
        ``flippable`` (comparisons ``k`` examples can flip), ``flippable_steps``, ``margin`` (``2k/n``),
        ``robust_k`` (the output is certified unchanged under any ``k' ≤ robust_k`` altered examples; None: any
        number), ``output_certified`` (``flippable == 0``).
    """
    check_int("n", n, 1)
    check_int("k", k, 1)
    steps = step_comparisons(history, mode)
    thresholds = [[flip_threshold(m, wins, n) for m, wins in pairs] for pairs in steps]
    finite = [t for step in thresholds for t in step if t is not None]
    margins = [m for pairs in steps for m, _ in pairs if math.isfinite(m)]
    flippable = sum(1 for t in finite if t <= k)
    return {
        "k": k, "n": n, "margin": poisoning_margin(k, n),
        "comparisons": sum(len(pairs) for pairs in steps),
        "steps_compared": sum(1 for pairs in steps if pairs),
        "min_margin": min(margins) if margins else None,
        "flippable": flippable,
        "flippable_steps": sum(1 for step in thresholds if any(t is not None and t <= k for t in step)),
        "robust_k": (min(finite) - 1) if finite else None,
        "output_certified": flippable == 0,
    }


def dp_statement(history: Sequence[dict[str, Any]], n: int, mode: str = "max") -> dict[str, Any]:
    """The ``(0, b·p)``-DP formula with this run's numbers, and whether it is vacuous (``δ ≥ 1/n``).

    Args:
        history: The engine's records.
        n: Number of examples of the fitness.
        mode: Orientation of the fitness values in ``history``.
    """
    check_int("n", n, 1)
    steps = step_comparisons(history, mode)
    b = sum(1 for pairs in steps if pairs)
    close = sum(1 for pairs in steps if any((t := flip_threshold(m, w, n)) is not None and t <= 1 for m, w in pairs))
    p = close / b if b else 0.0
    delta = min(1.0, b * p)
    return {
        "formula": "(epsilon, delta) = (0, b*p), p = P(a comparison is within 2/n)",
        "b": b, "p_estimate": p, "epsilon": 0.0, "delta": delta,
        "substituted": f"(0, {b} * {p:.4g}) = (0, {delta:.4g})",
        "vacuous": delta >= 1.0 / n,
        "vacuous_threshold": 1.0 / n,
        "worst_case": "not certified: p is the share of this run's comparisons within 2/n, not a bound over data sets",
    }


def bounds_table(
    bits: float | None,
    n: int | None,
    history: Sequence[dict[str, Any]],
    feedback: str = "comparison",
    delta: float = 0.05,
    poisoning_k: int = 1,
    secret_bits: float = 128.0,
    mode: str = "max",
) -> dict[str, Any]:
    """BBoxER's bound table of one run: generalization, extraction, poisoning and DP.

    Args:
        bits: Bits told to the optimizer (None: unknown, no bound).
        n: Examples of the fitness (None: unknown).
        history: The engine's records.
        feedback: ``comparison`` or ``value`` (poisoning and DP rest on comparison-only feedback).
        delta: Failure probability of the generalization bound.
        poisoning_k: Altered examples checked by the poisoning certificate.
        secret_bits: Entropy of the secret of the extraction bound.
        mode: Orientation of the fitness values in ``history``.
    """
    table: dict[str, Any] = {"bits": bits, "n": n, "delta": delta, "feedback": feedback}
    known = bits is not None and n is not None
    table["generalization_gap"] = generalization_gap(bits, n, delta) if known else None
    table["extraction"] = None if bits is None else {
        "bits_in_output": bits, "bytes_in_output": bits / 8, "secret_bits": secret_bits,
        "secret_guess_probability": extraction_bound(bits, secret_bits)}
    comparisons = feedback == "comparison" and n is not None
    table["poisoning"] = poisoning_certificate(history, n, poisoning_k, mode) if comparisons else None
    table["dp"] = dp_statement(history, n, mode) if comparisons else None
    return table


def format_bounds(table: dict[str, Any]) -> str:
    """The bound table as Markdown rows (``| bound | value | meaning |``)."""
    rows = ["| bound | value | meaning |", "|---|---|---|"]
    gap = table.get("generalization_gap")
    rows.append(f"| generalization gap | {'n/a' if gap is None else f'{gap:.4f}'} | test error ≤ selection error + "
                f"gap w.p. ≥ {1 - table['delta']:.3g} ({table['bits']} bits, n = {table['n']}) |")
    ext = table.get("extraction")
    if ext:
        rows.append(f"| extraction | ≤ {ext['bits_in_output']:.0f} bits ({ext['bytes_in_output']:.1f} bytes) | "
                    f"a uniform {ext['secret_bits']:.0f}-bit secret is named w.p. ≤ "
                    f"{ext['secret_guess_probability']:.3g} |")
    poison = table.get("poisoning")
    if poison:
        robust = "any k" if poison["robust_k"] is None else f"k ≤ {poison['robust_k']}"
        rows.append(f"| poisoning (k = {poison['k']}) | {poison['flippable']} of {poison['comparisons']} comparisons "
                    f"within 2k/n = {poison['margin']:.4f} | output unchanged for {robust} altered examples |")
    dp = table.get("dp")
    if dp:
        rows.append(f"| DP {dp['formula']} | {dp['substituted']} | "
                    f"{'VACUOUS' if dp['vacuous'] else 'non-vacuous'} (δ ≥ 1/n = {dp['vacuous_threshold']:.4g} "
                    "is vacuous); p estimated on this run |")
    return "\n".join(rows)
