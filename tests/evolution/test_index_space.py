from __future__ import annotations

import nevergrad as ng
import numpy as np
import pytest

from litlab.errors import ConfigError
from litlab.evolution import IndexSpace, make_optimizer


@pytest.mark.parametrize(("optimizer", "asks"), [("DiscreteLenglerOnePlusOne", 1500), ("RandomSearch", 300)])
def test_mutated_indices_are_uniform_over_the_pool(optimizer, asks):
    space = IndexSpace(num_items=7473, k=8, start=[10, 20, 30, 40, 50, 60, 70, 80])
    opt = make_optimizer(optimizer, space.parametrization(), budget=5000, num_workers=1, seed=0)
    opt.suggest(space.identity())
    first = opt.ask()
    assert np.array_equal(first.value, space.start)  # the real starting point comes first
    opt.tell(first, 0.0)
    changed = []
    for _ in range(asks):
        candidate = opt.ask()
        value = np.asarray(candidate.value)
        assert value.dtype.kind == "i" and value.min() >= 0 and value.max() < 7473
        changed.append(value[value != space.start])
        opt.tell(candidate, 1.0)  # never better: every ask mutates the start
    changed = np.concatenate(changed)
    counts = np.histogram(changed, bins=10, range=(0, 7473))[0]
    expected = len(changed) / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert len(changed) > 1000 and chi2 < 30, counts  # 9 degrees of freedom: p < 1e-3 at 27.9


def test_default_start_and_apply():
    space = IndexSpace(num_items=5, k=7)
    assert space.identity().tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert space.dimension == 7 and space.parametrization().dimension == 7
    token = space.apply(np.array([4, 4, 3, 2, 1, 0, 0]))
    assert space.current.tolist() == [4, 4, 3, 2, 1, 0, 0]
    space.restore(token)
    assert space.current.tolist() == space.start.tolist()


def test_reference_point_is_the_middle_of_the_pool():
    param = IndexSpace(num_items=101, k=3, start=[0, 1, 2]).parametrization()
    assert np.asarray(param.value).tolist() == [50, 50, 50]
    assert isinstance(param, ng.p.Array)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_items": 0, "k": 2}, "num_items"),
    ({"num_items": 10, "k": 0}, "k must"),
    ({"num_items": 10, "k": 2, "start": [1, 10]}, r"\[0, 10\)"),
    ({"num_items": 10, "k": 2, "start": [1]}, "2 integers"),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        IndexSpace(**kwargs)
