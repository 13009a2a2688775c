"""Evaluation of language models: character-level tasks in the style of CUTE (scored by likelihood), exact match on
math word problems, and the cached pre-prompt scorer of EPPO."""

from litlab.evaluation.char_tasks import (
    CHAR_TASKS,
    CharTaskExample,
    evaluate_char_tasks,
    make_char_tasks,
)
from litlab.evaluation.prompt_scores import ProblemBlock, PromptScorer

__all__ = ["CHAR_TASKS", "CharTaskExample", "ProblemBlock", "PromptScorer", "evaluate_char_tasks", "make_char_tasks"]
