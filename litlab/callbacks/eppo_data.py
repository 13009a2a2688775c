"""The three problem sets of EPPO: the demonstration pool, the fitness subset and the held-out test problems.

From one math-problem spec (:func:`litlab.datamodules.math_corpus.parse_math_spec`: ``procedural_math:...`` or
a GSM8K-format ``file.jsonl:...``), or from the trainer's datamodule when no spec is given (a
:class:`~litlab.datamodules.math_problems.MathProblemsDataModule`, or a ``TextDataModule`` whose source is such
a spec, e.g. the corpus the language model was just trained on):

- **pool**: the *train* split (its first ``pool_size`` problems), what demonstrations are chosen from;
- **fitness**: the first ``num_fitness`` problems of the *selection* split, what a pre-prompt is scored on
  during the search (disjoint from the pool, so a pre-prompt never holds the answer of a problem it is scored
  on, and unseen in training when the model was trained on the train split);
- **heldout**: the *test* split (its first ``num_heldout`` problems), or every record of ``test_data`` (a
  GSM8K-format ``.jsonl``, e.g. GSM8K's own test file); only measured, never searched on.

The splits are disjoint by construction (:func:`litlab.datamodules.math_problems.split_problems`). A record
without its ``#### <answer>`` line is an error naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litlab.datamodules.math_corpus import is_math_spec, parse_math_spec
from litlab.datamodules.math_problems import read_gsm8k_jsonl
from litlab.errors import ConfigError
from litlab.text.gsm8k import MathProblem


@dataclass(frozen=True)
class PromptProblems:
    """The pool, the fitness subset and the held-out problems of one EPPO run, and where they come from."""

    pool: tuple[MathProblem, ...]
    fitness: tuple[MathProblem, ...]
    heldout: tuple[MathProblem, ...]
    source: str


def _datamodule_of(data: str | None, datamodule: Any) -> tuple[Any, str]:
    if data is not None:
        return parse_math_spec(data)[0], data
    if callable(getattr(datamodule, "problems", None)):
        return datamodule, type(datamodule).__name__
    source = getattr(datamodule, "source", None)
    if isinstance(source, str) and is_math_spec(source):
        return parse_math_spec(source)[0], source
    raise ConfigError("EPPO needs math word problems: give data='procedural_math:...' (or a GSM8K-format "
                      "'<file>.jsonl:num_train=...,num_selection=...,num_test=...'), or train with a "
                      f"MathProblemsDataModule or a TextDataModule on such a spec; got {type(datamodule).__name__}")


def load_prompt_problems(data: str | None, test_data: str | None = None, datamodule: Any = None,
                         pool_size: int | None = None, num_fitness: int = 100,
                         num_heldout: int | None = None) -> PromptProblems:
    """The pool, fitness subset and held-out problems (see the module docstring).

    Args:
        data: A math-problem spec; None: the datamodule's problems.
        test_data: A GSM8K-format ``.jsonl`` of held-out problems (default: the spec's test split).
        datamodule: The trainer's datamodule (used when ``data`` is None).
        pool_size: Demonstrations in the pool (default: the whole train split).
        num_fitness: Problems of the fitness subset.
        num_heldout: Held-out problems (default: all).

    Raises:
        ConfigError: no problem source, an empty pool or fitness subset, or a count the splits cannot give.
        DataError: an unreadable file or a bad record (naming the file and line).
    """
    source, name = _datamodule_of(data, datamodule)
    train = source.problems("train")
    pool = train if pool_size is None else train[:pool_size]
    if not pool:
        raise ConfigError(f"the demonstration pool is empty: data={name!r} has no train problem")
    if pool_size is not None and pool_size > len(train):
        raise ConfigError(f"pool_size={pool_size} is not allowed: data={name!r} has {len(train)} train problems")
    selection = source.problems("selection")
    if num_fitness > len(selection):
        raise ConfigError(f"num_fitness={num_fitness} is not allowed: data={name!r} has {len(selection)} selection "
                          "problems (raise num_selection in the spec)")
    test = read_gsm8k_jsonl(test_data) if test_data is not None else source.problems("test")
    if num_heldout is not None and num_heldout > len(test):
        raise ConfigError(f"num_heldout={num_heldout} is not allowed: {test_data or name!r} has {len(test)} "
                          "test problems")
    heldout = test if num_heldout is None else test[:num_heldout]
    return PromptProblems(tuple(pool), tuple(selection[:num_fitness]), tuple(heldout), name)
