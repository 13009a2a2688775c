"""AU-Net splitting: against a slow character-by-character scan, the regex definition, and the causal definition."""

from __future__ import annotations

import codecs
import random
import unicodedata

import numpy as np
import pytest
import regex

from litlab.errors import ConfigError, DataError
from litlab.text.byte_vocab import BOS, EOS
from litlab.text.splitting import (
    START_PATTERN,
    WHITESPACE,
    StreamingSplitter,
    char_class,
    split_levels,
    split_token_levels,
)

# --- a slow, literal implementation of the rule ------------------------------------------------------------

# Unicode White_Space, written out (what `regex` matches with \s; str.isspace also takes U+001C..U+001F).
SPACES = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a")
SPACES |= set("\u2028\u2029\u202f\u205f\u3000")
NEWLINES = "\r\n"


def kind(char: str) -> str:
    """'S' whitespace, 'L' letter, 'N' number, 'P' anything else (punctuation, symbols, marks, controls)."""
    if char in SPACES:
        return "S"
    category = unicodedata.category(char)
    return category[0] if category[0] in "LN" else "P"


def slow_start_set(text: str) -> list[int]:
    """Scan left to right; at each scan position try: 1-3 digits; 1-3 punctuation + newlines; spaces up to the
    last newline of the whitespace run. A match moves the scan past it; no match moves it by one character."""
    starts, p, n = [], 0, len(text)
    while p < n:
        k = kind(text[p])
        if k in "NP":
            q = p
            while q < n and q - p < 3 and kind(text[q]) == k:
                q += 1
            if k == "P":
                while q < n and text[q] in NEWLINES:
                    q += 1
            starts.append(p)
            p = q
            continue
        if k == "S":
            q = p
            while q < n and kind(text[q]) == "S":
                q += 1
            newlines = [r for r in range(p, q) if text[r] in NEWLINES]
            if newlines:
                starts.append(p)
                p = newlines[-1] + 1
                continue
        p += 1
    return starts


def slow_word_set(text: str, g: int) -> list[int]:
    """At each scan position try to read g times (one or more non-spaces, then one space); on success record the
    last space and continue after it, else move the scan position by one character."""
    ends, p, n = [], 0, len(text)
    while p < n:
        q, ok = p, True
        for _ in range(g):
            if q >= n or kind(text[q]) == "S":
                ok = False
                break
            while q < n and kind(text[q]) != "S":
                q += 1
            if q >= n:
                ok = False
                break
            q += 1
        if ok:
            ends.append(q - 1)
            p = q
        else:
            p += 1
    return ends


def slow_char_levels(text: str, groups: tuple[int, ...]) -> list[int]:
    starts = set(slow_start_set(text))
    levels = [0] * len(text)
    for i, g in enumerate(groups):
        for c in starts | set(slow_word_set(text, g)):
            levels[c] = max(levels[c], i + 1)
    return levels


_SPANS: list[tuple[int, int, str]] = []


def _record(exc: UnicodeDecodeError) -> tuple[str, int]:
    _SPANS.append((exc.start, exc.end, exc.reason))
    return "\ufffd", exc.end


codecs.register_error("tests.text.record", _record)


def slow_decode(data: bytes) -> list[tuple[str, int, str]]:
    """(character, its last byte, how it was made): walk the bytes character by character."""
    _SPANS.clear()
    text = data.decode("utf-8", "tests.text.record")
    spans = {start: (end, reason) for start, end, reason in _SPANS}
    chars, i = [], 0
    for ch in text:
        if i in spans:
            end, reason = spans[i]
            how = {"invalid start byte": "invalid", "invalid continuation byte": "truncated"}.get(reason, "incomplete")
            assert ch == "\ufffd"
        else:
            end, how = i + len(ch.encode("utf-8")), "char"
            assert data[i:end] == ch.encode("utf-8")
        chars.append((ch, end - 1, how))
        i = end
    assert i == len(data)
    return chars


def slow_levels(data: bytes, groups: tuple[int, ...] = (1, 2, 4)) -> list[int]:
    """The reference's (causal=False) levels, one character at a time."""
    chars = slow_decode(data)
    text = "".join(c for c, _, _ in chars)
    assert text == data.decode("utf-8", "replace")
    char_levels = slow_char_levels(text, groups)
    levels = [0] * len(data)
    for (_, last, how), level in zip(chars, char_levels):
        levels[last] = 0 if how == "incomplete" else level
    return levels


def regex_levels(text: str, groups: tuple[int, ...]) -> list[int]:
    """The rule exactly as the brief states it, with `regex` and a per-character byte map."""
    start = regex.compile(START_PATTERN)
    levels = [0] * len(text)
    for i, g in enumerate(groups):
        found = {m.start() for m in start.finditer(text)}
        found |= {m.end() - 1 for m in regex.finditer(rf"(\S+?\s){{{g}}}", text)}
        for c in found:
            levels[c] = i + 1
    out = []
    for ch, level in zip(text, levels):
        out += [0] * (len(ch.encode("utf-8")) - 1) + [level]
    return out


