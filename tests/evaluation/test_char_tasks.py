"""Character-level tasks: the generated answers are right, the distractors wrong, and scoring picks the argmax."""

from __future__ import annotations

import re

import pytest

from litlab.errors import ConfigError, DataError
from litlab.evaluation.char_tasks import (
    CHAR_TASKS,
    evaluate_char_tasks,
    make_char_tasks,
)

DOCS = [
    b"The quick brown foxes jumped over lazy sleeping dogs while zebras watched from distant hills.",
    b"Python modules define classes, functions and variables; packages group related modules together.",
    b"Every iterator implements next, raising StopIteration when exhausted; generators simplify writing them.",
    b"Dictionaries map hashable keys onto arbitrary values, preserving insertion order since version three.",
]


def _solve(task: str, question: str) -> str:
    """Independent solver of each task from the question text alone."""
    quoted = re.findall(r'"([^"]*)"', question)
    if task == "spell":
        return " ".join(quoted[0])
    if task == "join":
        return quoted[0].replace(" ", "")
    if task == "reverse":
        return quoted[0][::-1]
    if task == "insert":
        new, after, word = quoted
        return "".join(c + new if c == after else c for c in word)
    if task == "delete":
        gone, word = quoted
        return "".join(c for c in word if c != gone)
    if task == "substitute":
        old, new, word = quoted
        return "".join(new if c == old else c for c in word)
    if task == "swap":
        i, j = (int(n) - 1 for n in re.findall(r"letters (\d+) and (\d+)", question)[0])
        chars = list(quoted[0])
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    if task == "contains":
        word, char = quoted
        return "y" if char in word else "n"
    raise AssertionError(task)


def test_answers_are_correct_and_distractors_wrong_with_equal_length():
    examples = make_char_tasks(DOCS, examples_per_task=3, num_choices=4, num_shots=1, seed=3)
    assert {e.task for e in examples} == set(CHAR_TASKS)
    for ex in examples:
        question = ex.prompt.rsplit("\n", 1)[-1]
        truth = _solve(ex.task, question)
        assert ex.choices[ex.answer] == truth
        assert len(set(ex.choices)) == len(ex.choices)
        if ex.task != "contains":
            assert len(ex.choices) == 4
            assert all(len(c) == len(truth) for c in ex.choices)
        # every shot line is solved correctly too
        for line in ex.prompt.split("\n")[:-1]:
            q, a = line.rsplit(": " if ex.task != "contains" else "? ", 1)
            assert _solve(ex.task, q + ": ") == a


def test_deterministic_by_seed():
    a = make_char_tasks(DOCS, examples_per_task=2, num_shots=1, seed=5)
    b = make_char_tasks(DOCS, examples_per_task=2, num_shots=1, seed=5)
    c = make_char_tasks(DOCS, examples_per_task=2, num_shots=1, seed=6)
    assert a == b
    assert a != c


class _Oracle:
    """Scores the correct answer highest when ``honest``, lowest otherwise."""

    def __init__(self, examples, honest: bool):
        self.truth = {ex.prompt: ex.choices[ex.answer] for ex in examples}
        self.honest = honest

    def score(self, contexts, continuations):
        out = []
        for ctx, cont in zip(contexts, continuations):
            right = self.truth[ctx.decode()] == cont.decode()
            out.append(float(right == self.honest))
        return out


def test_evaluate_picks_the_most_likely_choice():
    examples = make_char_tasks(DOCS, examples_per_task=2, num_shots=0, seed=0)
    good = evaluate_char_tasks(_Oracle(examples, True), examples)
    bad = evaluate_char_tasks(_Oracle(examples, False), examples)
    assert good["mean"] == 1.0
    assert bad["mean"] == 0.0
    assert set(good) == {*CHAR_TASKS, "mean"}


def test_errors_name_the_argument():
    with pytest.raises(ConfigError, match="tasks"):
        make_char_tasks(DOCS, tasks=["nope"])
    with pytest.raises(ConfigError, match="num_choices"):
        make_char_tasks(DOCS, num_choices=1)
    with pytest.raises(DataError, match="distinct words"):
        make_char_tasks(DOCS[:1], examples_per_task=50, num_shots=3)
