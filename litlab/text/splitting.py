"""AU-Net's splitting rule: which bytes end a pooled unit, and at which stage (the paper's ``word`` strategy).

Boundaries are found on the decoded text (code points) and put on the **last byte** of their character. For word
groups ``g_0 < g_1 < ...`` (default ``(1, 2, 4)``), strategy ``i``'s boundary set is the union of

* the *start set*, shared by all strategies: the first character of every match of
  ``\\p{N}{1,3}|(?:[^\\s\\p{L}\\p{N}]{1,3}[\\r\\n]*)|\\s*[\\r\\n]`` (``regex.finditer``): each chunk of 1-3 digits,
  each chunk of 1-3 punctuation characters (with the newlines that follow it), each whitespace run ending in a
  newline;
* the *word set* of ``g_i``: the last character of every match of ``(\\S+?\\s){g_i}``, i.e. the whitespace after
  every ``g_i``-th word of a *chain* of words separated by exactly one whitespace character (a longer gap, or
  the start of the text, starts a new chain and the count restarts).

``level = 1 + highest i whose set holds the character`` (0: no boundary). Stage ``s`` of a model pools the bytes
with ``level > s - 1``.

Two modes:

* ``causal=False`` reproduces the reference's training-time levels on valid UTF-8.
* ``causal=True`` (default) gives byte ``t`` the level the reference would give it when ``t`` is the last byte
  of the data, so the level of a byte depends only on the bytes up to it; appending bytes never changes earlier
  levels, and training matches byte-by-byte generation. It differs from ``causal=False`` only where the
  reference looks ahead: a whitespace run that starts with a space or tab and later reaches a newline is not a
  start-set boundary on its first character (the newline was not known yet), and a U+FFFD replacing a truncated
  multi-byte sequence gets no boundary (it was still an incomplete character when its last byte arrived).

Invalid UTF-8 decodes like ``bytes.decode("utf-8", "replace")``: each error span is one U+FFFD (a punctuation
character) whose level goes on the span's last byte; an incomplete sequence at the very end gets level 0.

:func:`split_levels` computes both sets with numpy from every character's class (the classes come from `regex`
itself); the tests check it against the regular expressions above and a slow character-by-character scan.
:class:`StreamingSplitter` computes the causal levels one byte at a time in O(1).
"""

from __future__ import annotations

import codecs
import itertools
import threading
from collections.abc import Sequence
from functools import cache
from math import lcm

import numpy as np
import regex

from litlab.errors import ConfigError, DataError
from litlab.text.byte_vocab import BOS, BYTE_VOCAB_SIZE

DEFAULT_WORD_GROUPS = (1, 2, 4)

START_PATTERN = r"\p{N}{1,3}|(?:[^\s\p{L}\p{N}]{1,3}[\r\n]*)|\s*[\r\n]"

# The code points `regex` matches with \s (Unicode White_Space); checked against `regex` in the tests.
WHITESPACE = (
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
    *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
)  # fmt: skip
_NEWLINES = (0x0A, 0x0D)
# Character classes: letter, digit (\p{N}), punctuation (everything else), \r or \n, other whitespace.
_LETTER, _DIGIT, _PUNCT, _NEWLINE, _SPACE = range(5)

_ERROR_HANDLER = "litlab.splitting.record"
_spans = threading.local()


