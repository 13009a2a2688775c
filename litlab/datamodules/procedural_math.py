"""An offline, procedural source of grade-school math word problems with step-by-step rationales.

Every problem is written in the answer format of GSM8K (arXiv 2110.14168): each rationale step shows its
arithmetic with a calculator annotation (``4 * 3 = <<4*3=12>>12``) and the final answer is the last computed
value (``#### 12`` in :meth:`~litlab.text.gsm8k.MathProblem.answer_text`). These are synthetic problems, not
GSM8K data. All answers are positive integers, computed from the drawn numbers.

Two template families share the nine problem structures (shopping, sharing, rates, ages, discounts, stock
changes, groups, fractions of a quantity, savings) but differ in wording, names, objects and number ranges:
``"default"`` (small numbers) and ``"variant"`` (other wording, larger numbers), for transfer tests.

The reasoning-gym package (its GSM-Symbolic generators) was considered and not wrapped: it pulls eleven
packages (~45 MB), takes ~1 s to import, its templates are built from GSM8K's test questions, and some of its
final answers are written ``36.0``.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np

from litlab.errors import ConfigError, check_choice, check_int
from litlab.text.gsm8k import MathProblem

FAMILIES = ("default", "variant")
_NAMES = {
    "default": tuple("Ava Ben Carmen Dmitri Elena Farid Grace Hiro Ines Jamal Keiko Liam".split()),
    "variant": tuple("Mateo Nadia Oskar Priya Quentin Rosa Sven Tomoko Umar Vera Wen Yusuf".split()),
}
#: (singular, plural) of things bought by the piece.
_ITEMS = {
    family: tuple(tuple(pair.split("/")) for pair in pairs.split(", "))
    for family, pairs in {
        "default": "notebook/notebooks, pencil/pencils, muffin/muffins, ticket/tickets, candle/candles, "
        "comic book/comic books",
        "variant": "lamp/lamps, backpack/backpacks, kettle/kettles, helmet/helmets, scarf/scarves, "
        "board game/board games",
    }.items()
}
#: Countable things (plural) that can be coloured, shared and boxed.
_THINGS = {
    "default": ("marbles", "stickers", "beads", "crayons", "balloons", "shells"),
    "variant": ("buttons", "tiles", "postcards", "magnets", "ribbons", "badges"),
}


class _Draw:
    """Draws of one problem: a RandomState with inclusive integer ranges and choices."""

    def __init__(self, rng: np.random.RandomState, family: str):
        self.rng = rng
        self.family = family
        self.variant = family == "variant"

    def int(self, low: int, high: int) -> int:
        return int(self.rng.randint(low, high + 1))

    def pick(self, options: tuple) -> object:
        return options[int(self.rng.randint(len(options)))]

    def names(self, k: int) -> list[str]:
        return [str(x) for x in self.rng.choice(_NAMES[self.family], size=k, replace=False)]

    def item(self) -> tuple[str, str]:
        return self.pick(_ITEMS[self.family])  # type: ignore[return-value]

    def thing(self) -> str:
        return str(self.pick(_THINGS[self.family]))


class _Steps:
    """The rationale of one problem; :meth:`calc` computes a value and records its annotated arithmetic."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.last: int | None = None

    def calc(self, *parts: int | str) -> tuple[int, str]:
        """``calc(a, "*", b, "/", c)`` -> ``(value, "a * b / c = <<a*b/c=v>>v")``, evaluated left to right.

        The operators of one call are all additive or all multiplicative (so left to right is the usual
        precedence) and the value must be an integer.
        """
        ops = set(parts[1::2])
        if not (ops <= {"+", "-"} or ops <= {"*", "/"}):
            raise ValueError(f"mixed precedence in {parts}")
        value = Fraction(parts[0])
        for op, operand in zip(parts[1::2], parts[2::2]):
            value = {"+": value + operand, "-": value - operand, "*": value * operand, "/": value / operand}[op]
        if value.denominator != 1:
            raise ValueError(f"{parts} is not an integer")
        result = int(value)
        self.last = result
        text = " ".join(str(p) for p in parts)
        return result, f"{text} = <<{text.replace(' ', '')}={result}>>{result}"

    def say(self, line: str) -> None:
        self.lines.append(line)


