"""Pooling indices against a slow per-sample Python implementation of the definition."""

from __future__ import annotations

import pytest
import torch

from litlab.models.lm.pooling import Pooling, pooling_plan


def slow_plan(levels: list[int], pooled_lengths: list[int], positions: int) -> list[dict]:
    """The definition, one sample, plain Python: nested stages, position 0 forced, first L_s kept."""
    length = len(levels)
    prev = list(range(length))  # byte positions of the real slots of stage s-1
    prev_length = length  # static length of stage s-1 (real + pad slots)
    stages = []
    for stage, pooled_length in enumerate(pooled_lengths, start=1):
        is_boundary = [t == 0 or levels[t] > stage - 1 for t in range(length)]
        kept = [t for t in prev if is_boundary[t]][:pooled_length]
        gather = [prev.index(t) for t in kept]
        count = len(kept)
        gather += [gather[-1]] * (pooled_length - count)  # pads repeat the last real slot
        coarse, offset = [], []
        for j in range(prev_length):
            k = max(i for i in range(count) if gather[i] <= j)
            coarse.append(k)
            offset.append((j - gather[k]) % positions)
        stages.append({
            "gather": gather, "coarse": coarse, "offset": offset, "count": count, "boundaries": sum(is_boundary),
        })  # fmt: skip
        prev, prev_length = kept, pooled_length
    return stages


CASES = [
    # (T, pooled lengths, max level, probability of a boundary)
    (64, [32, 16, 8], 3, 0.3),  # no truncation expected at stage 1, some deeper
    (64, [8, 4, 2], 3, 0.5),  # heavy truncation everywhere
    (40, [64, 64], 2, 0.2),  # more slots than bytes: many pads
    (50, [50, 50, 50], 3, 1.0),  # every byte a top-level boundary
    (33, [20, 10, 5], 3, 0.0),  # no boundary at all except the forced position 0
    (1, [4, 2], 2, 0.5),  # a single byte
]


@pytest.mark.parametrize(("length", "pooled", "max_level", "density"), CASES)
def test_plan_matches_slow_reference(length: int, pooled: list[int], max_level: int, density: float) -> None:
    gen = torch.Generator().manual_seed(length + len(pooled))
    batch = 4
    is_boundary = torch.rand(batch, length, generator=gen) < density
    levels = torch.where(is_boundary, torch.randint(1, max_level + 1, (batch, length), generator=gen), 0)
    levels[1, 0] = 0  # position 0 must be forced even with level 0
    plan = pooling_plan(levels, pooled, positions=4)
    total_dropped = [0] * len(pooled)
    total_bounds = [0] * len(pooled)
    for b in range(batch):
        ref = slow_plan(levels[b].tolist(), pooled, positions=4)
        for s, stage in enumerate(ref):
            assert plan.gather_index[s][b].tolist() == stage["gather"], (b, s)
            assert plan.coarse_index[s][b].tolist() == stage["coarse"], (b, s)
            assert plan.offset[s][b].tolist() == stage["offset"], (b, s)
            assert plan.counts[s, b].item() == stage["count"]
            assert plan.boundaries[s, b].item() == stage["boundaries"]
            total_dropped[s] += stage["boundaries"] - stage["count"]
            total_bounds[s] += stage["boundaries"]
    expected_rate = torch.tensor([d / n for d, n in zip(total_dropped, total_bounds, strict=True)])
    torch.testing.assert_close(plan.truncation_rate, expected_rate)
    for s, pooled_length in enumerate(pooled):
        assert plan.gather_index[s].shape == (batch, pooled_length)
        assert plan.gather_index[s].dtype == torch.int64


def test_plan_known_example() -> None:
    # bytes:   0  1  2  3  4  5  6  7  8  9
    levels = torch.tensor([[0, 0, 1, 0, 2, 0, 1, 0, 0, 2]])
    plan = pooling_plan(levels, [4, 3], positions=16)
    # stage 1 keeps 0 (forced), 2, 4, 6; byte 9 is cut by L_1 = 4
    assert plan.gather_index[0].tolist() == [[0, 2, 4, 6]]
    assert plan.coarse_index[0].tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 3, 3]]
    assert plan.offset[0].tolist() == [[0, 1, 0, 1, 0, 1, 0, 1, 2, 3]]
    # stage 2 keeps stage-1 slots 0 (byte 0) and 2 (byte 4); byte 9 is gone with stage 1; one pad
    assert plan.gather_index[1].tolist() == [[0, 2, 2]]
    assert plan.coarse_index[1].tolist() == [[0, 0, 1, 1]]
    assert plan.offset[1].tolist() == [[0, 1, 0, 1]]
    assert plan.counts.tolist() == [[4], [2]]
    assert plan.boundaries.tolist() == [[5], [3]]
    torch.testing.assert_close(plan.truncation_rate, torch.tensor([1 / 5, 1 / 3]))


def test_plan_without_pooling_stages() -> None:
    plan = pooling_plan(torch.zeros(2, 8, dtype=torch.long), [])
    assert plan.gather_index == [] and plan.counts.shape == (0, 2) and plan.truncation_rate.shape == (0,)


def test_plan_compiles_fullgraph_and_accepts_int8_levels() -> None:
    levels = torch.randint(0, 4, (3, 48), generator=torch.Generator().manual_seed(1)).to(torch.int8)
    eager = pooling_plan(levels, [24, 12, 6])
    compiled = torch.compile(pooling_plan, fullgraph=True, backend="aot_eager")(levels, [24, 12, 6])
    for a, b in zip(eager.gather_index + eager.coarse_index + eager.offset,
                    compiled.gather_index + compiled.coarse_index + compiled.offset, strict=True):  # fmt: skip
        assert torch.equal(a, b)
    assert torch.equal(eager.counts, compiled.counts)


def test_pooling_module_gathers_then_norms_then_projects() -> None:
    torch.manual_seed(0)
    pool = Pooling(16, 24)
    x = torch.randn(2, 10, 16)
    index = torch.tensor([[0, 3, 7], [0, 1, 1]])
    expected = torch.stack([pool.proj(pool.norm(x[b, index[b]])) for b in range(2)])
    torch.testing.assert_close(pool(x, index), expected)
    assert pool.proj.weight.shape == (24, 16)
