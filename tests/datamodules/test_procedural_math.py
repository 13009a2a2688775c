"""Procedural math word problems: determinism, variety, answers equal to the rationale's computations."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest

from litlab.datamodules.procedural_math import TEMPLATES, generate_problem, generate_problems
from litlab.errors import ConfigError
from litlab.evaluation.math_answer import is_correct, normalize_number
from litlab.text.gsm8k import split_rationale

ANNOTATION = re.compile(r"<<([0-9+\-*/]+)=(-?\d+)>>(-?\d+)")
#: A phrase of each default template's question.
PHRASES = {
    "shopping": "each and",
    "sharing": "shares the rest equally",
    "rates": "pages per minute",
    "ages": "years older than",
    "discount": "During a sale",
    "stock": "more from",
    "groups": "rows of",
    "fraction": "are red",
    "savings": "per hour and works",
}


def evaluate(expression: str) -> Fraction:
    """``a op b op c ...`` left to right, exactly (the generator never mixes + - with * /)."""
    tokens = re.findall(r"\d+|[-+*/]", expression)
    value = Fraction(tokens[0])
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        value = {"+": value.__add__, "-": value.__sub__, "*": value.__mul__, "/": value.__truediv__}[op](
            Fraction(operand)
        )
    return value


@pytest.fixture(scope="module", params=["default", "variant"])
def problems(request):
    return request.param, generate_problems(300, seed=0, templates=request.param)


def test_deterministic_per_seed_and_seeds_differ(problems):
    family, generated = problems
    assert generate_problems(300, seed=0, templates=family) == generated
    assert generate_problems(20, seed=0, templates=family) == generated[:20]  # a prefix of a longer draw
    other = generate_problems(300, seed=1, templates=family)
    assert len({p.question for p in other} & {p.question for p in generated}) < 30


def test_questions_are_distinct(problems):
    _, generated = problems
    assert len({p.question for p in generated}) == len(generated)


def test_answers_are_the_rationales_computations(problems):
    _, generated = problems
    for p in generated:
        rationale, final = split_rationale(p.answer_text)
        assert (rationale, final) == (p.rationale, p.answer)
        assert re.fullmatch(r"[1-9]\d*", final), p  # a positive integer
        steps = ANNOTATION.findall(rationale)
        assert len(steps) >= 2, p
        for expression, value, shown in steps:
            assert evaluate(expression) == int(value) == int(shown), p
        assert int(steps[-1][1]) == normalize_number(final) == int(final)
        assert is_correct(p.answer_text, p.answer)
        assert rationale.count("\n") == len(steps) - 1  # one computation per line, GSM8K style


def test_default_templates_all_appear():
    generated = generate_problems(300, seed=0)
    for template, phrase in PHRASES.items():
        assert any(phrase in p.question for p in generated), template
    assert len(TEMPLATES) >= 8


def test_variant_family_differs():
    generated = generate_problems(300, seed=0, templates="variant")
    default = generate_problems(300, seed=0)
    default_phrases = set(PHRASES.values())
    assert not any(phrase in p.question for p in generated for phrase in default_phrases)
    assert np.median([int(p.answer) for p in generated]) > 3 * np.median([int(p.answer) for p in default])
    assert not {p.question for p in generated} & {p.question for p in default}


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("family", ["default", "variant"])
def test_every_template_makes_consistent_problems(template, family):
    rng = np.random.RandomState(5)
    for _ in range(50):
        p = generate_problem(rng, template, family)
        values = [int(v) for _, v, _ in ANNOTATION.findall(p.rationale)]
        assert values and values[-1] == int(p.answer) > 0 and all(v > 0 for v in values)


def test_argument_errors():
    with pytest.raises(ConfigError, match="templates='gsm8k'"):
        generate_problems(3, seed=0, templates="gsm8k")
    with pytest.raises(ConfigError, match="n=-1"):
        generate_problems(-1, seed=0)
    with pytest.raises(ConfigError, match="seed=-2"):
        generate_problems(1, seed=-2)
    assert generate_problems(0, seed=0) == []
