"""Math word problems in the answer format of GSM8K (arXiv 2110.14168): a step-by-step rationale, then a last
line ``#### <final answer>``.

Pure Python, shared by the datamodules (which read and generate problems) and the evaluation (which compares
a model's final answer with the reference's):

* :class:`MathProblem`: a question, its rationale and its final answer string.
* :func:`split_rationale`: an answer text -> ``(rationale, final answer string)``.
* :func:`format_answer`: the inverse, ``(rationale, final)`` -> the answer text.
"""

from __future__ import annotations

from dataclasses import dataclass

from litlab.errors import DataError

#: The start of the line that holds the final answer.
MARKER = "#### "


def _marker_line(lines: list[str]) -> int | None:
    """The index of the last line that starts with the marker (after leading whitespace), or None."""
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].lstrip().startswith(MARKER):
            return index
    return None


def has_marker(answer: str) -> bool:
    """Whether ``answer`` has a line that starts with ``#### `` (the final-answer line).

    Args:
        answer (str): An answer text.
    """
    return _marker_line(answer.splitlines()) is not None


def split_rationale(answer: str) -> tuple[str, str]:
    """Split an answer text at its final-answer line.

    The final-answer line is the *last* line that starts with ``#### ``; the rationale is everything before it
    (trailing whitespace removed), the final answer string is the rest of that line after the marker, stripped.
    Lines after the final-answer line (GSM8K has none) are ignored.

    Args:
        answer (str): A GSM8K-style answer, e.g. ``"She has 2 + 3 = <<2+3=5>>5 apples.\\n#### 5"``.

    Returns:
        tuple[str, str]: ``(rationale, final)``, e.g. ``("She has 2 + 3 = <<2+3=5>>5 apples.", "5")``.

    Raises:
        DataError: ``answer`` has no ``#### `` line, or its final answer is empty.
    """
    if not isinstance(answer, str):
        raise DataError(f"answer={answer!r} is a {type(answer).__name__}, not a string")
    lines = answer.splitlines()
    index = _marker_line(lines)
    if index is None:
        raise DataError(f"the answer has no final-answer line starting with {MARKER!r}: {_preview(answer)}")
    final = lines[index].lstrip()[len(MARKER) :].strip()
    if not final:
        raise DataError(f"the final-answer line {MARKER!r} of the answer is empty: {_preview(answer)}")
    return "\n".join(lines[:index]).rstrip(), final


def format_answer(rationale: str, final: str) -> str:
    """The GSM8K-style answer text of a rationale and a final answer: ``rationale + "\\n#### " + final``.

    Args:
        rationale (str): The step-by-step solution (may be empty).
        final (str): The final answer string (one non-empty line).

    Raises:
        DataError: ``final`` is empty or has a line break.
    """
    final = final.strip()
    if not final or "\n" in final or "\r" in final:
        raise DataError(f"final={final!r} is not allowed: the final answer must be one non-empty line")
    rationale = rationale.rstrip()
    return f"{rationale}\n{MARKER}{final}" if rationale else f"{MARKER}{final}"


def _preview(text: str, limit: int = 80) -> str:
    """``text`` shortened to ``limit`` characters, repr-quoted, for error messages."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


@dataclass(frozen=True)
class MathProblem:
    """One math word problem.

    Args:
        question (str): The problem statement.
        rationale (str): The step-by-step solution, without the final-answer line.
        answer (str): The final answer string (what follows ``#### ``), e.g. ``"42"``.
    """

    question: str
    rationale: str
    answer: str

    @classmethod
    def from_answer_text(cls, question: str, answer_text: str) -> MathProblem:
        """The problem of a question and a GSM8K-style answer text (rationale + ``#### N`` line).

        Raises:
            DataError: ``answer_text`` has no (non-empty) ``#### `` line.
        """
        rationale, final = split_rationale(answer_text)
        return cls(question, rationale, final)

    @property
    def answer_text(self) -> str:
        """The GSM8K-style answer: the rationale, then the ``#### <answer>`` line."""
        return format_answer(self.rationale, self.answer)

    def to_record(self) -> dict[str, str]:
        """The GSM8K JSON-lines record ``{"question": ..., "answer": ...}`` of this problem."""
        return {"question": self.question, "answer": self.answer_text}


#: The few-shot chain-of-thought format shared by training corpora, prompts and evaluation: a solved problem is
#: ``Question: <question>\nAnswer: <rationale>\n#### <final>\n\n``; a problem to solve ends at ``Answer:``,
#: and the model's answer ends at the blank line (:data:`ANSWER_END`).
ANSWER_END = "\n\n"


def format_demonstration(problem: MathProblem) -> str:
    """A solved problem in the few-shot format (ends with a blank line)."""
    return f"Question: {problem.question}\nAnswer: {problem.answer_text}{ANSWER_END}"


def format_question(question: str) -> str:
    """A problem to solve in the few-shot format: the model continues after ``Answer:``."""
    return f"Question: {question}\nAnswer:"
