"""Export a :class:`~litlab.models.lm.flat_transformer.FlatTransformer` as a Hugging Face Llama directory.

A FlatTransformer is a Llama: pre-norm blocks (RMSNorm → multi-head attention with RoPE → residual, RMSNorm →
SwiGLU → residual), no biases, a final RMSNorm and an untied head. The directory written by :func:`export_llama`
loads with ``LlamaForCausalLM.from_pretrained`` and, in float32, computes the same logits up to float rounding:
a few 1e-6 at 64 positions on a small model. The gap grows with the position because transformers computes the
RoPE angles ``position * inv_freq`` in float32 while litlab tabulates them in float64 (about 1.5e-5 at 512).

The mapping (per block ``i``):

=========================================  ==========================================
litlab                                     transformers (``LlamaForCausalLM``)
=========================================  ==========================================
``embedding.weight``                       ``model.embed_tokens.weight``
``trunk.layers.i.attention_norm.weight``   ``model.layers.i.input_layernorm.weight``
``trunk.layers.i.attention.wq/wk.weight``  ``model.layers.i.self_attn.q_proj/k_proj.weight`` (rows permuted)
``trunk.layers.i.attention.wv/wo.weight``  ``model.layers.i.self_attn.v_proj/o_proj.weight``
``trunk.layers.i.ffn_norm.weight``         ``model.layers.i.post_attention_layernorm.weight``
``trunk.layers.i.feed_forward.w1/w3/w2``   ``model.layers.i.mlp.gate_proj/up_proj/down_proj``
``norm.weight``                            ``model.norm.weight``
``output.weight``                          ``lm_head.weight``
=========================================  ==========================================

RoPE pairing: litlab rotates *adjacent* channels ``(2j, 2j+1)`` of a head by the angle of frequency ``j``
(:func:`~litlab.models.lm.transformer.apply_rotary`), Llama in transformers rotates ``(j, j + D/2)``
(``rotate_half``). Reordering each head's query and key channels as ``0, 2, 4, ..., D-2, 1, 3, ..., D-1`` turns
one into the other, and attention scores are sums over channels, so permuting the rows of ``wq`` and ``wk`` the
same way per head gives the same scores (values and ``wo`` are untouched). This is the permutation of the Meta
→ Hugging Face Llama conversion scripts.

What Llama cannot represent is refused with a :class:`~litlab.errors.ConfigError`: a sliding attention window
shorter than ``max_length`` (Llama attends to the whole causal prefix) and models other than a FlatTransformer
(AU-Net). The attention back end (``sdpa``/``flex``) is a training detail and does not matter.

Tokenizer: for a byte-level BPE (``tokenizer_json``) the directory also holds a ``PreTrainedTokenizerFast``
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) with ``<bos>``/``<eos>``; it prepends BOS like litlab's
scoring and generation (``add_special_tokens=False`` gives exactly litlab's ``encode``), encodes the text
``"<bos>"`` as plain characters like litlab's packing (``split_special_tokens``) and decodes without
clean-up. A byte model (ids 0..255 = bytes, 256 = BOS, 257 = EOS) has no ``tokenizers`` equivalent worth
shipping: no tokenizer files are written and :func:`export_llama` reports so.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from litlab.errors import ConfigError, DataError
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.hf_model import torch_dtype
from litlab.text.bpe import BOS_TOKEN, EOS_TOKEN, load_bpe

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

__all__ = ["export_llama", "llama_config", "qk_permutation", "to_llama_state_dict"]


# Files an export writes (anything else in the output folder makes export_llama refuse to write there).
_EXPORT_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "added_tokens.json", "litlab_export.json",
})  # fmt: skip
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def _check_exportable(model: object) -> FlatTransformer:
    if not isinstance(model, FlatTransformer):
        raise ConfigError(
            f"model={type(model).__name__} is not allowed: only a FlatTransformer (TransformerLM) exports to Llama"
        )
    if model.trunk.window is not None:  # the stack keeps only windows shorter than max_length
        raise ConfigError(
            f"window={model.window!r} is not allowed for a Llama export: Llama attends to the whole causal prefix, "
            f"so the sliding window must be null or >= max_length={model.max_length}"
        )
    head_dim = model.dim // model.heads
    if model.dim % model.heads or head_dim % 2:
        raise ConfigError(f"heads={model.heads} is not allowed: Llama needs an even head_dim dividing dim={model.dim}")
    return model


def _check_id(name: str, value: object, vocab_size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ConfigError(f"{name}={value!r} is not allowed: expected an id in [0, {vocab_size})")
    return value


def llama_config(model: FlatTransformer, bos_id: int, eos_id: int, dtype: str = "float32") -> LlamaConfig:
    """The ``transformers.LlamaConfig`` of ``model`` (multi-head attention: as many key/value heads as heads)."""
    from transformers import LlamaConfig

    model = _check_exportable(model)
    _check_id("bos_id", bos_id, model.vocab_size)
    _check_id("eos_id", eos_id, model.vocab_size)
    torch_dtype(dtype)  # ConfigError naming a dtype that is not allowed
    first = model.trunk.layers[0]
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=model.vocab_size,
        hidden_size=model.dim,
        intermediate_size=first.feed_forward.hidden_dim,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.heads,
        num_key_value_heads=model.heads,
        head_dim=model.dim // model.heads,
        hidden_act="silu",
        max_position_embeddings=model.max_length,
        rms_norm_eps=float(model.norm.eps),
        rope_parameters={"rope_type": "default", "rope_theta": float(model.trunk.rope.theta)},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
        dtype=dtype,
    )


def qk_permutation(head_dim: int) -> Tensor:
    """Channel order of one head that turns litlab's adjacent-pair RoPE into Llama's half-split RoPE.

    Llama's channel ``k`` is litlab's channel ``perm[k]``: ``0, 2, ..., D-2, 1, 3, ..., D-1``.
    """
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def _permute_rows(weight: Tensor, heads: int) -> Tensor:
    head_dim = weight.shape[0] // heads
    return weight.view(heads, head_dim, -1)[:, qk_permutation(head_dim)].reshape(weight.shape)


def to_llama_state_dict(model: FlatTransformer, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """``LlamaForCausalLM`` weights of ``model`` (fresh contiguous CPU tensors; ``dtype`` casts them)."""
    model = _check_exportable(model)
    if any(norm.eps != model.norm.eps for layer in model.trunk.layers for norm in (layer.attention_norm, layer.ffn_norm)):
        raise ConfigError("norm_eps is not allowed to differ between RMSNorms: Llama has one rms_norm_eps")

    def take(t: Tensor) -> Tensor:
        t = t.detach().to("cpu", dtype=dtype or t.dtype)
        return t.contiguous().clone()

    out = {"model.embed_tokens.weight": take(model.embedding.weight)}
    for i, layer in enumerate(model.trunk.layers):
        p, attn, ffn = f"model.layers.{i}.", layer.attention, layer.feed_forward
        out[p + "input_layernorm.weight"] = take(layer.attention_norm.weight)
        out[p + "self_attn.q_proj.weight"] = take(_permute_rows(attn.wq.weight.detach(), attn.heads))
        out[p + "self_attn.k_proj.weight"] = take(_permute_rows(attn.wk.weight.detach(), attn.heads))
        out[p + "self_attn.v_proj.weight"] = take(attn.wv.weight)
        out[p + "self_attn.o_proj.weight"] = take(attn.wo.weight)
        out[p + "post_attention_layernorm.weight"] = take(layer.ffn_norm.weight)
        out[p + "mlp.gate_proj.weight"] = take(ffn.w1.weight)
        out[p + "mlp.up_proj.weight"] = take(ffn.w3.weight)
        out[p + "mlp.down_proj.weight"] = take(ffn.w2.weight)
    out["model.norm.weight"] = take(model.norm.weight)
    out["lm_head.weight"] = take(model.output.weight)
    return out


def _is_export_file(name: str) -> bool:
    return name in _EXPORT_FILES or _SHARD.fullmatch(name) is not None


def _prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir``, or empty it of a previous export; refuse a file or a folder holding other files."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out={str(out_dir)!r} is not allowed: it is a file, not a directory")
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir() if not (p.is_file() and _is_export_file(p.name)))
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise ConfigError(
                f"out={str(out_dir)!r} is not allowed: the directory holds files that are not a previous export "
                f"({shown}); choose an empty or new directory"
            )
        for p in path.iterdir():  # a previous export: drop it, so no stale tokenizer or shard stays behind
            p.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fast_tokenizer(
    tokenizer_json: str, bos_id: int, eos_id: int, vocab_size: int, max_length: int
) -> PreTrainedTokenizerFast:
    """The checked ``PreTrainedTokenizerFast`` of a litlab byte-level BPE."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = load_bpe(tokenizer_json)
    if (tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)) != (bos_id, eos_id):
        raise DataError(
            f"tokenizer_path={tokenizer_json!r}: <bos>/<eos> are ids {tokenizer.token_to_id(BOS_TOKEN)}/"
            f"{tokenizer.token_to_id(EOS_TOKEN)}, the model uses {bos_id}/{eos_id}"
        )
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise DataError(f"tokenizer_path={tokenizer_json!r} has {size} ids, more than the model's vocab_size={vocab_size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


def _save_tokenizer(fast: PreTrainedTokenizerFast, out: Path) -> None:
    fast.save_pretrained(str(out))
    # transformers 5 writes "TokenizersBackend", a name 4.x lacks; "PreTrainedTokenizerFast" loads in both (the
    # BOS template is in tokenizer.json's post-processor), and 4.x also reads special_tokens_map.json.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def export_llama(
    model: FlatTransformer,
    out_dir: str | os.PathLike,
    tokenizer_json: str | None,
    bos_id: int,
    eos_id: int,
    dtype: str = "float32",
) -> Path:
    """Write ``model`` as a Hugging Face Llama directory loadable with ``LlamaForCausalLM.from_pretrained``.

    Writes ``config.json``, ``model.safetensors``, ``generation_config.json`` (greedy, stops at EOS, never
    produces BOS, like litlab's ``generate``), ``litlab_export.json`` (provenance and notes) and, when
    ``tokenizer_json`` is given, the tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``).

    Args:
        model: The network (a FlatTransformer without a sliding window shorter than its max_length).
        out_dir: Directory to write (created; a previous export there is replaced, other files make it refuse).
        tokenizer_json: The byte-level BPE's tokenizers JSON, or None for a byte model (no tokenizer written).
        bos_id: Id of BOS.
        eos_id: Id of EOS.
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights.

    Returns:
        The directory.
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    config = llama_config(model, bos_id, eos_id, dtype)
    state = to_llama_state_dict(model, torch_dtype(dtype))
    fast = None if tokenizer_json is None else _fast_tokenizer(tokenizer_json, bos_id, eos_id, model.vocab_size,
                                                                 model.max_length)
    out = _prepare_out_dir(out_dir)  # everything is checked: only now touch the folder
    config.save_pretrained(str(out))
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id, do_sample=False,
        suppress_tokens=[bos_id],
    ).save_pretrained(str(out))  # fmt: skip
    notes = []
    if fast is not None:
        _save_tokenizer(fast, out)
    else:
        notes.append(
            "no tokenizer files: ids are raw bytes (0..255), "
            f"BOS={bos_id}, EOS={eos_id}; encode with list(text.encode('utf-8')) and prepend BOS"
        )
        log.warning("Llama export of a byte model: %s", notes[-1])
    info = {"source": "litlab FlatTransformer", "dtype": dtype, "rope": "q/k rows permuted to rotate-half",
            "tokenizer": "bpe" if tokenizer_json is not None else "bytes", "notes": notes}  # fmt: skip
    (out / "litlab_export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out
