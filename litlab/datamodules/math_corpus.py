"""Math word problems as a text source: ``procedural_math[:key=value,...]`` (or ``file.jsonl:key=value,...``).

The spec names a :class:`~litlab.datamodules.math_problems.MathProblemsDataModule` (its split sizes and seeds)
and how many solved problems make one document. As a text source (``TextDataModule(source=...)``,
``litlab train_bpe --source ...``) it yields the *train* split only, each document ``per_document`` solved
problems in a row in the few-shot format of :func:`litlab.text.gsm8k.format_demonstration`; a language model
trained on it learns to continue a few-shot prompt. ``litlab evaluate_math --data`` takes the same spec and
scores the *test* (or selection) split, which shares no problem with the train split.

Keys: ``num_train``, ``num_selection``, ``num_test``, ``split_seed``, ``procedural_seed``,
``procedural_templates`` (``default`` or ``variant``) and ``per_document`` (default 6). Example:
``procedural_math:num_train=40000,num_test=1000,per_document=6``.
"""

from __future__ import annotations

import os

from litlab.datamodules.math_problems import PROCEDURAL, MathProblemsDataModule
from litlab.errors import ConfigError
from litlab.text.gsm8k import format_demonstration

PREFIX = "procedural_math"
INT_KEYS = ("num_train", "num_selection", "num_test", "split_seed", "procedural_seed", "per_document")
KEYS = (*INT_KEYS, "procedural_templates")


def is_math_spec(source: str) -> bool:
    """Whether ``source`` is a math-problem spec (``procedural_math...`` or ``<file>.jsonl:key=value...``)."""
    head = source.split(":", 1)[0]
    return head == PREFIX or (head.endswith(".jsonl") and ":" in source and "=" in source.split(":", 1)[1])


def parse_math_spec(spec: str) -> tuple[MathProblemsDataModule, int]:
    """The datamodule a spec names and its ``per_document``.

    Raises:
        ConfigError: an unknown key or a value that is not allowed (naming the spec).
    """
    head, _, options = spec.partition(":")
    kwargs: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"source={spec!r}: {item!r} is not allowed; keys are {list(KEYS)}")
        try:
            kwargs[key] = int(value) if key in INT_KEYS else value
        except ValueError as err:
            raise ConfigError(f"source={spec!r}: {key}={value!r} is not an integer") from err
    per_document = kwargs.pop("per_document", 6)
    if not isinstance(per_document, int) or per_document < 1:
        raise ConfigError(f"source={spec!r}: per_document={per_document!r} must be an integer >= 1")
    source = PROCEDURAL if head == PREFIX else os.path.expanduser(head)
    return MathProblemsDataModule(source=source, **kwargs), per_document  # type: ignore[arg-type]


def math_documents(spec: str) -> list[bytes]:
    """The train split of a spec as documents of ``per_document`` solved problems each (UTF-8)."""
    data, per_document = parse_math_spec(spec)
    train = data.problems("train")
    return ["".join(format_demonstration(p) for p in train[i:i + per_document]).encode("utf-8")
            for i in range(0, len(train), per_document)]
