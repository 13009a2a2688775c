"""`DemonstrationSpace`: ordered pre-prompts of distinct pool items, k fixed or searched, a real start, and the
four discrete optimizers of EPPO over it (seeded)."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from litlab.errors import ConfigError
from litlab.evolution import EvolutionEngine, Fitness, make_optimizer
from litlab.evolution.demonstration_space import DemonstrationSpace

EPPO_OPTIMIZERS = ["DiscreteLenglerOnePlusOne", "DiscreteOnePlusOne", "RandomSearch", "PortfolioDiscreteOnePlusOne"]


def asked(space: DemonstrationSpace, optimizer: str, count: int, seed: int = 0) -> list[dict]:
    """``count`` candidates of ``optimizer`` after the start, never told an improvement (every ask mutates)."""
    opt = make_optimizer(optimizer, space.parametrization(), budget=10 * count, num_workers=1, seed=seed)
    opt.suggest(space.encode(space.identity()))
    values = []
    for i in range(count + 1):
        candidate = opt.ask()
        values.append(space.decode(candidate.value))
        opt.tell(candidate, 0.0 if i == 0 else 1.0)
    return values


def test_default_start_is_the_first_k_and_decodes_to_distinct_indices():
    space = DemonstrationSpace(pool_size=50, shots=4)
    assert space.start == (0, 1, 2, 3) and space.selected() == (0, 1, 2, 3)
    assert space.dimension == 4 and set(space.parts) == {"demonstrations"}
    assert space.selected({"demonstrations": np.array([7, 3, 7, 9])}) == (7, 3, 9)  # a repeat is dropped
    with space.applied({"demonstrations": np.array([5, 6, 7, 8])}):
        assert space.selected() == (5, 6, 7, 8)
    assert space.selected() == (0, 1, 2, 3)


@pytest.mark.parametrize("optimizer", EPPO_OPTIMIZERS)
def test_candidates_never_repeat_a_demonstration_and_stay_in_the_pool(optimizer):
    space = DemonstrationSpace(pool_size=12, shots=5, start=[11, 0, 4, 2, 9])
    values = asked(space, optimizer, 150)
    assert space.selected(values[0]) == (11, 0, 4, 2, 9)  # the start is asked first
    prompts = [space.selected(v) for v in values]
    assert all(len(set(p)) == len(p) and all(0 <= i < 12 for i in p) for p in prompts)
    assert len(set(prompts)) > 20  # the optimizer moves
    assert any(len(p) < 5 for p in prompts)  # a pool of 12 makes repeats in 5 slots: they are removed, not shown


def test_searched_k_covers_its_range_and_fills_the_unused_slots():
    space = DemonstrationSpace(pool_size=1000, shots=3, shots_range=(2, 8), start=[10, 20, 30])
    assert set(space.parts) == {"demonstrations", "shots"} and space.dimension == 9
    assert space.parts["demonstrations"].start.tolist() == [10, 20, 30, 0, 1, 2, 3, 4]
    assert space.selected() == (10, 20, 30)
    value = {"demonstrations": np.array([5, 5, 6, 7, 8, 9, 10, 11]), "shots": np.array([4])}
    assert space.selected(value) == (5, 6, 7, 8, 9, 10)  # k = 2 + 4 distinct indices, the 5 once
    ks = [len(space.selected(v)) for v in asked(space, "RandomSearch", 300)]
    assert min(ks) == 2 and max(ks) == 8 and set(ks) == set(range(2, 9))
    assert space.describe()["pre_prompt"] == {"pool_size": 1000, "shots": 3, "shots_range": [2, 8],
                                              "start": [10, 20, 30]}


@pytest.mark.parametrize("optimizer", EPPO_OPTIMIZERS)
def test_each_optimizer_improves_a_pool_objective_and_is_seeded(optimizer):
    """Fitness: the share of the pre-prompt's demonstrations that are 'good' (multiples of 5); the start has none."""
    def run(seed: int) -> tuple:
        space = DemonstrationSpace(pool_size=200, shots=4, start=[1, 2, 3, 4])
        fitness = Fitness(lambda model, batch: [sum(i % 5 == 0 for i in space.selected()) / 4])
        engine = EvolutionEngine(nn.Linear(1, 1), space, fitness, optimizer=optimizer, budget=60, seed=seed,
                                 feedback="comparison", apply_best=False)
        result = engine.run([None])
        return result.selection_before, result.selection_after, space.selected(result.best), \
            [r["fitness"] for r in result.history]

    before, after, best, history = run(0)
    assert before == 0.0 and after > 0.0 and sum(i % 5 == 0 for i in best) / 4 == after
    assert run(0)[3] == history  # same seed, same run
    assert run(1)[3] != history


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pool_size": 0, "shots": 2}, "demonstration pool is empty"),
    ({"pool_size": 3, "shots": 4}, "shots=4 is not allowed: it exceeds the pool of 3"),
    ({"pool_size": 10, "shots": 0}, "shots=0"),
    ({"pool_size": 10, "shots": 4, "shots_range": (5, 8)}, "must hold shots=4"),
    ({"pool_size": 6, "shots": 4, "shots_range": (2, 8)}, "exceeds the pool of 6"),
    ({"pool_size": 10, "shots": 2, "start": [1, 1]}, "distinct"),
    ({"pool_size": 10, "shots": 2, "start": [1, 10]}, r"in \[0, 10\)"),
    ({"pool_size": 10, "shots": 2, "start": [1]}, "give 2 pool indices"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DemonstrationSpace(**kwargs)
