"""Exact scoring of math word problems: answer extraction priority, number normalisation, exact comparison."""

from __future__ import annotations

from fractions import Fraction

import pytest

from litlab.errors import ConfigError, DataError
from litlab.evaluation.math_answer import (
    exact_match_scores,
    extract_answer,
    is_correct,
    normalize_number,
    reference_value,
)


@pytest.mark.parametrize(
    "text, value",
    [
        ("1234", 1234),
        ("1,234", 1234),
        ("1,234,567", 1234567),
        ("$1,234.00", 1234),
        ("€5", 5),
        ("£ 5", 5),
        ("5 dollars", 5),
        ("12 apples", 12),
        ("5 cm", 5),
        ("12.0", 12),
        ("12.00", 12),
        ("7.", 7),
        ("50%", 50),
        ("50 %", 50),
        ("-3", -3),
        ("\u22123", -3),
        ("-$5", -5),
        ("$-5", -5),
        ("3/4", Fraction(3, 4)),
        ("0.75", Fraction(3, 4)),
        (".5", Fraction(1, 2)),
        ("7.5", Fraction(15, 2)),
        ("-1,234.50", Fraction(-2469, 2)),
        ("x = 5", 5),
    ],
)
def test_normalize_number(text, value):
    assert normalize_number(text) == value
    assert isinstance(normalize_number(text), Fraction)


@pytest.mark.parametrize("text", ["", "no number", "A4 paper", "3/0"])
def test_normalize_number_without_a_number_is_none(text):
    assert normalize_number(text) is None


@pytest.mark.parametrize(
    "generated, expected",
    [
        ("#### 7\nQuestion: Tom has 12 apples and 9 pears.", "7"),  # the marker wins over later numbers
        ("2 + 3 = 5 so #### 7 apples, or 9", "7"),
        ("#### 4\n#### 5", "4"),  # the first marker
        ("The answer is 7.", "7"),
        ("So the final answer is: $1,234.00 in total, 3 more", "$1,234.00"),
        ("THE ANSWER IS 12 apples", "12"),
        ("she had 3 then 5, then 10-3=7", "7"),  # the last number; 10-3 is not -3
        ("####\nThe answer is 8 and 2", "8"),  # an empty marker line passes to the next rule
        ("The answer is unknown. 4 + 4 = 8", "8"),  # no number right after the phrase: the last number
        ("The answer is unknown; the answer is **6**. 9", "6"),
        ("The answer is\n-2 degrees. 9", "-2"),
        ("-3", "-3"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer_priority(generated, expected):
    assert extract_answer(generated) == expected


def test_the_answer_is_comes_before_the_last_number():
    assert extract_answer("The answer is 7. Next, 2 + 2 = 4.") == "7"
    assert extract_answer("#### 3\nThe answer is 7.") == "3"


@pytest.mark.parametrize(
    "generated, reference",
    [
        ("#### 1,234", "1234"),
        ("#### 1234", "1,234"),
        ("The total is $1,234.00.\n#### $1,234.00", "1234"),
        ("She has 12 apples.", "12"),
        ("The answer is 7.", "7"),
        ("#### 7\nQ: 12 + 30 = 42", "7"),
        ("#### -3", "-3"),
        ("#### 3/4", "0.75"),
        ("#### 0.75", "3/4"),
        ("#### 50%", "50"),
        ("#### 12.0", "12"),
        ("work...\n#### 72", "Natalia sold 72 clips.\n#### 72"),  # a whole reference answer
    ],
)
def test_is_correct(generated, reference):
    assert is_correct(generated, reference)


@pytest.mark.parametrize(
    "generated, reference",
    [
        ("#### 7.5", "7"),
        ("#### 7", "7.5"),
        ("#### 0.333", "1/3"),  # exact: no float tolerance
        ("#### 0.333333333", "1/3"),
        ("I do not know.", "7"),
        ("", "0"),
        ("#### 7\nbut then 8", "8"),
        ("#### 3", "-3"),
        ("#### 1234.0000001", "1234"),
        ("#### 123456789012345678", "123456789012345679"),
    ],
)
def test_is_wrong(generated, reference):
    assert not is_correct(generated, reference)


def test_reference_without_a_number_raises():
    with pytest.raises(DataError, match="reference='n/a'"):
        is_correct("#### 7", "n/a")
    assert reference_value("rationale\n#### 1,000") == 1000


def test_exact_match_scores():
    scores = exact_match_scores(["#### 7", "The answer is 8.", "no idea"], ["7", "9", "1"])
    assert scores == [1.0, 0.0, 0.0]
    assert exact_match_scores([], []) == []
    with pytest.raises(ConfigError, match="2 generations, 1 references"):
        exact_match_scores(["1", "2"], ["1"])


def test_majority_answer_votes_on_exact_values():
    from litlab.evaluation.math_answer import majority_answer, majority_scores

    assert majority_answer(["#### 7", "so 7.0", "#### 8", "The answer is 1,000.", "#### 1000"]) == Fraction(7)
    assert majority_answer(["#### 8", "#### 7"]) == Fraction(8)  # a tie: the first answer seen
    assert majority_answer(["no number", ""]) is None
    assert majority_scores(["#### 3", "#### 4", "#### 4", "x", "#### 9", "#### 9"], ["4", "9"], 3) == [1.0, 1.0]
    with pytest.raises(ConfigError, match="5 generations for 2 problems x 3 samples"):
        majority_scores(["1"] * 5, ["1", "2"], 3)