def _shopping(d: _Draw, s: _Steps) -> str:
    lo, hi, plo, phi = (12, 60, 11, 95) if d.variant else (2, 9, 2, 15)
    first, second = d.rng.choice(len(_ITEMS[d.family]), 2, replace=False)
    items1, items2 = _ITEMS[d.family][first][1], _ITEMS[d.family][second][1]
    name = d.names(1)[0]
    a, p, b, q = d.int(lo, hi), d.int(plo, phi), d.int(lo, hi), d.int(plo, phi)
    x, tx = s.calc(a, "*", p)
    y, ty = s.calc(b, "*", q)
    s.say(f"The {items1} cost {tx} dollars.")
    s.say(f"The {items2} cost {ty} dollars.")
    _, tz = s.calc(x, "+", y)
    s.say(f"{name} spends {tz} dollars in all.")
    if d.variant:
        return (
            f"At the market, {items1} cost ${p} apiece and {items2} cost ${q} apiece. {name} purchases {a} "
            f"{items1} and {b} {items2}. What is {name}'s total bill in dollars?"
        )
    return f"{name} buys {a} {items1} at ${p} each and {b} {items2} at ${q} each. How many dollars does {name} spend?"


def _sharing(d: _Draw, s: _Steps) -> str:
    each, k, keep = (
        (d.int(15, 120), d.int(3, 12), d.int(10, 99)) if d.variant else (d.int(2, 12), d.int(2, 6), d.int(1, 10))
    )
    name, thing, total = d.names(1)[0], d.thing(), each * k + keep
    rest, t1 = s.calc(total, "-", keep)
    _, t2 = s.calc(rest, "/", k)
    if d.variant:
        s.say(f"After setting {keep} aside, the club has {t1} {thing} left to split.")
        s.say(f"Each pile has {t2} {thing}.")
        return (
            f"A club led by {name} collected {total} {thing}. After setting aside {keep}, the members split "
            f"the remainder evenly into {k} piles. How many {thing} are in each pile?"
        )
    s.say(f"After keeping {keep}, {name} has {t1} {thing} to share.")
    s.say(f"Each friend gets {t2} {thing}.")
    return (
        f"{name} has {total} {thing}. {name} keeps {keep} and shares the rest equally among {k} friends. "
        f"How many {thing} does each friend get?"
    )


def _rates(d: _Draw, s: _Steps) -> str:
    r, h = (d.int(15, 90), d.int(3, 12)) if d.variant else (d.int(2, 12), d.int(2, 5))
    minutes, t1 = s.calc(h, "*", 60)
    _, t2 = s.calc(r, "*", minutes)
    s.say(f"{h} hours is {t1} minutes.")
    if d.variant:
        s.say(f"The machine produces {t2} bolts.")
        return (
            f"A factory machine produces {r} bolts every minute. If it runs for {h} hours without stopping, "
            f"how many bolts does it produce?"
        )
    s.say(f"The printer prints {t2} pages.")
    return f"A printer prints {r} pages per minute. How many pages does it print in {h} hours?"


def _ages(d: _Draw, s: _Steps) -> str:
    now, gap, k = (
        (d.int(18, 50), d.int(5, 35), d.int(5, 25)) if d.variant else (d.int(5, 30), d.int(2, 30), d.int(2, 10))
    )
    older, younger = d.names(2)
    future = now + k
    b, t1 = s.calc(future, "-", k)
    _, t2 = s.calc(b, "+", gap)
    s.say(f"{younger} is {t1} years old now.")
    s.say(f"{older} is {t2} years old now.")
    if d.variant:
        return (
            f"{k} years from now, {younger} will turn {future}. {older} was born {gap} years before {younger}. "
            f"What is {older}'s age today?"
        )
    return (
        f"{older} is {gap} years older than {younger}. In {k} years, {younger} will be {future} years old. "
        f"How old is {older} now?"
    )


