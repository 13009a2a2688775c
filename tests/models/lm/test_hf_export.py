"""Llama export of a FlatTransformer: transformers computes the same logits; what Llama lacks is refused."""

from __future__ import annotations

import json

import pytest
import torch

from litlab.errors import ConfigError
from litlab.models.lm.aunet import AUNet
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.hf_export import export_llama, llama_config, qk_permutation, to_llama_state_dict
from litlab.models.lm.transformer import RMSNorm, RotaryEmbedding, apply_rotary

transformers = pytest.importorskip("transformers")



@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

TINY = {"dim": 64, "layers": 2, "heads": 4, "vocab_size": 300, "max_length": 64, "ffn_multiple_of": 16}


def _tiny(seed: int = 0, **kw) -> FlatTransformer:
    torch.manual_seed(seed)
    model = FlatTransformer(**{**TINY, **kw}, rope_theta=1e4).eval()
    with torch.no_grad():  # RMSNorm weights away from ones, so a misplaced norm would show
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _tiny()
    out = tmp_path_factory.mktemp("llama")
    export_llama(model, out, None, bos_id=256, eos_id=257)
    return model, out


def test_apply_rotary_on_adjacent_pairs_is_rotate_half_after_the_permutation():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    head_dim, length = 16, 10
    rope = RotaryEmbedding(head_dim, length, theta=1e4)
    cos, sin = rope(length)
    x = torch.randn(2, length, 3, head_dim)  # [B, L, H, D]
    ours = apply_rotary(x, cos, sin)
    perm = qk_permutation(head_dim)
    hf_cos, hf_sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]  # [1, L, D]
    theirs, _ = apply_rotary_pos_emb(x[..., perm], x[..., perm], hf_cos, hf_sin, unsqueeze_dim=2)
    torch.testing.assert_close(theirs, ours[..., perm], atol=1e-6, rtol=0)


def test_config_and_weights_have_llamas_names_and_shapes(exported):
    model, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["intermediate_size"] == model.trunk.layers[0].feed_forward.hidden_dim
    assert config["num_key_value_heads"] == config["num_attention_heads"] == 4
    assert config["rope_parameters"]["rope_theta"] == 1e4 and config["tie_word_embeddings"] is False
    assert (config["bos_token_id"], config["eos_token_id"]) == (256, 257)
    assert not (out / "tokenizer.json").exists()  # a byte model: no tokenizer files
    assert "no tokenizer files" in json.loads((out / "litlab_export.json").read_text())["notes"][0]
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_pretrained(out, local_files_only=True))
    state = to_llama_state_dict(model)
    assert state.keys() == hf.state_dict().keys()
    assert all(state[k].shape == v.shape for k, v in hf.state_dict().items())
    # v, o and the MLP are copied as they are; q and k have their rows permuted within each head.
    assert torch.equal(state["model.layers.1.self_attn.v_proj.weight"], model.trunk.layers[1].attention.wv.weight)
    wq = model.trunk.layers[0].attention.wq.weight
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight"][16 + 8], wq[16 + 1])  # head 1, channel 8 = old 1


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_transformers_computes_the_same_logits(exported, attn):
    model, out = exported
    hf, info = transformers.LlamaForCausalLM.from_pretrained(
        out, local_files_only=True, dtype=torch.float32, attn_implementation=attn, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hf.eval()
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for length in (1, 9, 64):
        ids = torch.randint(0, TINY["vocab_size"], (3, length), generator=gen)
        with torch.no_grad():
            ours, theirs = model(ids), hf(ids).logits
        assert theirs.shape == ours.shape
        worst = max(worst, float((ours - theirs).abs().max()))
    assert worst <= 1e-5, worst


def test_half_precision_export_stores_that_dtype(tmp_path):
    from safetensors import safe_open

    model = _tiny()
    export_llama(model, tmp_path, None, bos_id=256, eos_id=257, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118


def test_what_llama_cannot_represent_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"window=16 .*max_length=64"):
        llama_config(_tiny(window=16), 256, 257)
    with pytest.raises(ConfigError, match="window"):
        export_llama(_tiny(window=16), tmp_path / "w", None, 256, 257)
    assert not (tmp_path / "w").exists()  # refused before anything was written
    llama_config(_tiny(window=64), 256, 257)  # a window covering max_length is plain causal attention
    llama_config(_tiny(attention="flex"), 256, 257)  # the back end does not matter
    aunet = AUNet(dims=[32, 64], layers=[1, 1], heads=[2, 2], windows=[16, None], max_lengths=[64, 32],
                  ffn_multiple_of=16)
    with pytest.raises(ConfigError, match="FlatTransformer"):
        to_llama_state_dict(aunet)
    with pytest.raises(ConfigError, match="dtype='int8'"):
        export_llama(_tiny(), tmp_path / "d", None, 256, 257, dtype="int8")
    with pytest.raises(ConfigError, match="bos_id=300"):
        llama_config(_tiny(), 300, 257)


def test_the_output_folder_may_only_hold_a_previous_export(tmp_path):
    model = _tiny()
    export_llama(model, tmp_path, None, 256, 257)
    (tmp_path / "tokenizer.json").write_text("{}")  # a stale file of an earlier export is replaced, not kept
    export_llama(model, tmp_path, None, 256, 257)
    assert not (tmp_path / "tokenizer.json").exists()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"out=.*notes\.txt"):
        export_llama(model, tmp_path, None, 256, 257)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="is a file"):
        export_llama(model, tmp_path / "notes.txt", None, 256, 257)
