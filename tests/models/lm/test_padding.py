"""Padding of ragged id rows: right (scoring) and left with per-row positions (batched decoding)."""

from __future__ import annotations

import pytest
import torch

from litlab.errors import ConfigError
from litlab.models.lm.padding import right_pad


def test_rows_are_kept_and_padded_on_the_right():
    ids = right_pad([[5, 6, 7], [1], [2, 3]], pad_id=0)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [1, 0, 0], [2, 3, 0]]


@pytest.mark.parametrize("rows", [[], [[1], []]])
def test_empty_input_is_a_config_error(rows):
    with pytest.raises(ConfigError, match="right_pad"):
        right_pad(rows, pad_id=0)


def test_left_padding_aligns_the_last_ids_and_counts_each_rows_positions():
    from litlab.models.lm.padding import left_pad

    ids, real, positions = left_pad([[5, 6, 7], [1], [2, 3]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 1], [0, 2, 3]]
    assert real.tolist() == [[True] * 3, [False, False, True], [False, True, True]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(ConfigError, match="prefix 5 \\+ longest row 3"):
        left_pad([[1, 2, 3]], pad_id=0, prefix_length=5, max_length=7)
