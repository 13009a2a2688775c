"""Exact match of a generated continuation: cut at the first newline, compared byte for byte."""

from __future__ import annotations

from litlab.evaluation.exact_match import cut_prediction, exact_match


def test_exact_match_cuts_at_the_first_newline():
    assert exact_match(b"hello\nworld", "hello")
    assert exact_match(b"hello", "hello")  # stopped at EOS or at the byte limit
    assert exact_match("hello\n", b"hello")
    assert not exact_match(b"hello world", "hello")
    assert not exact_match(b"hell\no", "hello")
    assert not exact_match(b"\nhello", "hello")
    assert cut_prediction(b"ab\ncd\n") == b"ab"
