"""Right padding of ragged id rows: the rows are kept from position 0, the rest is the pad id."""

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
