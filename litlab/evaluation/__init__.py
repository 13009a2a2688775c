"""Evaluation of language models: character-level tasks in the style of CUTE, scored by likelihood."""

from litlab.evaluation.char_tasks import (
    CHAR_TASKS,
    CharTaskExample,
    evaluate_char_tasks,
    make_char_tasks,
)

__all__ = ["CHAR_TASKS", "CharTaskExample", "evaluate_char_tasks", "make_char_tasks"]