# --- test material -----------------------------------------------------------------------------------------

TEXTS = {
    "prose": "The quick brown fox jumps over the lazy dog. It wasn't me, said he; \"really?\" (yes!)\n"
    "A second line  with two spaces, and a tab\there.\n\nNew paragraph... end",
    "accents": "Zoë café naïve — déjà vu. Cafe\u0301 nai\u0308ve (combining), Ångström\u030a!",
    "cjk": "中文字符没有空格。日本語のテキスト、カタカナ。한국어 문장입니다. 混合 text 中文 123",
    "emoji": "hi 😀 family 👨\u200d👩\u200d👧\u200d👦 flag 🇫🇷 thumbs 👍🏽 ok❤️ end 🎉🎉🎉🎉",
    "digits": " ".join("1234567890"[:k] for k in range(1, 11))
    + " 3.14159 1,000,000 -42 12:30 2024-01-02 ٣٤٥ ½ Ⅻ ①②③④ x²",
    "code": 'def f(x, y=3):\n    if x > 0:\n        return {"a": [1, 2]}\n    else:\n\treturn x**2  # c\n'
    "int main() { return a->b[i] != 0 && c; }\r\n",
    "spaces": "a \t b\t\t\tc\n\n\nd \n e\r\n\r\nf  \r  \n g\x0b\x0ch\x85i\xa0j\u2003k\u3000l\u2028m\u2029 n \n",
    "mixed": "Ünïcödé! ¿Qué? 42€ — «quotes» “smart” ‘x’… 中文, 😀!!!\n\n   \tEnd\x1c\x1dok\u200b \ufffdz",
}
ALPHABET = list("abZé") + ["\u0301", "中", "文", "😀", "\u200d", "👍", "\ufffd", "\x1c"]
ALPHABET += list("05٣½Ⅻ") + list(".,!-'\"(){}#") + list(" \t\n\r\x0b\x0c\x85\xa0\u2003\u3000")
ALPHABET += [" ", " ", " ", "a", "a", "\n"]  # favour the usual word shapes
INVALID_PIECES = [
    b"\x80", b"\xbf", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc0\xaf", b"\xe0\x80\x80", b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\xf5", b"\xff", b"\xef\xbf\xbd",
]  # fmt: skip


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def random_bytes(rng: random.Random, n: int) -> bytes:
    """Text pieces mixed with invalid UTF-8: stray bytes, truncated characters, overlongs, surrogates."""
    out = b""
    while len(out) < n:
        r = rng.random()
        if r < 0.5:
            out += random_text(rng, rng.randint(1, 4)).encode("utf-8")
        elif r < 0.8:
            out += rng.choice(INVALID_PIECES)
        else:
            out += bytes([rng.randrange(256)])
    return out


def all_datas() -> list[bytes]:
    rng = random.Random(1234)
    datas = [t.encode("utf-8") for t in TEXTS.values()]
    datas += [random_text(rng, rng.randint(1, 40)).encode("utf-8") for _ in range(400)]
    datas += [random_bytes(rng, rng.randint(1, 30)) for _ in range(400)]
    datas += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 20))) for _ in range(150)]
    return datas


DATAS = all_datas()
GROUPS = [(1, 2, 4), (1, 2), (1,), (2, 3), (1, 3, 5)]


# --- the slow reference itself -----------------------------------------------------------------------------


def test_test_alphabet_classes_agree_with_regex():
    """The slow scan classifies with unicodedata; on the test material that agrees with `regex`."""
    for ch in set(ALPHABET) | set("".join(TEXTS.values())):
        expected = "S" if regex.fullmatch(r"\s", ch) else "L" if regex.fullmatch(r"\p{L}", ch) else None
        expected = expected or ("N" if regex.fullmatch(r"\p{N}", ch) else "P")
        assert kind(ch) == expected, repr(ch)


def test_whitespace_table_is_regex_whitespace():
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    assert [ord(m.group()) for m in regex.finditer(r"\s", everything)] == list(WHITESPACE)
    assert {ord(c) for c in SPACES} == set(WHITESPACE)


def test_streaming_char_class_matches_regex_on_random_code_points():
    rng = random.Random(0)
    points = [*range(0x300), *(rng.randrange(0x110000) for _ in range(5000))]
    for cp in points:
        if 0xD800 <= cp < 0xE000:
            continue
        ch = chr(cp)
        want = 0 if regex.fullmatch(r"\p{L}", ch) else 1 if regex.fullmatch(r"\p{N}", ch) else 2
        if regex.fullmatch(r"\s", ch):
            want = 3 if ch in NEWLINES else 4
        assert char_class(cp) == want, hex(cp)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_slow_scan_agrees_with_regex_definition(name):
    for groups in GROUPS:
        assert slow_levels(TEXTS[name].encode("utf-8"), groups) == regex_levels(TEXTS[name], groups)


