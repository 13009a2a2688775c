from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.evolution import ParameterSpace, SearchSpace, SubspaceSpace

from .conftest import tiny_model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_bitwise(model: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p, reference[name]), name


@pytest.mark.parametrize(("granularity", "dimension"), [("tensor", 2), ("channel", 16), ("entry", 256)])
def test_granularity_sets_the_dimension(granularity, dimension):
    space = ParameterSpace(tiny_model(), select="blocks.*.mlp.fc2.weight", granularity=granularity)
    assert space.dimension == dimension  # fc2.weight is [8, 16], two of them
    assert SearchSpace(space).parametrization().dimension == dimension
    assert np.array_equal(space.identity(), np.zeros(dimension))


def test_multiplicative_and_additive_updates():
    model = tiny_model()
    w = model.head.weight.detach().clone()
    mult = ParameterSpace(model, select="head.weight", granularity="channel", mode="multiplicative")
    x = np.array([0.1, -0.2, 0.3])
    token = mult.apply(x)
    expected = w * torch.exp(torch.tensor(x, dtype=torch.float32))[:, None]
    assert torch.allclose(model.head.weight, expected)
    mult.restore(token)
    add = ParameterSpace(model, select="head.weight", granularity="tensor", mode="additive")
    token = add.apply(np.array([0.5]))
    assert torch.allclose(model.head.weight, w + 0.5)
    add.restore(token)
    assert torch.equal(model.head.weight, w)
    assert np.array_equal(mult.split(x)["head.weight"], x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_restore_is_bitwise_after_many_cycles(dtype, mode):
    model = tiny_model(dtype=dtype)
    reference = snapshot(model)
    space = SearchSpace({
        "entries": ParameterSpace(model, select="blocks.*.mlp.*.weight", granularity="entry", mode=mode),
        "channels": ParameterSpace(model, module_type=nn.LayerNorm, granularity="channel", mode=mode),
        "sub": SubspaceSpace(model, dim=5, select="head.*", mode=mode, seed=3),
    })
    rng = np.random.default_rng(0)
    for _ in range(50):
        value = {name: rng.normal(0, 0.3, part.dimension) for name, part in space.parts.items()}
        with space.applied(value):
            assert not torch.equal(model.head.weight, reference["head.weight"])
    assert_bitwise(model, reference)


def test_identity_is_exact_and_saves_only_touched_tensors():
    model = tiny_model(dtype=torch.bfloat16)
    reference = snapshot(model)
    space = ParameterSpace(model, select="blocks.*", granularity="channel")
    assert space.apply(space.identity()) == []  # nothing copied, nothing changed
    assert_bitwise(model, reference)
    value = space.identity()
    value[:8] = 0.1  # the first tensor's channels only
    token = space.apply(value)
    assert [t.shape for _, t, _ in token] == [model.blocks[0].norm.weight.shape]  # one tensor saved, not the model
    space.restore(token)
    assert_bitwise(model, reference)


def test_failing_apply_restores_what_it_changed():
    model = tiny_model()
    reference = snapshot(model)
    space = SearchSpace({"a": ParameterSpace(model, select="head.weight"),
                         "b": ParameterSpace(model, select="head.bias")})
    with pytest.raises(ConfigError, match="must have 1 numbers"):
        space.apply({"a": np.array([0.5]), "b": np.zeros(3)})
    assert_bitwise(model, reference)


def test_session_reuses_originals_and_stays_exact():
    model = tiny_model(dtype=torch.bfloat16)
    reference = snapshot(model)
    space = SearchSpace({"w": ParameterSpace(model, select="blocks.*", granularity="channel", mode="additive"),
                         "sub": SubspaceSpace(model, dim=3, select="head.weight")})
    rng = np.random.default_rng(1)
    values = [{"w": rng.normal(0, 0.5, space.parts["w"].dimension), "sub": rng.normal(0, 0.5, 3)} for _ in range(20)]
    outside = []
    for value in values:
        with space.applied(value):
            outside.append(snapshot(model))
    with space.session():
        for value, expected in zip(values, outside, strict=True):
            with space.applied(value):
                assert all(torch.equal(p, expected[n]) for n, p in model.named_parameters())
            assert_bitwise(model, reference)
        with space.applied(values[0]), space.applied(values[1]):  # nested applies compose, as outside
            nested = snapshot(model)
    assert_bitwise(model, reference)
    with space.applied(values[0]), space.applied(values[1]):
        assert all(torch.equal(p, nested[n]) for n, p in model.named_parameters())


def test_decode_scales_and_bounces():
    part = ParameterSpace(tiny_model(), select="head.weight", scale=0.1, box=0.25)
    assert part.decode(np.array([1.0])).tolist() == pytest.approx([0.1])
    assert part.decode(np.array([3.0])).tolist() == pytest.approx([0.2])  # 0.3 bounces back to 0.2
    assert part.decode(np.array([-4.0])).tolist() == pytest.approx([-0.1])
    assert part.decode(np.array([-9.0])).tolist() == pytest.approx([0.25])  # nevergrad's quirk: the other side of the box
    assert part.encode(np.array([0.2])).tolist() == pytest.approx([2.0])


@pytest.mark.parametrize("projection", ["sparse", "gaussian"])
def test_subspace_projection_is_seeded_and_streamed_like_cached(projection):
    model = tiny_model()
    cached = SubspaceSpace(model, dim=4, select="blocks.*.mlp.fc1.weight", seed=7, projection=projection)
    streamed = SubspaceSpace(model, dim=4, select="blocks.*.mlp.fc1.weight", seed=7, max_cache_mb=0,
                             projection=projection)
    other = SubspaceSpace(model, dim=4, select="blocks.*.mlp.fc1.weight", seed=8, projection=projection)
    assert cached.cached and streamed.cached == (projection == "sparse")
    z = np.array([0.3, -0.1, 0.2, 0.05])
    for i in range(2):
        p = cached.projection(i)
        assert p.shape == (128, 4)
        assert torch.equal(cached.delta(i, z), streamed.delta(i, z))
        assert torch.allclose(cached.delta(i, z).reshape(-1), p @ torch.tensor(z, dtype=torch.float32))
        assert not torch.equal(p, other.projection(i))
    p = cached.projection(0)
    if projection == "gaussian":
        assert 0.35 < float(p.std()) < 0.65  # N(0, 1/k), k = 4
    else:  # one +-1 per row, columns and signs balanced
        assert torch.equal(p.abs().sum(1), torch.ones(128))
        assert p.abs().sum(0).min() > 15 and abs(float(p.sum())) < 40
    w = model.blocks[1].mlp.fc1.weight.detach().clone()
    token = streamed.apply(z)
    assert torch.allclose(model.blocks[1].mlp.fc1.weight, w * torch.exp(cached.delta(1, z)))
    streamed.restore(token)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, w)


def test_bad_arguments_are_config_errors():
    model = tiny_model()
    with pytest.raises(ConfigError, match="mode"):
        ParameterSpace(model, mode="scale")
    with pytest.raises(ConfigError, match="granularity"):
        ParameterSpace(model, granularity="row")
    with pytest.raises(ConfigError, match="scale"):
        ParameterSpace(model, scale=0)
    with pytest.raises(ConfigError, match="dim"):
        SubspaceSpace(model, dim=0)
    with pytest.raises(ConfigError, match="same model tensor"):
        SearchSpace({"a": ParameterSpace(model, select="head.*"), "b": ParameterSpace(model, regex="head")})


def test_search_space_layout_and_round_trip():
    import nevergrad as ng

    from litlab.evolution import HyperParameters, IndexSpace

    model = tiny_model()
    hp = HyperParameters({"t": (1.0, 0.5, 2.0)})
    flat = SearchSpace({"w": ParameterSpace(model, select="head.*", scale=0.1), "hp": hp})
    assert isinstance(flat.parametrization(), ng.p.Array) and flat.parametrization().dimension == 3
    mixed = SearchSpace({"w": ParameterSpace(model, select="head.*"), "idx": IndexSpace(50, 3), "hp": hp})
    assert isinstance(mixed.parametrization(), ng.p.Dict) and mixed.dimension == 6
    assert isinstance(SearchSpace(IndexSpace(50, 3)).parametrization(), ng.p.Array)
    value = {"w": np.array([0.05, -0.1]), "idx": np.array([3, 1, 4]), "hp": {"t": 1.5}}
    decoded = mixed.decode(mixed.encode(value))
    assert list(decoded) == ["w", "idx", "hp"] and decoded["w"] == pytest.approx(value["w"])
    assert decoded["hp"]["t"] == pytest.approx(1.5) and decoded["idx"].tolist() == [3, 1, 4]
    assert mixed.decode(mixed.encode(mixed.identity()))["hp"] == {"t": 1.0}
