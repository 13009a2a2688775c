"""Generalization bounds of a seeded evolutionary run (AfterLearnER, arXiv 2410.11330; BBoxER,
arXiv 2507.01752).

With the optimizer's seed fixed before seeing the data, the run's output is a function of what the
optimizer was told. If step ``i`` can end in ``K_i`` distinguishable outcomes, the run returns one of at most
``Π K_i`` models, so ``bits = Σ log2 K_i``. Hoeffding's inequality for a score in ``[0, 1]`` on ``n``
independent selection examples and a union bound over those models give, with probability ``≥ 1 − δ``::

    L_test ≤ L_sel + sqrt((bits · ln 2 + ln(2/δ)) / (2n))

This formula reproduces the worked numbers of the BBoxER paper (n = 7473, δ = 0.05, one bit per step: b = 100 →
0.070, 300 → 0.119, 1200 → 0.236: 0.0699 / 0.1190 / 0.2364). The one-sided ``ln(1/δ)`` rounds to the same
three decimals (0.0696 / 0.1188 / 0.2363); dropping the δ term does not (0.068 / 0.118 / 0.236). The
two-sided ``ln(2/δ)`` is kept, as the paper states it.

Outcomes per step, as the engine counts them (``λ`` candidates told together):

- ``feedback="comparison"``: the optimizer is told the ranking of the ``λ`` candidates together with the
  incumbent (the best so far): ``K = (λ+1)!`` orderings, one bit per step for a (1+1) run (``λ = 1``); the
  first step has no incumbent: ``K = λ!`` (zero bits for the identity alone).
- ``feedback="value"``: exact values of a metric with at most ``n + 1`` levels (a mean of ``n`` 0/1 scores,
  e.g. accuracy): ``K = (n + 1)^λ``, i.e. ``log2(n+1)`` bits per evaluation. For metrics with more levels the
  count is a lower bound of the information told and the bound is only indicative.

Best-of ``r`` independent runs adds ``log2 r`` bits.
"""

from __future__ import annotations

import math

from litlab.errors import ConfigError


def generalization_gap(bits: float, n: int, delta: float = 0.05) -> float:
    """``sqrt((bits·ln 2 + ln(2/δ)) / (2n))``: the gap between test and selection error, w.p. ``≥ 1 − δ``.

    Args:
        bits: Information told to the optimizer, ``Σ log2 K_i``.
        n: Number of examples in the selection set.
        delta: Failure probability, in ``(0, 1)``.
    """
    if not (isinstance(bits, int | float) and bits >= 0 and math.isfinite(bits)):
        raise ConfigError(f"bits must be a non-negative finite number, got {bits!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    return math.sqrt((bits * math.log(2) + math.log(2 / delta)) / (2 * n))


def comparison_bits(num_candidates: int, has_incumbent: bool = True) -> float:
    """``log2 K`` of one comparison step: ``K = (λ+1)!`` with an incumbent, ``λ!`` without."""
    return math.log2(math.factorial(num_candidates + (1 if has_incumbent else 0)))


def value_bits(num_candidates: int, n: int) -> float:
    """``log2 K`` of one step told exact values of a metric with ``n + 1`` levels: ``λ · log2(n+1)``."""
    return num_candidates * math.log2(n + 1)


def best_of_runs_bits(runs: int) -> float:
    """Extra bits for keeping the best of ``runs`` independent runs: ``log2 runs``."""
    if not isinstance(runs, int) or runs < 1:
        raise ConfigError(f"runs must be a positive integer, got {runs!r}")
    return math.log2(runs)
