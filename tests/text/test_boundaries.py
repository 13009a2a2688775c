"""The boundary picture marks exactly the characters each stage pools."""

from __future__ import annotations

from litlab.cli import main
from litlab.text.boundaries import format_boundaries


def test_picture_of_a_short_text(capsys):
    picture = format_boundaries("Hi, you all.\n", word_groups=(1, 2))
    lines = picture.splitlines()
    assert lines[0] == "    text  Hi,␣you␣all.⏎"
    # ',' and '.' start punctuation chunks (every stage); the whitespace after each word ('Hi,␣', 'you␣',
    # 'all.⏎') ends a stage-2 unit; the whitespace after every second word ('you␣') ends a stage-3 unit.
    assert lines[1] == " stage 2    ^^   ^   ^^"
    assert lines[2] == " stage 3    ^    ^   ^"
    main(["show_splits", "Hi, you all.\n", "--word_groups=[1, 2]"])
    assert capsys.readouterr().out == picture
