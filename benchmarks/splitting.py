"""AU-Net splitting benchmark: litlab's split_levels / StreamingSplitter against plain-Python peers, in one process.

Usage:
    python benchmarks/splitting.py            # full corpora (about a minute on 2 CPU cores)
    python benchmarks/splitting.py --quick    # 64 KB slices, a few seconds

Prints one JSON object per line:
``{"bench": "splitting", "case": ..., "metric": ..., "value": ..., "unit": ..., "baseline": ..., "ratio": ...}``;
here ``value`` and ``baseline`` are throughputs and ``ratio = ours / baseline`` is a speed-up (higher is better).
Times are medians over ``--repeats`` runs, peers interleaved run by run.

Corpora: CPython's own ``pydoc_data.topics`` (English reference text with code, about 0.47 MB) and a synthetic
mixed-script text (Latin, accents, Cyrillic, Greek, Arabic, CJK, emoji, digits, punctuation, indentation).

Peers of ``split_levels`` (word groups (1, 2, 4), one call per document):
  * ``per_char_python``: the same rule as one plain Python loop over the characters (a state machine for the
    start pattern and one chain counter), then a Python loop mapping characters to their last byte.
  * ``reference_style``: what the reference does: ``regex.finditer`` of the start pattern and of
    ``(\\S+?\\s){g}`` for every strategy, merged in Python, then a per-character code point -> byte map.
Peer of ``StreamingSplitter.push``: ``resplit_buffer``, the reference's generation-time approach, re-splitting the
whole buffer at every new byte (here with litlab's fast ``split_levels``) and reading the last level.
Each peer's output is checked equal to ours (``equal_to_ours`` lines).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import unicodedata

import regex

from litlab.text.splitting import (
    START_PATTERN,
    WHITESPACE,
    StreamingSplitter,
    split_levels,
)

GROUPS = (1, 2, 4)
SPACES = frozenset(map(chr, WHITESPACE))


def emit(case: str, metric: str, value, unit: str, baseline=None, ratio=None) -> None:
    print(json.dumps({"bench": "splitting", "case": case, "metric": metric, "value": value, "unit": unit,
                      "baseline": baseline, "ratio": ratio}), flush=True)  # fmt: skip


# --- corpora -------------------------------------------------------------------------------------------------


def pydoc_corpus() -> bytes:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")


def mixed_corpus(n_words: int = 80_000, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    scripts = [
        "abcdefghijklmnopqrstuvwxyz", "àéèêëïîôöüçñåø", "абвгдежзиклмнопрстуфхцчшщыэюя", "αβγδεζηθικλμνξοπρστυφχψω",
        "ابتثجحخدذرزسشصضطظعغفقكلمنهوي", "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
    ]  # fmt: skip
    emoji = ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "🎉"]
    out: list[str] = []
    for _ in range(n_words):
        r = rng.random()
        if r < 0.75:
            alphabet = rng.choice(scripts)
            word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
        elif r < 0.85:
            word = str(rng.randint(0, 10**rng.randint(1, 8)))
        elif r < 0.92:
            word = rng.choice(emoji)
        else:
            word = rng.choice([",", ".", "!?", "(x)", "--", "...", "{}", "'s", "#"])
        out.append(word)
        r = rng.random()
        out.append(" " if r < 0.85 else rng.choice(["\n", "  ", "\n\n    ", "\t", ".\n", ", ", "\r\n"]))
    return "".join(out).encode("utf-8")


# --- peers ---------------------------------------------------------------------------------------------------

_KIND: dict[str, int] = {}  # 0 letter, 1 digit, 2 punctuation, 3 newline, 4 other whitespace


def _kind(ch: str) -> int:
    k = _KIND.get(ch)
    if k is None:
        if ch in SPACES:
            k = 3 if ch in "\r\n" else 4
        else:
            cat = unicodedata.category(ch)[0]
            k = 0 if cat == "L" else 1 if cat == "N" else 2
        _KIND[ch] = k
    return k


def per_char_python(data: bytes, causal: bool) -> list[int]:
    """The rule as one plain loop over characters (valid UTF-8 only)."""
    text = data.decode("utf-8")
    top = len(GROUPS)
    levels = [0] * len(text)
    scan, run = "", 0  # scan: "" | "digit" | "punct" | "punct_newlines" | "space"; run: chunk length
    space_start, space_newline = -1, False
    word, count = 0, 0  # word: 0 new chain next, 1 in a word, 2 after a word's space
    for i, ch in enumerate(text):
        k = _kind(ch)
        if k == 0:
            scan = ""
        elif k == 1 or k == 2:  # chunks of 1-3 digits / punctuation characters
            name = "digit" if k == 1 else "punct"
            if scan == name and run < 3:
                run += 1
            else:
                scan, run = name, 1
                levels[i] = top
        elif k == 3 and scan in ("punct", "punct_newlines"):  # newlines after punctuation join its chunk
            scan = "punct_newlines"
        else:  # a whitespace run: a boundary on its first character if it reaches a newline
            if scan != "space":
                scan, space_start, space_newline = "space", i, False
            if k == 3 and not space_newline:
                space_newline = True
                if not causal or space_start == i:
                    levels[space_start] = top
        if k >= 3:
            if word == 1:
                count += 1
                level = max((j + 1 for j, g in enumerate(GROUPS) if count % g == 0), default=0)
                levels[i] = max(levels[i], level)
                word = 2
            else:
                word = 0
        else:
            if word == 0:
                count = 0
            word = 1
    out = []
    for ch, level in zip(text, levels):
        out.extend([0] * (len(ch.encode("utf-8")) - 1))
        out.append(level)
    return out


_START_RE = regex.compile(START_PATTERN)
_WORD_RES = [regex.compile(rf"(\S+?\s){{{g}}}") for g in GROUPS]


def reference_style(data: bytes) -> list[int]:
    """The reference's procedure (non-causal): regex matches per strategy, merged, then a per-character byte map."""
    text = data.decode("utf-8")
    char_level: dict[int, int] = {}
    for i, word_re in enumerate(_WORD_RES):
        offsets = [m.start() for m in _START_RE.finditer(text)] + [m.end() - 1 for m in word_re.finditer(text)]
        for off in sorted(offsets):
            char_level[off] = max(char_level.get(off, 0), i + 1)
    last_byte, pos = [], -1
    for ch in text:
        pos += len(ch.encode("utf-8"))
        last_byte.append(pos)
    out = [0] * len(data)
    for off, level in char_level.items():
        out[last_byte[off]] = level
    return out


