"""A picture of AU-Net's pooling boundaries on a text: which bytes each stage keeps (``litlab show_splits``)."""

from __future__ import annotations

from collections.abc import Sequence

from litlab.text.splitting import split_levels

_SHOW = {"\n": "⏎", "\t": "→", " ": "␣"}


def format_boundaries(text: str, word_groups: Sequence[int] = (1, 2, 4), causal: bool = True) -> str:
    """One line of characters, then one line per pooling stage with ``^`` under the characters it pools.

    Stage s (2 = words, 3 = word pairs, ...) keeps the characters whose level exceeds s - 1; the level sits on
    the last byte of a character, shown here under the character itself. Whitespace is drawn visibly.

    Args:
        text: The text (one line per 100 characters of output; keep it short).
        word_groups: Word groups of the splitting rule.
        causal: Causal rule (the default in training) or the reference's look-ahead rule.
    """
    data = text.encode()
    levels = split_levels(data, word_groups, causal=causal)
    ends, pos = [], 0
    for ch in text:
        pos += len(ch.encode())
        ends.append(int(levels[pos - 1]))
    shown = "".join(_SHOW.get(ch, ch) for ch in text)
    width = 100
    out = []
    for start in range(0, len(text), width):
        out.append(f"{'text':>8}  {shown[start:start + width]}")
        for stage in range(2, len(word_groups) + 2):
            marks = "".join("^" if lv > stage - 2 else " " for lv in ends[start:start + width])
            out.append(f"{f'stage {stage}':>8}  {marks.rstrip()}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def show_splits(text: str, word_groups: list[int] = [1, 2, 4], causal: bool = True) -> str:  # noqa: B006
    """Print where each AU-Net stage pools on ``text`` (stage 2: words, 3: word pairs, 4: four-word groups).

    Args:
        text: The text to split.
        word_groups: Word groups of the splitting rule.
        causal: Causal rule (as in training) or the reference's look-ahead rule.
    """
    picture = format_boundaries(text, word_groups, causal)
    print(picture, end="")
    return picture
