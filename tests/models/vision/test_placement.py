import pytest

from litlab.errors import ConfigError
from litlab.models.vision.placement import BlockRef, block_names, resolve_placement


def indices(placement, depths, scope="global"):
    return [r.index for r in resolve_placement(placement, depths, scope)]


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        # V-MoE (vmoe_paper/common.py), L = 12
        ("every-2", [1, 3, 5, 7, 9, 11]),
        ("every-3", [2, 5, 8, 11]),
        ("every-1", list(range(12))),
        ("last-2", [9, 11]),
        ("last-1", [11]),
        ("last-5", [3, 5, 7, 9, 11]),
        ("last-6", [1, 3, 5, 7, 9, 11]),
        ("all", list(range(12))),
        ("none", []),
        ("dense", []),
        ("Every_2", [1, 3, 5, 7, 9, 11]),
        ("LAST2", [9, 11]),
        ([0, 5, -1], [0, 5, 11]),
        ((3, 1), [1, 3]),
        ([], []),
    ],
)
def test_vmoe_examples_vit(placement, expected):
    assert indices(placement, [12]) == expected
    # a single stage: both scopes agree, and stage is always 0
    assert indices(placement, [12], "per-stage") == expected
    assert all(r.stage == 0 and r.block == r.index for r in resolve_placement(placement, [12]))


def test_vmoe_formulas_for_many_depths():
    for L in range(1, 30):
        for n in range(1, L + 1):
            assert indices(f"every-{n}", [L]) == list(range(n - 1, L, n))
        for n in range(1, L // 2 + 1):
            assert indices(f"last-{n}", [L]) == list(tuple(range(1, L, 2))[-n:])


CONVNEXT_T = [3, 3, 9, 3]


def test_convnext_global_scope_counts_over_all_stages():
    refs = resolve_placement("last-2", CONVNEXT_T)  # L = 18 -> global 15, 17 -> stage 3, blocks 0 and 2
    assert refs == [BlockRef(3, 0, 15), BlockRef(3, 2, 17)]
    assert indices("every-2", CONVNEXT_T) == [1, 3, 5, 7, 9, 11, 13, 15, 17]
    assert [(r.stage, r.block) for r in resolve_placement("every-6", CONVNEXT_T)] == [(1, 2), (2, 5), (3, 2)]
    refs = resolve_placement([0, 3, 6, 15], CONVNEXT_T)
    assert [(r.stage, r.block) for r in refs] == [(0, 0), (1, 0), (2, 0), (3, 0)]


def test_convnext_per_stage_scope_applies_rule_in_every_stage():
    refs = resolve_placement("every-2", CONVNEXT_T, "per-stage")
    assert [(r.stage, r.block) for r in refs] == [(0, 1), (1, 1), (2, 1), (2, 3), (2, 5), (2, 7), (3, 1)]
    assert [r.index for r in refs] == [1, 4, 7, 9, 11, 13, 16]
    assert [(r.stage, r.block) for r in resolve_placement("last-1", CONVNEXT_T, "per-stage")] == [
        (0, 1), (1, 1), (2, 7), (3, 1)
    ]
    # every-4: stages of depth 3 get nothing, the depth-9 stage gets blocks 3 and 7
    assert [(r.stage, r.block) for r in resolve_placement("every-4", CONVNEXT_T, "per-stage")] == [(2, 3), (2, 7)]
    # explicit lists are within-stage indices, applied to every stage
    assert [(r.stage, r.block) for r in resolve_placement([-1], CONVNEXT_T, "per-stage")] == [
        (0, 2), (1, 2), (2, 8), (3, 2)
    ]
    assert len(resolve_placement("all", CONVNEXT_T, "per-stage")) == 18


def test_block_names():
    assert block_names(resolve_placement("last-2", [12]), hierarchical=False) == ["blocks.9", "blocks.11"]
    assert block_names(resolve_placement("last-2", CONVNEXT_T), hierarchical=True, suffix=".mlp") == [
        "stages.3.blocks.0.mlp",
        "stages.3.blocks.2.mlp",
    ]


@pytest.mark.parametrize(
    ("placement", "depths", "scope", "match"),
    [
        ("every", [12], "global", "every-n"),
        ("first-2", [12], "global", "every-n"),
        ("every-0", [12], "global", "n must be >= 1"),
        ("last-0", [12], "global", "n must be >= 1"),
        ("every-13", [12], "global", "selects no block"),
        ("last-7", [12], "global", "odd-indexed blocks.*only 6"),
        ("last-2", CONVNEXT_T, "per-stage", "stage 0 with 3 blocks has only 1"),
        ("every-10", CONVNEXT_T, "per-stage", "selects no block"),
        ([12], [12], "global", "out of range"),
        ([-13], [12], "global", "out of range"),
        ([3, 3], [12], "global", "duplicate"),
        ([11, -1], [12], "global", "duplicate"),
        ([5], CONVNEXT_T, "per-stage", "out of range for stage 0"),
        ([1.0], [12], "global", "integers"),
        ([True], [12], "global", "integers"),
        (["1"], [12], "global", "integers"),
        (3, [12], "global", "expected"),
        ("every-2", [12], "stage", "placement_scope"),
        ("every-2", [], "global", "depths"),
        ("every-2", [0, 0], "global", "no blocks"),
    ],
)
def test_errors(placement, depths, scope, match):
    with pytest.raises(ConfigError, match=match):
        resolve_placement(placement, depths, scope)


def test_error_names_argument_and_value():
    with pytest.raises(ValueError) as err:  # ConfigError is a ValueError
        resolve_placement("last-7", [12])
    assert "placement='last-7'" in str(err.value) and "n must be <= 6" in str(err.value)
