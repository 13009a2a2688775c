"""The selection/held-out split shared by every evolutionary method."""

from __future__ import annotations

import numpy as np
import pytest

from litlab.errors import ConfigError
from litlab.evolution.split import fraction_split, selection_split


def test_counts_are_disjoint_sorted_and_seeded():
    selection, heldout = selection_split(50, 10, 15, seed=3)
    assert (len(selection), len(heldout)) == (10, 15)
    assert not set(selection) & set(heldout)
    assert list(selection) == sorted(selection) and list(heldout) == sorted(heldout)
    again = selection_split(50, 10, 15, seed=3)
    assert np.array_equal(again[0], selection) and np.array_equal(again[1], heldout)
    assert not np.array_equal(selection_split(50, 10, 15, seed=4)[0], selection)


def test_heldout_none_takes_the_rest_and_fraction_matches_counts():
    selection, heldout = selection_split(20, 6, None, seed=1)
    assert sorted({*selection, *heldout}) == list(range(20))
    by_fraction = fraction_split(20, 0.3, seed=1)
    assert np.array_equal(by_fraction[0], selection) and np.array_equal(by_fraction[1], heldout)
    assert fraction_split(20, 1.0, seed=1)[1].size == 0


@pytest.mark.parametrize(("args", "match"), [
    ((10, 0, 3), "num_selection=0"), ((10, 4, -1), "num_heldout=-1"), ((10, 6, 5), "exceeds the 10 examples"),
    ((10, True, 3), "num_selection=True"),
])
def test_bad_counts_name_the_argument(args, match):
    with pytest.raises(ConfigError, match=match):
        selection_split(*args)


@pytest.mark.parametrize(("size", "fraction", "match"), [
    (3, 0.1, "empty selection"), (3, 0.9, "empty held-out"), (10, 0.0, "selection_fraction=0.0"),
    (10, 1.5, "selection_fraction=1.5"),
])
def test_bad_fractions_name_the_argument(size, fraction, match):
    with pytest.raises(ConfigError, match=match):
        fraction_split(size, fraction)
