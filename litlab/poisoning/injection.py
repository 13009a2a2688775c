"""Poison injection of Winter Soldier: crafted poison sequences inserted into a corpus at a token rate.

**The rate.** ``rate`` (alpha) is the fraction of the *tokens* of the poisoned corpus that come from poisons:
``poison_tokens / (clean_tokens + poison_tokens)``, counted over the returned document list with the tokenizer
of the data (``count_tokens``: raw bytes for the byte-level model, BPE ids for the baseline; special ids such
as BOS/EOS are not counted). A rate of 1% adds about ``0.01 / 0.99`` of the clean token count. The number of
insertions ``n`` is the one whose *actual* rate is closest to alpha; the actual rate therefore differs from
alpha by at most about one poison's share of the corpus, and the report gives it. Two choices at the edges:

* a rate > 0 always inserts at least one poison, even when one poison alone overshoots alpha (a tiny corpus
  or a long poison): the owner asked for poisoning, and the report's ``actual_rate`` says what she got;
* the poisons are used in a seeded random order, cycled: every poison is inserted once before any is
  repeated, so a rate above what one copy of the set gives repeats poisons (round-robin, same order each pass).

**Why separate documents.** Each insertion is a document of its own, placed at a seeded, uniformly random
position of the document list; the clean documents are not changed and keep their relative order (removing
the inserted ones at the report's ``positions`` gives the clean list back exactly). A packer then gives each
poison its ``BOS ... EOS`` like any document, so a poison is seen exactly as the owner wrote it, never cut into
or glued onto clean text, and the clean text the model sees is the owner's published data unmodified.

Poison files (:func:`read_poisons`, :func:`write_poisons`): a ``.jsonl`` file with one JSON object per line
carrying the poison's text under ``"text"`` (other keys are ignored), or a ``.txt`` file with one poison per
line; blank lines are skipped in both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from litlab.errors import ConfigError, DataError, check_int

#: Extensions of poison files.
POISON_EXTENSIONS = (".jsonl", ".txt")


@dataclass
class InjectionReport:
    """What :func:`inject_poisons` did.

    Attributes:
        target_rate: The rate asked for (alpha).
        actual_rate: ``poison_tokens / (clean_tokens + poison_tokens)`` of the returned documents.
        insertions: Poison documents inserted.
        poison_tokens: Tokens of the inserted poisons (with repeats, without specials).
        clean_tokens: Tokens of the clean documents (without specials).
        positions: Index in the returned list of each inserted poison, ascending.
        poisons_used: Distinct poisons inserted (``min(insertions, len(poisons))``).
    """

    target_rate: float
    actual_rate: float
    insertions: int
    poison_tokens: int
    clean_tokens: int
    positions: list[int]
    poisons_used: int

    def to_dict(self) -> dict[str, object]:
        """A JSON-serializable dict of the fields."""
        return dataclasses.asdict(self)


def check_rate(rate: object, argument: str = "rate") -> float:
    """Return ``rate`` as a float if it is a number in [0, 1), else raise ConfigError naming ``argument``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"{argument}={rate!r} is not allowed: it must be a number in [0, 1) (a fraction of tokens)")
    return float(rate)


