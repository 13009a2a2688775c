"""GSM8K answer format: splitting an answer at its ``#### `` line, formatting it back, the MathProblem record."""

from __future__ import annotations

import pytest

from litlab.errors import DataError
from litlab.text.gsm8k import MathProblem, format_answer, has_marker, split_rationale

ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


def test_split_rationale_of_a_gsm8k_answer():
    rationale, final = split_rationale(ANSWER)
    assert final == "72"
    assert rationale == "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips."


def test_split_rationale_takes_the_last_marker_line_and_strips():
    rationale, final = split_rationale("step #### 3 inline\n#### 1\nmore\n####  1,234 \n")
    assert final == "1,234"
    assert rationale == "step #### 3 inline\n#### 1\nmore"
    assert split_rationale("#### 5") == ("", "5")
    assert split_rationale("a\r\n#### 5\r\n") == ("a", "5")


@pytest.mark.parametrize("bad", ["no marker at all 42", "####42", "", "#### ", "rationale\n####   \n"])
def test_split_rationale_without_a_final_answer_raises(bad):
    with pytest.raises(DataError, match="####"):
        split_rationale(bad)
    assert isinstance(DataError("x"), ValueError)


def test_split_rationale_of_a_non_string_raises():
    with pytest.raises(DataError, match="not a string"):
        split_rationale(42)  # type: ignore[arg-type]


def test_has_marker():
    assert has_marker(ANSWER) and has_marker("  #### 1")
    assert not has_marker("72") and not has_marker("x ####72")


def test_format_answer_round_trips():
    rationale, final = split_rationale(ANSWER)
    assert format_answer(rationale, final) == ANSWER
    assert format_answer("", "7") == "#### 7"
    assert format_answer("two\nlines\n\n", " 7 ") == "two\nlines\n#### 7"
    for bad in ("", "  ", "1\n2"):
        with pytest.raises(DataError, match="final"):
            format_answer("r", bad)


def test_math_problem_record_round_trip():
    problem = MathProblem.from_answer_text("How many clips?", ANSWER)
    assert problem.answer == "72" and problem.rationale.endswith("72 clips.")
    assert problem.answer_text == ANSWER
    assert problem.to_record() == {"question": "How many clips?", "answer": ANSWER}
    assert problem == MathProblem(**{"question": "How many clips?", "rationale": problem.rationale, "answer": "72"})
    with pytest.raises(DataError):
        MathProblem.from_answer_text("q", "no final line")