def _record_error(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _spans.found.append((exc.start, exc.end, exc.reason))
    return "\ufffd", exc.end


codecs.register_error(_ERROR_HANDLER, _record_error)


def check_word_groups(word_groups: Sequence[int]) -> tuple[int, ...]:
    """Validate ``word_groups`` (non-empty, positive, strictly increasing ints) and return it as a tuple."""
    try:
        groups = tuple(word_groups)
    except TypeError:
        groups = ()
    if (
        not groups
        or len(groups) > 126
        or not all(isinstance(g, (int, np.integer)) and not isinstance(g, bool) and g > 0 for g in groups)
        or any(b <= a for a, b in itertools.pairwise(groups))
    ):
        raise ConfigError(
            f"word_groups={word_groups!r} is not allowed: use a non-empty, strictly increasing sequence of "
            "positive ints (at most 126), e.g. (1, 2, 4)"
        )
    return tuple(int(g) for g in groups)


def _decode(data: bytes) -> tuple[str, list[tuple[int, int, str]]]:
    """UTF-8 decode with one U+FFFD per error span; also return the spans ``(start, end, reason)``."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    _spans.found = found = []
    try:
        text = data.decode("utf-8", _ERROR_HANDLER)
    finally:
        _spans.found = []
    return text, found


def _char_ends(data: bytes, n_chars: int, spans: list[tuple[int, int, str]]) -> np.ndarray:
    """Byte offset of the last byte of every character (of a U+FFFD: the last byte of its error span).

    A byte starts a character unless it is a continuation byte (0x80-0xBF) that does not start an error span.
    """
    is_start = np.frombuffer(data, dtype=np.int8) >= -64  # 0x00-0x7F and 0xC0-0xFF
    if spans:
        is_start[[start for start, _, _ in spans]] = True
    starts = np.flatnonzero(is_start)
    if len(starts) != n_chars:  # pragma: no cover - would mean the decoder and this map disagree
        raise AssertionError(f"UTF-8 character map found {len(starts)} characters, the decoder {n_chars}")
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    ends[-1] = len(data) - 1
    return ends


@cache
def _class_table() -> np.ndarray:
    """The class of every code point, from `regex` itself (built once: about 0.15 s, 1.1 MB)."""
    everything = "".join(map(chr, range(0x110000)))
    table = np.full(0x110000, _PUNCT, dtype=np.int8)
    for pattern, cls in ((r"\p{L}+", _LETTER), (r"\p{N}+", _DIGIT), (r"\s+", _SPACE)):
        for match in regex.finditer(pattern, everything):
            table[match.start() : match.end()] = cls
    table[list(_NEWLINES)] = _NEWLINE
    return table


def _previous(values: np.ndarray) -> np.ndarray:
    """``values`` shifted right by one, with 0 / False in front: the previous character's value."""
    out = np.empty_like(values)
    out[0] = 0
    out[1:] = values[:-1]
    return out


def _run_offsets(begins: np.ndarray) -> np.ndarray:
    """For every element, its distance from the latest element at or before it where ``begins`` is True."""
    k = np.arange(len(begins), dtype=np.int32)
    return k - np.maximum.accumulate(np.where(begins, k, 0))


def _word_chain_index(ws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Every word's trailing whitespace character and the word's 0-based index within its chain.

    A word is a maximal run of non-whitespace followed by one whitespace character; a word continues the chain of
    the previous word when exactly that one whitespace character separates them. This is what repeated
    ``regex.finditer(r"(\S+?\s){g}")`` matches see: a failed attempt (a gap of two or more whitespace
    characters, or the end of the text) restarts the count at the next word.
    """
    nonspace = ~ws
    unit_ends = np.flatnonzero(ws & _previous(nonspace))
    if len(unit_ends) == 0:
        return unit_ends, unit_ends
    word_starts = np.flatnonzero(nonspace & ~_previous(nonspace))[: len(unit_ends)]
    new_chain = np.ones(len(unit_ends), dtype=bool)
    new_chain[1:] = word_starts[1:] != unit_ends[:-1] + 1
    return unit_ends, _run_offsets(new_chain)


def _start_set(classes: np.ndarray, causal: bool) -> np.ndarray:
    """The start set (a mask over characters) from their classes, as ``regex.finditer(START_PATTERN)`` scans them.

    * Digits and punctuation: every maximal run of one of the two classes is cut into chunks of 3 from its first
      character; each chunk starts a match.
    * Newlines right after punctuation belong to its last chunk ("consumed").
    * The remaining whitespace comes in segments (maximal runs); a segment that holds a newline is one match,
      starting on its first character. Causally, only a segment that starts with the newline counts.
    """
    starts = np.zeros(len(classes), dtype=bool)
    chunked = np.flatnonzero((classes == _DIGIT) | (classes == _PUNCT))
    if len(chunked):
        begins = (classes != _previous(classes))[chunked]  # position 0 compares with _LETTER (0)
        starts[chunked[_run_offsets(begins) % 3 == 0]] = True

    newline = np.flatnonzero(classes == _NEWLINE)
    if len(newline) == 0:
        return starts
    free = classes >= _NEWLINE
    run_begin = np.ones(len(newline), dtype=bool)
    run_begin[1:] = newline[1:] != newline[:-1] + 1
    first = newline[run_begin]
    after_punct = (first > 0) & (classes[first - 1] == _PUNCT)  # (first == 0 reads classes[-1], masked)
    consumed = after_punct[np.cumsum(run_begin) - 1]
    free[newline[consumed]] = False
    free_newline = newline[~consumed]
    segment_begin = free & ~_previous(free)
    if causal:
        starts[free_newline[segment_begin[free_newline]]] = True
        return starts
    begin_positions = np.flatnonzero(segment_begin)
    starts[begin_positions[np.searchsorted(begin_positions, free_newline, side="right") - 1]] = True
    return starts


def split_levels(data: bytes, word_groups: Sequence[int] = DEFAULT_WORD_GROUPS, causal: bool = True) -> np.ndarray:
    """Per-byte pooling levels of one document (no BOS/EOS inside).

    Args:
        data: the document's bytes (UTF-8; invalid sequences are handled as described in the module docstring).
        word_groups: strictly increasing word-group sizes, one per strategy; level ``i + 1`` marks the
            boundaries of strategy ``i``.
        causal: if True, the level of byte ``t`` depends only on ``data[:t + 1]`` (it equals
            ``split_levels(data[:t + 1], causal=False)[t]``); if False, the reference's levels for the whole text.

    Returns:
        int8 array of ``len(data)`` levels in ``0..len(word_groups)``.
    """
    groups = check_word_groups(word_groups)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConfigError(f"data must be bytes, got {type(data).__name__} (encode text with .encode('utf-8'))")
    data = bytes(data)
    levels = np.zeros(len(data), dtype=np.int8)
    if not data:
        return levels
    text, spans = _decode(data)
    ends = _char_ends(data, len(text), spans)
    classes = _class_table()[np.frombuffer(text.encode("utf-32-le"), dtype="<u4")]

    char_levels = np.zeros(len(text), dtype=np.int8)
    unit_ends, index = _word_chain_index(classes >= _NEWLINE)
    for i, g in enumerate(groups):
        char_levels[unit_ends[index % g == g - 1]] = i + 1
    char_levels[_start_set(classes, causal)] = len(groups)

    if spans:
        span_chars = np.searchsorted(ends, [end - 1 for _, end, _ in spans])
        for char, (_, _, reason) in zip(span_chars.tolist(), spans):
            # "unexpected end of data" (only ever at the end): an incomplete character, no boundary in either mode;
            # "invalid continuation byte": a truncated character, known as such only at the next byte.
            if reason == "unexpected end of data" or (causal and reason == "invalid continuation byte"):
                char_levels[char] = 0
    levels[ends] = char_levels
    return levels


def split_token_levels(
    ids: np.ndarray, word_groups: Sequence[int] = DEFAULT_WORD_GROUPS, causal: bool = True
) -> np.ndarray:
    """Per-token levels of a byte-id sequence that may hold BOS (256) and EOS (257).

    The bytes between special ids are split independently (word counts restart after a special); BOS gets the top
    level ``len(word_groups)`` (nothing after it may read a pooled vector from before it), EOS gets 0.

    Args:
        ids: 1-D integer ids in ``0..257``.
        word_groups: as in :func:`split_levels`.
        causal: as in :func:`split_levels`.

    Returns:
        int8 array of ``len(ids)`` levels.
    """
    groups = check_word_groups(word_groups)
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise DataError(f"ids must be 1-D, got shape {arr.shape}")
    levels = np.zeros(arr.shape[0], dtype=np.int8)
    if arr.size == 0:
        return levels
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"ids must be integers, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= BYTE_VOCAB_SIZE)
    if bad.any():
        raise DataError(f"ids hold {int(arr[bad][0])}, outside the byte vocabulary 0..{BYTE_VOCAB_SIZE - 1}")
    special = np.flatnonzero(arr >= BOS)
    begin = 0
    for cut in [*special.tolist(), len(arr)]:
        if cut > begin:
            levels[begin:cut] = split_levels(arr[begin:cut].astype(np.uint8).tobytes(), groups, causal)
        begin = cut + 1
    levels[special] = np.where(arr[special] == BOS, len(groups), 0)
    return levels


# --- streaming -----------------------------------------------------------------------------------------------

_CLASS_RE = regex.compile(r"(\s)|(\p{L})|(\p{N})")
# Start-scanner states: 0 = outside a chunk, 1..3 = digits in the current chunk, 4..6 = punctuation characters in
# the current chunk, 7 = newlines after a punctuation chunk, 8 = inside a whitespace run.
_IDLE, _PUNCT_NEWLINES, _IN_SPACE = 0, 7, 8
# Word states: next word starts a new chain / inside a word / right after a word's trailing whitespace.
_NEW_CHAIN, _IN_WORD, _AFTER_WORD = 0, 1, 2


@cache
def char_class(code_point: int) -> int:
    """Start-pattern class of a code point: letter, digit (``\\p{N}``), punctuation, newline or other space."""
    match = _CLASS_RE.fullmatch(chr(code_point))
    if match is None:
        return _PUNCT
    if match.lastindex == 1:
        return _NEWLINE if code_point in _NEWLINES else _SPACE
    return _LETTER if match.lastindex == 2 else _DIGIT


_ASCII_CLASS = tuple(char_class(c) for c in range(128))


def _lead_table() -> list[tuple[int, int, int, int] | None]:
    """For each byte as a first byte: (continuation bytes needed, payload mask, allowed range of the next byte)."""
    table: list[tuple[int, int, int, int] | None] = [None] * 256
    for b in range(0xC2, 0xE0):
        table[b] = (1, 0x1F, 0x80, 0xBF)
    for b in range(0xE0, 0xF0):
        table[b] = (2, 0x0F, 0x80, 0xBF)
    table[0xE0] = (2, 0x0F, 0xA0, 0xBF)  # no overlong 3-byte forms
    table[0xED] = (2, 0x0F, 0x80, 0x9F)  # no surrogates
    for b in range(0xF0, 0xF5):
        table[b] = (3, 0x07, 0x80, 0xBF)
    table[0xF0] = (3, 0x07, 0x90, 0xBF)  # no overlong 4-byte forms
    table[0xF4] = (3, 0x07, 0x80, 0x8F)  # nothing above U+10FFFF
    return table


_LEAD = _lead_table()


class StreamingSplitter:
    """Causal levels one byte at a time, as ``split_token_levels(ids, causal=True)`` gives them, in O(1) per byte.

    It keeps an incremental UTF-8 decoder (the same error spans as Python's decoder), the state of the
    start-pattern scan and the index of the current word within its chain.

    Args:
        word_groups: strictly increasing word-group sizes, as in :func:`split_levels`.
    """

    def __init__(self, word_groups: Sequence[int] = DEFAULT_WORD_GROUPS) -> None:
        self.word_groups = check_word_groups(word_groups)
        self.top_level = len(self.word_groups)
        period = lcm(*self.word_groups)
        # level of the whitespace after the k-th word of a chain (k counted modulo the period, 1-based)
        self._word_level = [
            max((i + 1 for i, g in enumerate(self.word_groups) if k % g == 0), default=0) for k in range(period)
        ]
        self._period = period
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next byte starts a new segment."""
        self._need = 0  # continuation bytes still expected by the pending multi-byte character
        self._code_point = 0
        self._low, self._high = 0x80, 0xBF
        self._scan = _IDLE
        self._word = _NEW_CHAIN
        self._count = 0  # words so far in the current chain, modulo the period

    def push(self, byte_id: int) -> int:
        """Add one id (a byte, BOS or EOS) and return its level."""
        if byte_id >= BOS:
            if byte_id >= BYTE_VOCAB_SIZE:
                raise DataError(f"byte_id={byte_id} is outside the byte vocabulary 0..{BYTE_VOCAB_SIZE - 1}")
            self.reset()
            return self.top_level if byte_id == BOS else 0
        if byte_id < 0:
            raise DataError(f"byte_id={byte_id} is outside the byte vocabulary 0..{BYTE_VOCAB_SIZE - 1}")
        if self._need:
            if self._low <= byte_id <= self._high:
                self._code_point = (self._code_point << 6) | (byte_id & 0x3F)
                self._need -= 1
                self._low, self._high = 0x80, 0xBF
                if self._need:
                    return 0
                return self._char(self._code_point)
            # The pending bytes were a truncated character: one U+FFFD, without a boundary (undecided when its last
            # byte arrived); then this byte starts afresh.
            self._need = 0
            self._low, self._high = 0x80, 0xBF
            self._char(0xFFFD)
        if byte_id < 0x80:
            return self._char(byte_id)
        lead = _LEAD[byte_id]
        if lead is None:  # invalid start byte: a U+FFFD of its own
            return self._char(0xFFFD)
        self._need, mask, self._low, self._high = lead
        self._code_point = byte_id & mask
        return 0

    def _char(self, code_point: int) -> int:
        cls = _ASCII_CLASS[code_point] if code_point < 128 else char_class(code_point)
        scan = self._scan
        start = False
        if cls == _LETTER:
            scan = _IDLE
        elif cls == _DIGIT:
            if 1 <= scan <= 2:
                scan += 1
            else:
                scan, start = 1, True
        elif cls == _PUNCT:
            if 4 <= scan <= 5:
                scan += 1
            else:
                scan, start = 4, True
        elif cls == _NEWLINE:
            if 4 <= scan <= _PUNCT_NEWLINES:
                scan = _PUNCT_NEWLINES
            elif scan != _IN_SPACE:
                scan, start = _IN_SPACE, True
        else:
            scan = _IN_SPACE
        self._scan = scan

        level = 0
        if cls >= _NEWLINE:  # whitespace
            if self._word == _IN_WORD:
                self._count = (self._count + 1) % self._period
                level = self._word_level[self._count]
                self._word = _AFTER_WORD
            else:
                self._word = _NEW_CHAIN
        else:
            if self._word == _NEW_CHAIN:
                self._count = 0
            self._word = _IN_WORD
        return self.top_level if start else level