def _discount(d: _Draw, s: _Steps) -> str:
    price = 40 * d.int(3, 25) if d.variant else 20 * d.int(1, 10)
    pct = 5 * d.int(1, 12)
    (item, _), name = d.item(), d.names(1)[0]
    off, t1 = s.calc(price, "*", pct, "/", 100)
    _, t2 = s.calc(price, "-", off)
    s.say(f"{pct}% of ${price} is {t1} dollars.")
    s.say(f"The {item} costs {t2} dollars after the discount.")
    if d.variant:
        return (
            f"The regular price of a {item} is ${price}. {name} has a coupon that takes {pct}% off the price. "
            f"What does {name} pay for the {item} with the coupon, in dollars?"
        )
    return f"A {item} costs ${price}. During a sale, it is {pct}% off. How many dollars does the {item} cost on sale?"


def _stock(d: _Draw, s: _Steps) -> str:
    thing = d.thing()
    if d.variant:
        a, b, c, e = d.int(100, 900), d.int(50, 400), d.int(50, 400), d.int(20, 300)
        c = min(c, a + b - 1)
        x, t1 = s.calc(a, "+", b)
        y, t2 = s.calc(x, "-", c)
        _, t3 = s.calc(y, "+", e)
        s.say(f"After the delivery the shop has {t1} {thing}.")
        s.say(f"After the sales it has {t2} {thing}.")
        s.say(f"At closing time it has {t3} {thing}.")
        return (
            f"A shop starts the day with {a} {thing} in stock. In the morning a delivery of {b} arrives, by noon "
            f"customers have bought {c}, and in the afternoon {e} more arrive. How many {thing} are in stock at "
            f"closing time?"
        )
    name, giver, taker = d.names(3)
    a, b = d.int(10, 50), d.int(2, 30)
    c = d.int(1, a + b - 1)
    x, t1 = s.calc(a, "+", b)
    _, t2 = s.calc(x, "-", c)
    s.say(f"After getting more, {name} has {t1} {thing}.")
    s.say(f"After giving some away, {name} has {t2} {thing}.")
    return (
        f"{name} has {a} {thing}. {name} gets {b} more from {giver}, then gives {c} to {taker}. "
        f"How many {thing} does {name} have now?"
    )


def _groups(d: _Draw, s: _Steps) -> str:
    g, r, c = (d.int(12, 80), d.int(6, 24), d.int(6, 30)) if d.variant else (d.int(2, 9), d.int(2, 6), d.int(2, 8))
    thing = d.thing()
    per, t1 = s.calc(r, "*", c)
    _, t2 = s.calc(g, "*", per)
    if d.variant:
        s.say(f"Each carton holds {t1} {thing}.")
        s.say(f"The school receives {t2} {thing}.")
        return (
            f"A school orders {g} cartons of {thing}. Every carton contains {r} packs, and every pack contains "
            f"{c} {thing}. How many {thing} does the school receive?"
        )
    s.say(f"Each box holds {t1} {thing}.")
    s.say(f"The boxes hold {t2} {thing} in all.")
    return f"There are {g} boxes. Each box has {r} rows of {c} {thing}. How many {thing} are there in all?"


def _fraction(d: _Draw, s: _Steps) -> str:
    den = d.int(3, 12) if d.variant else d.int(2, 6)
    num, thing, name = d.int(1, den - 1), d.thing(), d.names(1)[0]
    n = den * (d.int(10, 60) if d.variant else d.int(2, 10))
    part, t1 = s.calc(n, "*", num, "/", den)
    _, t2 = s.calc(n, "-", part)
    if d.variant:
        s.say(f"{name} sells {t1} {thing}.")
        s.say(f"{t2} {thing} remain unsold.")
        return f"Out of {n} {thing} in {name}'s collection, {num}/{den} are sold at a fair. How many {thing} remain unsold?"
    s.say(f"{name} has {t1} red {thing}.")
    s.say(f"So {t2} {thing} are blue.")
    return (
        f"{name} has {n} {thing}. {num}/{den} of them are red and the rest are blue. How many blue {thing} "
        f"does {name} have?"
    )


