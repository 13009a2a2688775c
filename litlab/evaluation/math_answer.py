"""Exact scoring of math word problems: the final answer of a model's generated solution against the reference.

**Extraction** (:func:`extract_answer`), in priority order:

1. ``####``: the first number on the line of the *first* ``####`` marker of the generation (GSM8K's answer
   format, arXiv 2110.14168), so ``"#### 7\\nQuestion: ... 12"`` answers 7;
2. ``answer is``: the number right after the first ``[the] [final] answer is[:]`` (any case) that is followed
   by one (``The answer is unknown`` is passed over);
3. the last number of the text.

A marker whose line holds no number passes to the next rule.

**Normalisation** (:func:`normalize_number`): the first number of a string, as an exact
:class:`fractions.Fraction`. Thousands separators (``1,234``), a currency sign before the number (``$5``,
``€5``, ``-$5``), words and units after it (``5 dollars``, ``12 apples``, ``5 cm``), trailing zeros
(``12.00``), a trailing period (``7.``), a percent sign (``50%`` is 50, not 0.5), signs (``-3``, ``−3``),
decimals (``.5``) and simple fractions (``3/4`` is 0.75) are handled. A comma is a thousands separator only
in groups of three digits (``1,5`` is the two numbers 1 and 5; decimal commas are not read). Mixed numbers
(``1 1/2``) and scientific notation are not read as one number.

**Comparison** (:func:`is_correct`) is exact: both sides become Fractions of their decimal strings, so
``7.5 != 7`` and ``0.333 != 1/3``; there is no float tolerance.

The maintained ``math-verify`` package was measured for this and not used: it compares with a rounding
tolerance (``0.333333`` verifies as ``1/3``), takes the last number over a ``#### 7`` line, needs
``parsing_timeout=None`` outside the main thread (it times out with ``signal.alarm``), and costs about 0.7 ms
per comparison against about 0.02 ms here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from litlab.errors import ConfigError, DataError
from litlab.text.gsm8k import has_marker, split_rationale

#: A number: optional sign and currency, digits (thousands groups of three, or plain), an optional
#: decimal part, an optional ``/denominator`` and an optional percent sign. It does not start inside a
#: word or right after a digit or period, so ``10-3`` holds 10 and 3 and ``A4`` holds no number.
NUMBER = re.compile(
    r"""
    (?<![\w.])
    (?P<sign>[-\u2212])?
    (?:(?P<currency>[$\u20ac\u00a3\u00a5])\s?)?
    (?P<sign2>[-\u2212])?
    (?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+)
    (?:\s?/\s?(?P<den>\d+)(?![\d.]\d))?
    (?P<percent>\s?%)?
    """,
    re.VERBOSE,
)
_MARKER = re.compile(r"####")
_ANSWER_IS = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s+is\b[\s:*(]*", re.IGNORECASE)


def _first_number_on_line(text: str, start: int) -> str | None:
    """The text of the first number in ``text[start:]`` before the next line break, or None."""
    end = text.find("\n", start)
    match = NUMBER.search(text, start, len(text) if end < 0 else end)
    return None if match is None else match.group(0).strip()


def extract_answer(text: str) -> str | None:
    """The final answer's number text in a generated solution (see the module docstring for the rules).

    Args:
        text (str): The model's generation (without the prompt).

    Returns:
        str | None: The number as written (e.g. ``"$1,234.00"``, ``"50%"``, ``"3/4"``), or None when the text
        has no number.
    """
    marker = _MARKER.search(text)
    if marker is not None:
        found = _first_number_on_line(text, marker.end())
        if found is not None:
            return found
    for phrase in _ANSWER_IS.finditer(text):
        found = NUMBER.match(text, phrase.end())
        if found is not None:
            return found.group(0).strip()
    last = None
    for last in NUMBER.finditer(text):
        pass
    return None if last is None else last.group(0).strip()


def _to_fraction(match: re.Match[str]) -> Fraction | None:
    """The exact value of a :data:`NUMBER` match (None for a zero denominator)."""
    value = Fraction(match.group("body").replace(",", ""))
    if match.group("den") is not None:
        den = int(match.group("den"))
        if den == 0:
            return None
        value /= den
    negative = (match.group("sign") is not None) != (match.group("sign2") is not None)
    return -value if negative else value


def normalize_number(s: str) -> Fraction | None:
    """The exact value of the first number in ``s`` (see the module docstring for what is read).

    Args:
        s (str): A final answer such as ``"1,234"``, ``"$1,234.00"``, ``"12 apples"``, ``"-3"``, ``"3/4"`` or
            ``"50%"``.

    Returns:
        Fraction | None: The value, or None when ``s`` holds no number (or a zero denominator).
    """
    match = NUMBER.search(s)
    return None if match is None else _to_fraction(match)


def reference_value(reference: str) -> Fraction:
    """The exact value of a reference: a final answer (``"42"``) or a whole answer ending in a ``#### 42`` line.

    Args:
        reference (str): The reference final answer or answer text.

    Raises:
        DataError: The reference holds no number.
    """
    final = split_rationale(reference)[1] if has_marker(reference) else reference
    value = normalize_number(final)
    if value is None:
        raise DataError(f"reference={reference!r} is not allowed: its final answer {final!r} holds no number")
    return value


def is_correct(generated: str, reference_final: str) -> bool:
    """Whether the final answer extracted from ``generated`` equals the reference exactly.

    Args:
        generated (str): The model's generation.
        reference_final (str): The reference's final answer string (what follows ``#### ``), or the whole
            reference answer text with its ``#### `` line.

    Returns:
        bool: False when the generation has no number.

    Raises:
        DataError: The reference holds no number.
    """
    expected = reference_value(reference_final)
    found = extract_answer(generated)
    return found is not None and normalize_number(found) == expected


def exact_match_scores(generations: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-problem exact-match scores (1.0 or 0.0) of generations against their references.

    Args:
        generations (Sequence[str]): The model's generations, one per problem.
        references (Sequence[str]): The reference final answers (or answer texts), in the same order.

    Raises:
        ConfigError: The two sequences differ in length.
        DataError: A reference holds no number.
    """
    if len(generations) != len(references):
        raise ConfigError(
            f"generations and references are not allowed to differ in length: "
            f"{len(generations)} generations, {len(references)} references"
        )
    return [float(is_correct(g, r)) for g, r in zip(generations, references)]


def majority_answer(generations: Sequence[str]) -> Fraction | None:
    """Self-consistency: the most frequent final answer of several generations (ties: the first seen).

    Args:
        generations (Sequence[str]): Samples of one problem.

    Returns:
        The answer's exact value, or None when no generation holds a number.
    """
    counts: dict[Fraction, int] = {}
    for text in generations:
        found = extract_answer(text)
        value = None if found is None else normalize_number(found)
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None  # max keeps the first of equal counts


def majority_scores(generations: Sequence[str], references: Sequence[str], samples: int) -> list[float]:
    """Per-problem self-consistency scores: ``generations`` holds ``samples`` consecutive samples per problem.

    Raises:
        ConfigError: ``len(generations) != samples * len(references)``.
    """
    if len(generations) != samples * len(references):
        raise ConfigError(f"{len(generations)} generations for {len(references)} problems x {samples} samples")
    return [float(majority_answer(generations[i * samples:(i + 1) * samples]) == reference_value(ref))
            for i, ref in enumerate(references)]