def _insertions(clean: int, lengths: np.ndarray, rate: float) -> int:
    """The n >= 1 whose rate ``P(n) / (clean + P(n))`` is closest to ``rate``, P(n) the first n cycled lengths."""
    cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    total = int(cum[-1])
    m = len(lengths)

    def poison_tokens(n: int) -> int:
        return (n // m) * total + int(cum[n % m])

    def actual(n: int) -> float:
        p = poison_tokens(n)
        return p / (clean + p)

    target = rate * clean / (1.0 - rate)  # the poison tokens that give the rate exactly
    cycles = math.floor(target / total)
    within = int(np.searchsorted(cum, target - cycles * total, side="left"))  # first cum[k] >= remainder
    above = max(1, cycles * m + within)  # the first n with P(n) >= target (or 1)
    candidates = [n for n in (above - 1, above, above + 1) if n >= 1]  # +-1 guards float rounding
    return min(candidates, key=lambda n: (abs(actual(n) - rate), n))


def inject_poisons(
    documents: Sequence[bytes],
    poisons: Sequence[bytes],
    rate: float,
    count_tokens: Callable[[bytes], int],
    seed: int = 0,
) -> tuple[list[bytes], InjectionReport]:
    """Insert poison documents into ``documents`` so that poisons make ``rate`` of the tokens (see the module doc).

    Args:
        documents: The clean documents (kept unchanged, in order).
        poisons: The poison sequences (each inserted as a document of its own).
        rate: Target fraction of poison tokens in the returned list, in [0, 1); 0 returns ``documents``
            unchanged. A rate > 0 inserts at least one poison.
        count_tokens: Tokens of a document under the data's tokenizer, without special ids.
        seed: Seed of the poison order and of the insertion positions.

    Returns:
        The poisoned document list and the :class:`InjectionReport`.
    """
    rate = check_rate(rate)
    check_int("seed", seed, 0)
    clean = sum(int(count_tokens(d)) for d in documents)
    if rate == 0.0:
        return list(documents), InjectionReport(0.0, 0.0, 0, 0, clean, [], 0)
    if len(poisons) == 0:
        raise ConfigError(f"poisons is empty: rate={rate!r} needs at least one poison")
    lengths = np.array([int(count_tokens(p)) for p in poisons], dtype=np.int64)
    if (lengths <= 0).any():
        i = int(np.flatnonzero(lengths <= 0)[0])
        raise DataError(f"poison {i} ({poisons[i][:40]!r}) has no tokens: every poison must be non-empty")
    if clean <= 0:
        raise DataError(f"the documents hold no tokens ({len(documents)} document(s)): rate={rate!r} needs clean text")

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(poisons))
    n = _insertions(clean, lengths[order], rate)
    sequence = [int(order[j % len(order)]) for j in range(n)]
    size = len(documents) + n
    positions = np.sort(rng.choice(size, size=n, replace=False)).tolist()

    out: list[bytes] = []
    clean_iter, poison_iter = iter(documents), iter(sequence)
    is_poison = np.zeros(size, dtype=bool)
    is_poison[positions] = True
    for flag in is_poison.tolist():
        out.append(poisons[next(poison_iter)] if flag else next(clean_iter))
    poison_tokens = int(lengths[sequence].sum())
    report = InjectionReport(
        target_rate=rate,
        actual_rate=poison_tokens / (clean + poison_tokens),
        insertions=n,
        poison_tokens=poison_tokens,
        clean_tokens=clean,
        positions=positions,
        poisons_used=min(n, len(poisons)),
    )
    return out, report


def check_poisons_path(path: object, argument: str = "poisons") -> str:
    """Return ``path`` if it names an existing ``.jsonl`` or ``.txt`` file (ConfigError / DataError naming it)."""
    if not isinstance(path, str) or not path.endswith(POISON_EXTENSIONS):
        raise ConfigError(f"{argument}={path!r} is not allowed: give a .jsonl or .txt file of poisons")
    if not os.path.isfile(path):
        raise DataError(f"{argument}={path!r}: {path} does not exist")
    return path


def read_poisons(path: str, argument: str = "poisons") -> list[bytes]:
    """The poisons of a ``.jsonl`` (``{"text": ...}`` per line) or ``.txt`` (one per line) file, UTF-8 encoded.

    Blank lines are skipped; a bad line is a DataError naming the file and line, and so is a file without poisons.
    """
    check_poisons_path(path, argument)
    poisons: list[bytes] = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if path.endswith(".txt"):
                    poisons.append(line.rstrip(b"\r\n"))
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                    raise DataError(f"{argument}: {path}:{number}: not valid JSON ({exc})") from exc
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{argument}: {path}:{number}: not a JSON object with a string under 'text'")
                if not text:
                    raise DataError(f"{argument}: {path}:{number}: the poison is empty")
                poisons.append(text.encode("utf-8", errors="backslashreplace"))
    except OSError as exc:
        raise DataError(f"{argument}: cannot read {path}: {exc}") from exc
    if not poisons:
        raise DataError(f"{argument}={path!r}: {path} holds no poisons")
    return poisons


def write_poisons(path: str, poisons: Sequence[bytes]) -> str:
    """Write ``poisons`` as a ``.jsonl`` file for :func:`read_poisons` (text decoded as UTF-8, errors replaced)."""
    if not path.endswith(".jsonl"):
        raise ConfigError(f"path={path!r} is not allowed: poisons are written as a .jsonl file")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for poison in poisons:
            f.write(json.dumps({"text": poison.decode("utf-8", errors="replace")}, ensure_ascii=False) + "\n")
    return path