def resplit_buffer(data: bytes) -> list[int]:
    return [int(split_levels(data[: t + 1], GROUPS, causal=False)[t]) for t in range(len(data))]


def streaming(data: bytes) -> list[int]:
    splitter = StreamingSplitter(GROUPS)
    push = splitter.push
    return [push(b) for b in data]


# --- timing --------------------------------------------------------------------------------------------------


def timed(peers: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in peers}
    for r in range(repeats):
        order = list(peers) if r % 2 == 0 else list(reversed(peers))
        for name in order:
            t0 = time.perf_counter()
            peers[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_corpus(case: str, data: bytes, repeats: int) -> None:
    mb = len(data) / 1e6
    emit(case, "size", round(mb, 3), "MB")
    ours_ref = split_levels(data, GROUPS, causal=False).tolist()
    ours_causal = split_levels(data, GROUPS, causal=True).tolist()
    emit(case, "equal_to_ours_per_char_python_reference", per_char_python(data, False) == ours_ref, "bool")
    emit(case, "equal_to_ours_per_char_python_causal", per_char_python(data, True) == ours_causal, "bool")
    emit(case, "equal_to_ours_reference_style", reference_style(data) == ours_ref, "bool")
    t = timed(
        {
            "ours_reference": lambda: split_levels(data, GROUPS, causal=False),
            "ours_causal": lambda: split_levels(data, GROUPS, causal=True),
            "per_char_python_reference": lambda: per_char_python(data, False),
            "per_char_python_causal": lambda: per_char_python(data, True),
            "reference_style": lambda: reference_style(data),
        },
        repeats,
    )
    for mode in ("reference", "causal"):
        ours = mb / t[f"ours_{mode}"]
        for peer in (f"per_char_python_{mode}", "reference_style") if mode == "reference" else (f"per_char_python_{mode}",):
            base = mb / t[peer]
            emit(f"{case}/split_levels causal={mode == 'causal'}", f"throughput_speedup_vs_{peer.removesuffix('_' + mode)}",
                 round(ours, 2), "MB/s", round(base, 3), round(ours / base, 1))  # fmt: skip


def bench_streaming(data: bytes, big: bytes, repeats: int) -> None:
    case = f"StreamingSplitter.push on {len(data)} bytes"
    emit(case, "equal_to_ours_resplit_buffer", resplit_buffer(data) == streaming(data) == split_levels(data).tolist(),
         "bool")  # fmt: skip
    t = timed({"ours": lambda: streaming(data), "resplit_buffer": lambda: resplit_buffer(data)}, repeats)
    ours, base = len(data) / t["ours"], len(data) / t["resplit_buffer"]
    emit(case, "throughput_speedup_vs_resplit_buffer", round(ours / 1e3, 1), "KB/s", round(base / 1e3, 2),
         round(ours / base, 1))  # fmt: skip
    t_big = timed({"ours": lambda: streaming(big)}, repeats)
    emit(f"StreamingSplitter.push on {len(big)} bytes", "throughput", round(len(big) / t_big["ours"] / 1e3, 1), "KB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 KB slices, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per peer (default 3, quick 1)")
    a = parser.parse_args()
    repeats = a.repeats or (1 if a.quick else 3)
    corpora = {"pydoc_topics": pydoc_corpus(), "mixed_scripts": mixed_corpus()}
    if a.quick:
        corpora = {name: data[: 64_000].decode("utf-8", "ignore").encode("utf-8") for name, data in corpora.items()}
    emit(f"python {sys.version.split()[0]}, regex {regex.__version__}", "setup", None, "")
    for name, data in corpora.items():
        bench_corpus(name, data, repeats)
    text = corpora["mixed_scripts"]
    small = text[: 1000 if a.quick else 4000].decode("utf-8", "ignore").encode("utf-8")
    bench_streaming(small, text[: 64_000 if a.quick else 400_000], repeats)


if __name__ == "__main__":
    main()
