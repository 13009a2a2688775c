"""BBoxER's bound table against numbers computed by hand, and the poisoning rule against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from litlab.errors import ConfigError
from litlab.evolution.bounds import generalization_gap
from litlab.evolution.privacy import (
    bounds_table,
    dp_statement,
    extraction_bound,
    flip_threshold,
    format_bounds,
    poisoning_certificate,
    poisoning_margin,
    step_comparisons,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def history_of(fitness: list[float], per_step: int = 1) -> list[dict]:
    """Engine-style records (best so far: strictly better replaces it) for fitness values asked in steps."""
    records, best = [], None
    for index, value in enumerate(fitness):
        best = value if best is None or value > best else best
        records.append({"index": index, "step": index // per_step, "fitness": value, "best": best, "nan": False})
    return records


# n = 10; the (1+1) run: identity 0.5, then 0.6 (better by 1/10), 0.4 (worse by 2/10), 0.9 (better by 3/10),
# 0.9 (a tie: the incumbent keeps it), 0.2 (worse by 7/10).
RUN = [0.5, 0.6, 0.4, 0.9, 0.9, 0.2]
# Hand-computed: fewest altered examples that flip each comparison. A win needs strict improvement, so a
# candidate better by m/10 loses it when 2k >= m; the incumbent (it wins ties) loses when 2k >= m + 1.
HAND_FLIP = [1, 2, 2, 1, 4]


def test_flip_thresholds_and_certificate_match_the_hand_computed_table():
    steps = step_comparisons(history_of(RUN))
    assert [len(pairs) for pairs in steps] == [0, 1, 1, 1, 1, 1]
    assert [flip_threshold(m, wins, 10) for pairs in steps for m, wins in pairs] == HAND_FLIP
    one = poisoning_certificate(history_of(RUN), n=10, k=1)
    assert (one["comparisons"], one["flippable"], one["robust_k"], one["margin"]) == (5, 2, 0, 0.2)
    assert one["min_margin"] == 0.0 and not one["output_certified"]
    two = poisoning_certificate(history_of(RUN), n=10, k=2)
    assert two["flippable"] == 4 and two["margin"] == 0.4
    far = poisoning_certificate(history_of([0.5, 0.9, 0.2, 0.3]), n=10, k=1)  # margins 4, 7, 6 (tenths)
    assert far["robust_k"] == 1 and far["output_certified"]  # k = 2 flips the first (0.9 better by 0.4)


def test_flip_thresholds_equal_brute_force_over_altered_examples():
    """Per-example 0/1 scores of two models on n = 6 examples: alter k columns in every possible way."""
    rng = np.random.RandomState(0)
    n = 6
    for _ in range(40):
        a, b = rng.randint(0, 2, n), rng.randint(0, 2, n)
        for a_wins_ties in (True, False):
            def a_ahead(x, y, ties=a_wins_ties):
                return x.sum() > y.sum() or (ties and x.sum() == y.sum())
            truth = None
            for k in range(1, n + 1):
                flips = any(a_ahead(x, y) != a_ahead(a, b)
                            for cols in itertools.combinations(range(n), k)
                            for new in itertools.product([0, 1], repeat=2 * k)
                            for x, y in [(_put(a, cols, new[:k]), _put(b, cols, new[k:]))])
                if flips:
                    truth = k
                    break
            ahead = a_ahead(a, b)
            margin = abs(int(a.sum()) - int(b.sum())) / n
            winner_wins_ties = a_wins_ties if ahead else not a_wins_ties
            assert flip_threshold(margin, winner_wins_ties, n) == truth, (a, b, a_wins_ties)


def _put(v: np.ndarray, cols: tuple[int, ...], values: tuple[int, ...]) -> np.ndarray:
    out = v.copy()
    out[list(cols)] = values
    return out


def test_population_steps_rank_every_pair_with_the_incumbent():
    history = history_of([0.5, 0.7, 0.5, 0.6], per_step=1)
    history = [history[0]] + [{**r, "step": 1} for r in history[1:]]  # one step of three candidates
    pairs = step_comparisons(history)[1]
    assert len(pairs) == 6  # incumbent + 3 candidates
    assert sorted(round(m, 6) for m, _ in pairs) == [0.0, 0.1, 0.1, 0.1, 0.2, 0.2]
    nan = history + [{"index": 4, "step": 2, "fitness": None, "best": 0.7, "nan": True}]
    assert flip_threshold(step_comparisons(nan)[2][0][0], True, 10) is None  # nothing flips a NaN comparison


def test_extraction_and_margins_by_hand():
    assert extraction_bound(10, 128) == 2.0 ** -118
    assert extraction_bound(3, 8) == 1 / 32
    assert extraction_bound(130, 128) == 1.0
    assert poisoning_margin(3, 100) == 0.06
    with pytest.raises(ConfigError, match="secret_bits=-1"):
        extraction_bound(3, -1)
    with pytest.raises(ConfigError, match="n=0"):
        poisoning_margin(1, 0)


def test_dp_formula_is_shown_with_its_numbers_and_flagged_when_vacuous():
    dp = dp_statement(history_of(RUN), n=10)
    assert (dp["b"], dp["p_estimate"], dp["delta"], dp["epsilon"]) == (5, 0.4, 1.0, 0.0)
    assert dp["substituted"] == "(0, 5 * 0.4) = (0, 1)" and dp["vacuous"] and "b*p" in dp["formula"]
    clear = dp_statement(history_of([0.5, 0.9, 0.2, 0.3]), n=10)
    assert clear["delta"] == 0.0 and not clear["vacuous"]


def test_bound_table_by_hand():
    table = bounds_table(bits=5.0, n=10, history=history_of(RUN), delta=0.05, poisoning_k=1, secret_bits=16)
    # sqrt((5 ln 2 + ln(2/0.05)) / (2·10)) = sqrt((3.4657 + 3.6889) / 20) = 0.5981
    assert table["generalization_gap"] == pytest.approx(0.5981, abs=5e-5)
    assert table["generalization_gap"] == generalization_gap(5.0, 10, 0.05)
    assert table["extraction"]["secret_guess_probability"] == 2.0 ** -11
    assert table["extraction"]["bytes_in_output"] == 0.625
    assert table["poisoning"]["flippable"] == 2 and table["dp"]["vacuous"]
    text = format_bounds(table)
    assert "| generalization gap | 0.5981 |" in text and "VACUOUS" in text and "k ≤ 0" in text
    value = bounds_table(bits=5 * math.log2(11), n=10, history=history_of(RUN), feedback="value")
    assert value["poisoning"] is None and value["dp"] is None  # they rest on comparison-only feedback