# --- hand-checked examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "groups", "reference", "causal"),
    [
        # ',' and '!' start punctuation chunks (2); '\n' is consumed by "!\n"; words end at ' ' (1st word) and
        # '\n' (2nd word: every 2nd word -> 2).
        (b"Hello, world!\n", (1, 2), [0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 2, 2], None),
        # the double space restarts the word count: "ab " alone, then cd ef gh ij kl -> 2nd and 4th get level 2
        (b"ab  cd ef gh ij kl ", (1, 2), [0, 0, 1, 0, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1], None),
        # digits in chunks of 3 ("123", "45"); "\r\n  \n" starts with a newline so it is causal too
        (b"12345 x\r\n  \ny", (1, 2), [2, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0, 0, 0], None),
        # "  \n" starts on a space: the reference's start-set boundary there needs the newline; causally only
        # the word boundary (1) is left
        (b"a  \nb", (1, 2), [0, 2, 0, 0, 0], [0, 1, 0, 0, 0]),
        # multi-byte: levels on the last byte of 'é' (none), '1' (digit), U+2003 (E2 80 83, space run to '\n')
        ("é1\u2003\n".encode(), (1, 2), [0, 0, 2, 0, 0, 2, 0], [0, 0, 2, 0, 0, 1, 0]),
        # a truncated '€' (E2 82) cut by ' ': a U+FFFD punctuation chunk on byte 2, undecided causally
        (b"a\xe2\x82 b", (1,), [0, 0, 1, 1, 0], [0, 0, 0, 1, 0]),
        # an incomplete character at the very end gets 0 in both modes
        (b"a, \xe2\x82", (1,), [0, 1, 1, 0, 0], None),
    ],
)
def test_hand_checked(data, groups, reference, causal):
    assert split_levels(data, groups, causal=False).tolist() == reference
    assert split_levels(data, groups, causal=True).tolist() == (reference if causal is None else causal)


# --- reference mode against the slow scan ------------------------------------------------------------------


@pytest.mark.parametrize("groups", GROUPS)
def test_reference_mode_matches_slow_scan(groups):
    for data in DATAS:
        got = split_levels(data, groups, causal=False)
        assert got.dtype == np.int8
        assert got.tolist() == slow_levels(data, groups), data


def test_long_random_texts_match_slow_scan():
    rng = random.Random(7)
    for _ in range(6):
        data = random_text(rng, 3000).encode("utf-8")
        assert split_levels(data, causal=False).tolist() == slow_levels(data)


# --- causality ---------------------------------------------------------------------------------------------


def causal_definition(data: bytes, groups: tuple[int, ...]) -> list[int]:
    return [int(split_levels(data[: t + 1], groups, causal=False)[t]) for t in range(len(data))]


@pytest.mark.parametrize("groups", [(1, 2, 4), (2, 3)])
def test_causal_mode_is_reference_level_at_the_last_byte(groups):
    for data in DATAS:
        assert split_levels(data, groups, causal=True).tolist() == causal_definition(data, groups), data


def test_causal_mode_differs_from_reference_only_where_expected():
    """Where the modes disagree: the first character of a whitespace run that is not a newline (its start-set
    boundary needed a later newline), or a U+FFFD of a truncated character; nowhere else, and only downwards."""
    seen = {"space": 0, "truncated": 0}
    for data in DATAS:
        causal = split_levels(data, causal=True)
        reference = split_levels(data, causal=False)
        for ch, last, how in slow_decode(data):
            if causal[last] != reference[last]:
                assert (ch in SPACES and ch not in NEWLINES) or how == "truncated", (data, last)
                assert causal[last] < reference[last]
                seen["truncated" if how == "truncated" else "space"] += 1
    assert seen["space"] > 20 and seen["truncated"] > 20, seen


def test_prefix_stability():
    rng = random.Random(3)
    for data in DATAS[::3]:
        full = split_levels(data)
        for n in sorted({rng.randint(0, len(data)) for _ in range(5)}):
            assert split_levels(data[:n]).tolist() == full[:n].tolist()


def test_reference_mode_is_not_prefix_stable():
    """The reason for the causal mode: appending a newline changes an earlier level of the reference rule."""
    assert split_levels(b"a  ", (1, 2), causal=False).tolist() == [0, 1, 0]
    assert split_levels(b"a  \n", (1, 2), causal=False).tolist()[:3] == [0, 2, 0]