def _savings(d: _Draw, s: _Steps) -> str:
    w, h, k = (d.int(15, 60), d.int(20, 45), d.int(6, 30)) if d.variant else (d.int(5, 20), d.int(2, 12), d.int(2, 6))
    name = d.names(1)[0]
    earned, t1 = s.calc(w, "*", h)
    spend = d.int(1, earned - 1)
    saved, t2 = s.calc(earned, "-", spend)
    _, t3 = s.calc(saved, "*", k)
    s.say(f"Each week {name} earns {t1} dollars.")
    s.say(f"Each week {name} saves {t2} dollars.")
    s.say(f"In {k} weeks {name} saves {t3} dollars.")
    if d.variant:
        return (
            f"{name}'s hourly wage is ${w}, and {name} puts in {h} hours every week. Weekly expenses come to "
            f"${spend}. How many dollars has {name} set aside after {k} weeks?"
        )
    return (
        f"{name} earns ${w} per hour and works {h} hours a week. {name} spends ${spend} each week. "
        f"How many dollars does {name} save in {k} weeks?"
    )


#: Template name -> writer ``(draw, steps) -> question`` (the steps hold the rationale and the answer).
TEMPLATES: dict[str, Callable[[_Draw, _Steps], str]] = {
    "shopping": _shopping,
    "sharing": _sharing,
    "rates": _rates,
    "ages": _ages,
    "discount": _discount,
    "stock": _stock,
    "groups": _groups,
    "fraction": _fraction,
    "savings": _savings,
}


def generate_problem(rng: np.random.RandomState, template: str, templates: str = "default") -> MathProblem:
    """One problem of one template, drawn from ``rng``.

    Args:
        rng (np.random.RandomState): The source of the draws (advanced by the call).
        template (str): A key of :data:`TEMPLATES`.
        templates (str): Template family: ``"default"`` or ``"variant"``.
    """
    check_choice("template", template, list(TEMPLATES))
    check_choice("templates", templates, FAMILIES)
    steps = _Steps()
    question = TEMPLATES[template](_Draw(rng, templates), steps)
    if steps.last is None or steps.last <= 0:
        raise RuntimeError(f"template {template!r} computed no positive answer ({steps.last})")
    return MathProblem(question, "\n".join(steps.lines), str(steps.last))


def generate_problems(n: int, seed: int, templates: str = "default") -> list[MathProblem]:
    """``n`` distinct procedural word problems, a function of ``(n, seed, templates)`` only.

    Each problem's template is drawn uniformly from :data:`TEMPLATES`; a problem whose question was already
    drawn is redrawn (so no question is in two splits of :func:`~litlab.datamodules.math_problems.split_problems`).

    Args:
        n (int): Number of problems (>= 0).
        seed (int): Seed of the draws (>= 0).
        templates (str): Template family: ``"default"`` or ``"variant"`` (other wording, larger numbers).

    Returns:
        list[MathProblem]: The problems; each ``answer`` is the rationale's last computed value.

    Raises:
        ConfigError: A bad argument, or ``n`` is more than the templates can make distinct.
    """
    check_int("n", n, 0)
    check_int("seed", seed, 0)
    check_choice("templates", templates, FAMILIES)
    rng = np.random.RandomState(seed)
    names = list(TEMPLATES)
    problems: list[MathProblem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise ConfigError(
                f"n={n} is not allowed: the {templates!r} templates gave only {len(problems)} distinct problems"
            )
        problem = generate_problem(rng, names[int(rng.randint(len(names)))], templates)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems
