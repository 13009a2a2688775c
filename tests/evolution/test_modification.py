"""BBoxER's places where x acts: each is ``W ⊙ exp(x)`` on the right tensors, the identity at 0, undone bit for
bit; unknown names are errors that list close matches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from litlab.errors import ConfigError
from litlab.evolution.modification import (
    PLACES,
    block_linear_names,
    modification_space,
    norm_scale_names,
    resolve_tensors,
)
from litlab.lightning_modules.transformer_lm import TransformerLM

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(dim=32, layers=2, heads=2, ffn_multiple_of=16, seq_len=64).eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def random_value(space, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {name: rng.normal(0, 0.3, part.dimension) for name, part in space.parts.items()}


def test_norms_are_every_norm_scale_and_blocks_are_the_layers_linear_weights(lm):
    norms = norm_scale_names(lm)
    assert norms == [n for n, _ in lm.named_parameters() if n.endswith("norm.weight") or "norm" in n.split(".")[-2]]
    assert len(norms) == 2 * 2 + 1 and all(n.endswith(".weight") for n in norms)
    linears = block_linear_names(lm)
    assert linears and all(".blocks." in n or ".layers." in n for n in linears)
    assert not any("embed" in n or "head" in n or "norm" in n for n in linears)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=50)
    llama = LlamaForCausalLM(config)
    assert norm_scale_names(llama) == ["model.layers.0.input_layernorm.weight",
                                       "model.layers.0.post_attention_layernorm.weight",
                                       "model.layers.1.input_layernorm.weight",
                                       "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"]
    assert "lm_head.weight" not in block_linear_names(llama) and len(block_linear_names(llama)) == 14


@pytest.mark.parametrize("place", PLACES)
def test_identity_at_zero_and_bit_exact_undo(lm, place):
    before = snapshot(lm)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        logits = lm(ids)
    space = modification_space(lm, place, scale=0.1, subspace_dim=4, seed=3)
    space.restore(space.apply(space.identity()))
    tokens = space.apply(space.identity())
    with torch.no_grad():
        assert torch.equal(lm(ids), logits)  # x = 0 is the unchanged model
    space.restore(tokens)
    value = random_value(space)
    for session in (False, True):
        context = space.session() if session else torch.no_grad()
        with context:
            tokens = space.apply(value)
            touched = {id(p) for p in space.parameters()}
            changed = [n for n, p in lm.named_parameters() if not torch.equal(p, before[n])]
            assert changed and all(id(dict(lm.named_parameters())[n]) in touched for n in changed)
            space.restore(tokens)
        for name, p in lm.named_parameters():
            assert torch.equal(p, before[name]), (place, session, name)


def test_each_place_is_w_times_exp_x(lm):
    before = snapshot(lm)
    space = modification_space(lm, ["norms", "channel_scales"], tensors="*.feed_forward.*", scale=0.1)
    value = random_value(space, seed=2)
    tokens = space.apply(value)
    params = dict(lm.named_parameters())
    for place in ("norms", "channel_scales"):
        for name, x in space.parts[place].split(value[place]).items():
            factor = torch.exp(torch.as_tensor(x, dtype=torch.float32)).reshape(-1, *[1] * (params[name].dim() - 1))
            assert torch.allclose(params[name], before[name] * factor, rtol=1e-6), name
    space.restore(tokens)
    layers = modification_space(lm, "layer_scales", tensors=["*.attention.w*"], scale=0.1)
    assert layers.dimension == len(layers.parts["layer_scales"].named)  # one number per chosen tensor
    norms = modification_space(lm, "norms", norm_granularity="tensor")
    assert norms.dimension == len(norm_scale_names(lm))


def test_subspace_moves_all_chosen_entries_along_k_directions(lm):
    space = modification_space(lm, "subspace", tensors="*.layers.0.*", subspace_dim=3, seed=5)
    part = space.parts["subspace"]
    assert space.dimension == 3 and all(".layers.0." in n for n, _ in part.named)
    other = modification_space(lm, "subspace", tensors="*.layers.0.*", subspace_dim=3, seed=6).parts["subspace"]
    assert not torch.equal(part.projection(0), other.projection(0))  # the seed picks the subspace


def test_unknown_tensor_names_list_close_matches(lm):
    name = block_linear_names(lm)[0]
    typo = name.replace("weight", "weigth")
    with pytest.raises(ConfigError, match=f"'{typo}' matches no parameter of TransformerLM; close matches: .*{name}"):
        modification_space(lm, "channel_scales", tensors=[typo])
    with pytest.raises(ConfigError, match="matches no parameter .* named like"):
        resolve_tensors(lm, ["zzz*"])
    with pytest.raises(ConfigError, match="'norm' is not a place where x acts.*did you mean norms"):
        modification_space(lm, ["norm"])
    with pytest.raises(ConfigError, match="'norms' and 'layer_scales' both change"):
        modification_space(lm, ["layer_scales", "norms"], tensors="*norm*")
    with pytest.raises(ConfigError, match="norm_granularity='entry'"):
        modification_space(lm, "norms", norm_granularity="entry")
    with pytest.raises(ConfigError, match="names a place twice"):
        modification_space(lm, ["norms", "norms"])