# --- token sequences and streaming -------------------------------------------------------------------------


def with_specials(rng: random.Random, pieces: list[bytes]) -> np.ndarray:
    ids: list[int] = []
    for piece in pieces:
        if rng.random() < 0.7:
            ids.append(BOS)
        ids += list(piece)
        if rng.random() < 0.6:
            ids.append(EOS)
    return np.array(ids, dtype=np.int64)


def test_token_levels_split_segments_independently():
    rng = random.Random(11)
    for _ in range(40):
        pieces = [rng.choice(DATAS) for _ in range(rng.randint(1, 4))]
        ids = with_specials(rng, pieces)
        for causal in (True, False):
            got = split_token_levels(ids, causal=causal)
            special = np.flatnonzero(ids >= BOS)
            expected = np.zeros(len(ids), dtype=np.int64)
            for a, b in zip([-1, *special.tolist()], [*special.tolist(), len(ids)]):
                segment = bytes(ids[a + 1 : b].tolist())
                expected[a + 1 : b] = split_levels(segment, causal=causal)
            expected[ids == BOS] = 3
            assert got.tolist() == expected.tolist()


def test_word_counts_restart_after_a_special():
    ids = np.array([*b"a b ", EOS, BOS, *b"c d "])
    assert split_token_levels(ids, (1, 2)).tolist() == [0, 1, 0, 2, 0, 2, 0, 1, 0, 2]


@pytest.mark.parametrize("groups", [(1, 2, 4), (2, 3), (1,)])
def test_streaming_matches_token_levels(groups):
    rng = random.Random(5)
    splitter = StreamingSplitter(groups)
    for data in DATAS:
        splitter.reset()
        assert [splitter.push(b) for b in data] == split_levels(data, groups).tolist(), data
    for _ in range(60):
        ids = with_specials(rng, [rng.choice(DATAS) for _ in range(rng.randint(1, 5))])
        splitter.reset()
        assert [splitter.push(int(i)) for i in ids] == split_token_levels(ids, groups).tolist()


def test_streaming_long_text():
    text = "".join(TEXTS.values()) * 20
    data = text.encode("utf-8")
    splitter = StreamingSplitter()
    assert [splitter.push(b) for b in data] == split_levels(data).tolist()


# --- nesting -----------------------------------------------------------------------------------------------


def strategy_sets(text: str, groups: tuple[int, ...]) -> list[set[int]]:
    starts = set(slow_start_set(text))
    return [starts | set(slow_word_set(text, g)) for g in groups]


def test_strategy_sets_nest_for_dividing_groups():
    """With (1, 2, 4) every group divides the next, so each strategy's set holds the next one's."""
    rng = random.Random(9)
    texts = list(TEXTS.values()) + [random_text(rng, 200) for _ in range(150)]
    for text in texts:
        sets = strategy_sets(text, (1, 2, 4))
        assert sets[2] <= sets[1] <= sets[0]


def test_strategy_sets_need_not_nest():
    """(2, 3): the 3rd word of a chain is in the second set only; the level is still the highest set."""
    sets = strategy_sets("a b c d ", (2, 3))
    assert 5 in sets[1] and 5 not in sets[0]
    assert split_levels(b"a b c d ", (2, 3), causal=False).tolist() == [0, 0, 0, 1, 0, 2, 0, 1]


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [(), (0,), (-1, 2), (2, 1), (1, 1), (1.5,), (True,), None, 3, ("a",)])
def test_bad_word_groups(groups):
    with pytest.raises(ConfigError, match="word_groups"):
        split_levels(b"a b", groups)
    with pytest.raises(ConfigError, match="word_groups"):
        split_token_levels(np.array([97]), groups)
    with pytest.raises(ConfigError, match="word_groups"):
        StreamingSplitter(groups)


def test_bad_data():
    with pytest.raises(ConfigError, match="data"):
        split_levels("text")
    with pytest.raises(ConfigError, match="data"):
        split_levels([104, 105])
    with pytest.raises(DataError, match="ids"):
        split_token_levels(np.array([97, 258]))
    with pytest.raises(DataError, match="ids"):
        split_token_levels(np.array([[97]]))
    with pytest.raises(DataError, match="byte_id"):
        StreamingSplitter().push(300)


def test_bytes_like_inputs():
    data = "Zoë, 12 ".encode()
    expected = split_levels(data).tolist()
    assert split_levels(bytearray(data)).tolist() == expected
    assert split_levels(memoryview(data)).tolist() == expected
    assert split_levels(data, word_groups=[1, 2, 4]).tolist() == expected


def test_empty_inputs():
    assert split_levels(b"").tolist() == []
    assert split_token_levels(np.array([], dtype=np.int64)).tolist() == []
    assert split_token_levels(np.array([BOS, EOS])).tolist() == [3, 0]
