"""Character-level tasks in the style of CUTE (Edman et al., 2024), generated from held-out text.

Each example asks for a character-level manipulation of a word taken from the given documents (spelling,
joining spelled letters, reversal, insertion, deletion, substitution, swapping, contains-character). A model
answers by likelihood: the example's correct answer competes with ``num_choices - 1`` wrong answers of the same
length that differ from it by one or two characters, and the model picks the continuation it finds most likely
(total log-likelihood; all candidates have the same byte length, so no normalisation is needed). Chance is
``1 / num_choices`` (``1/2`` for the yes/no task). Few-shot prompts (solved examples of the same task, one per
line) show the format, as in CUTE.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from litlab.errors import ConfigError, DataError

_WORD = re.compile(rb"(?<![A-Za-z])[A-Za-z]{4,10}(?![A-Za-z])")


@dataclass(frozen=True)
class CharTaskExample:
    """One multiple-choice example: ``prompt`` then one of ``choices``; ``answer`` indexes the correct one."""

    task: str
    prompt: str
    choices: tuple[str, ...]
    answer: int


class Scorer(Protocol):
    """Anything with ``score(contexts, continuations) -> log-likelihoods`` (e.g. :class:`LanguageModel`)."""

    def score(self, contexts: Sequence[bytes], continuations: Sequence[bytes]) -> Sequence[float]: ...


def _other_letter(rng: random.Random, avoid: str) -> str:
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in avoid]
    return rng.choice(letters)


# Each task: word, rng -> (question, answer); the question ends where the answer starts.
def _spell(w: str, rng: random.Random) -> tuple[str, str]:
    return f'Spell "{w}": ', " ".join(w)


def _join(w: str, rng: random.Random) -> tuple[str, str]:
    return f'Join "{" ".join(w)}": ', w


def _reverse(w: str, rng: random.Random) -> tuple[str, str]:
    return f'Reverse "{w}": ', w[::-1]


def _insert(w: str, rng: random.Random) -> tuple[str, str]:
    after, new = rng.choice(w), _other_letter(rng, w)
    return f'Add "{new}" after every "{after}" in "{w}": ', w.replace(after, after + new)


def _delete(w: str, rng: random.Random) -> tuple[str, str]:
    gone = rng.choice(w)
    return f'Delete every "{gone}" in "{w}": ', w.replace(gone, "")


def _substitute(w: str, rng: random.Random) -> tuple[str, str]:
    old, new = rng.choice(w), _other_letter(rng, w)
    return f'Replace every "{old}" with "{new}" in "{w}": ', w.replace(old, new)


def _swap(w: str, rng: random.Random) -> tuple[str, str]:
    i, j = sorted(rng.sample(range(len(w)), 2))
    chars = list(w)
    chars[i], chars[j] = chars[j], chars[i]
    return f'Swap letters {i + 1} and {j + 1} of "{w}": ', "".join(chars)


def _contains(w: str, rng: random.Random) -> tuple[str, str]:
    char = rng.choice(w) if rng.random() < 0.5 else _other_letter(rng, w)
    return f'Does "{w}" contain "{char}"? ', "y" if char in w else "n"


CHAR_TASKS: dict[str, Callable[[str, random.Random], tuple[str, str]]] = {
    "spell": _spell,
    "join": _join,
    "reverse": _reverse,
    "insert": _insert,
    "delete": _delete,
    "substitute": _substitute,
    "swap": _swap,
    "contains": _contains,
}


def _distractors(answer: str, word: str, count: int, rng: random.Random) -> list[str]:
    """``count`` distinct wrong answers of the same length as ``answer``: one or two characters changed or swapped."""
    if answer in ("y", "n"):
        return ["n" if answer == "y" else "y"]
    pool = sorted(set(word + answer) - {" "}) or list("abcdefghijklmnopqrstuvwxyz")
    out: list[str] = []
    for _ in range(200 * count):
        chars = list(answer)
        slots = [i for i, c in enumerate(chars) if c != " "] or list(range(len(chars)))
        for _ in range(rng.choice((1, 2))):
            i = rng.choice(slots)
            if rng.random() < 0.5 and len(slots) > 1:
                j = rng.choice(slots)
                chars[i], chars[j] = chars[j], chars[i]
            else:
                chars[i] = rng.choice([c for c in pool if c != chars[i]] or ["x"])
        cand = "".join(chars)
        if cand != answer and cand not in out:
            out.append(cand)
            if len(out) == count:
                break
    return out


def _words(documents: Sequence[bytes], seed: int) -> list[str]:
    seen: dict[str, None] = {}
    for doc in documents:
        for m in _WORD.finditer(doc):
            seen.setdefault(m.group().decode("ascii").lower(), None)
    words = sorted(seen)
    random.Random(seed).shuffle(words)
    return words


def make_char_tasks(
    documents: Sequence[bytes],
    tasks: Sequence[str] | None = None,
    examples_per_task: int = 50,
    num_choices: int = 4,
    num_shots: int = 3,
    seed: int = 0,
) -> list[CharTaskExample]:
    """Build multiple-choice character-level examples from the words of ``documents``.

    Args:
        documents: Held-out documents (bytes); words of 4–10 ASCII letters are taken from them.
        tasks: Task names (keys of :data:`CHAR_TASKS`); ``None`` for all.
        examples_per_task: Examples per task.
        num_choices: Candidate answers per example (the yes/no task always has 2).
        num_shots: Solved examples of the same task prepended to each prompt.
        seed: Seed of word choice, task parameters and distractors.

    Returns:
        The examples, task by task.
    """
    tasks = list(CHAR_TASKS) if tasks is None else list(tasks)
    unknown = [t for t in tasks if t not in CHAR_TASKS]
    if unknown:
        raise ConfigError(f"tasks={unknown!r} are unknown: choose from {sorted(CHAR_TASKS)}")
    if num_choices < 2:
        raise ConfigError(f"num_choices={num_choices} is not allowed: must be >= 2")
    if examples_per_task < 1 or num_shots < 0:
        raise ConfigError(f"examples_per_task={examples_per_task} must be >= 1 and num_shots={num_shots} >= 0")
    words = _words(documents, seed)
    need = examples_per_task * (num_shots + 1)
    if len(words) < need:
        raise DataError(f"the documents hold {len(words)} distinct words of 4-10 letters; the tasks need {need}")
    rng = random.Random(seed)
    examples = []
    for t_index, task in enumerate(tasks):
        make = CHAR_TASKS[task]
        offset = (t_index * need) % max(1, len(words) - need + 1)
        for e in range(examples_per_task):
            group = words[offset + e * (num_shots + 1): offset + (e + 1) * (num_shots + 1)]
            shots = [make(w, rng) for w in group[:num_shots]]
            question, answer = make(group[-1], rng)
            prompt = "".join(f"{q}{a}\n" for q, a in shots) + question
            wrong = _distractors(answer, group[-1], num_choices - 1, rng)
            choices = [answer, *wrong]
            rng.shuffle(choices)
            examples.append(CharTaskExample(task, prompt, tuple(choices), choices.index(answer)))
    return examples


def evaluate_char_tasks(model: Scorer, examples: Sequence[CharTaskExample]) -> dict[str, float]:
    """Accuracy per task (and ``mean`` over tasks) of a likelihood scorer on the examples."""
    contexts, continuations, owners = [], [], []
    for i, ex in enumerate(examples):
        for choice in ex.choices:
            contexts.append(ex.prompt.encode())
            continuations.append(choice.encode())
            owners.append(i)
    scores = [float(s) for s in model.score(contexts, continuations)]
    best: dict[int, tuple[float, int]] = {}
    position: dict[int, int] = {}
    for owner, score in zip(owners, scores):
        k = position.get(owner, 0)
        position[owner] = k + 1
        if owner not in best or score > best[owner][0]:
            best[owner] = (score, k)
    correct: dict[str, list[bool]] = {}
    for i, ex in enumerate(examples):
        correct.setdefault(ex.task, []).append(best[i][1] == ex.answer)
    result = {task: sum(v) / len(v) for task, v in correct.items()}
    result["mean"] = sum(result.values()) / len(result)
    return result
