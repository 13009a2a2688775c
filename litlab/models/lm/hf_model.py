"""Hugging Face causal language models in litlab: loading from a local directory, logits, batched decoding.

* :func:`load_hf_model` reads a local model directory (``from_pretrained(..., local_files_only=True)``; a missing
  or incomplete directory is a one-line :class:`~litlab.errors.DataError` naming the path and the file);
  :func:`build_hf_model` builds a randomly initialized model from a config dict (``AutoConfig.for_model``).
* :class:`HFLogits` makes any ``AutoModelForCausalLM`` a network with litlab's calling convention
  (``network(input_ids) -> logits``, or ``network(None, inputs_embeds=...)`` for soft inputs).
* :class:`HFDecoder` is the :class:`~litlab.models.lm.generation.Decoder` of such a model: prompts of
  different lengths are left-padded, with an attention mask and each row's own ``position_ids``, in the model's
  own KV cache (``DynamicCache``); a shared prefix is run once and its cache repeated for every row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from litlab.errors import ConfigError, DataError
from litlab.models.lm.padding import left_pad

__all__ = ["DTYPES", "HFDecoder", "HFLogits", "build_hf_model", "load_hf_model", "torch_dtype"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a weights' dtype name (``float32``, ``bfloat16``, ``float16``); ConfigError otherwise."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not allowed: choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_hf_model(path: str, dtype: str = "float32", attn_implementation: str = "sdpa") -> nn.Module:
    """A causal LM from a local Hugging Face directory (nothing is downloaded).

    Args:
        path: The directory (``config.json`` and the weights: ``model.safetensors`` or a sharded index).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        attn_implementation: ``sdpa`` or ``eager`` (as transformers names them).
    """
    weights_dtype = torch_dtype(dtype)
    if not os.path.isdir(path):
        raise DataError(f"pretrained_path={path!r}: no such directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise DataError(f"pretrained_path={path!r} is incomplete: missing config.json")
    if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES):
        raise DataError(f"pretrained_path={path!r} is incomplete: missing the weights ({' or '.join(WEIGHT_FILES)})")
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=weights_dtype,
                                                    attn_implementation=attn_implementation)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"pretrained_path={path!r}: cannot load the model: {str(err).splitlines()[0]}") from err


def build_hf_model(config: dict[str, Any], dtype: str = "float32", attn_implementation: str = "sdpa") -> nn.Module:
    """A randomly initialized causal LM from ``config`` (``{"model_type": "llama", "hidden_size": 64, ...}``)."""
    weights_dtype = torch_dtype(dtype)
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(f"config={config!r} is not allowed: give a dict with model_type (e.g. 'llama') and sizes")
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(config)
    try:
        hf_config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        hf_config._attn_implementation = attn_implementation
        return AutoModelForCausalLM.from_config(hf_config, dtype=weights_dtype)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"config={config!r}: {str(err).splitlines()[0]}") from err


class HFLogits(nn.Module):
    """A Hugging Face causal LM called the litlab way: ``network(input_ids) -> logits [B, T, vocab]``.

    Args:
        model: An ``AutoModelForCausalLM`` instance.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model

    def forward(self, input_ids: Tensor | None, inputs_embeds: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        return self.hf(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                       use_cache=False).logits


class HFDecoder:
    """Batched KV-cached decoding of a Hugging Face causal LM (a :class:`~litlab.models.lm.generation.Decoder`).

    Args:
        model: An ``AutoModelForCausalLM`` instance.
        pad_id: Id written into padding positions (masked out).
        max_length: Longest sequence (prefix + row + new ids); default: ``config.max_position_embeddings``.
    """

    def __init__(self, model: nn.Module, pad_id: int, max_length: int | None = None) -> None:
        self.model, self.pad_id = model, pad_id
        self.max_length = max_length or int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.device = next(model.parameters()).device
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.next_pos = torch.zeros(0, dtype=torch.long)

    def room(self) -> int | None:
        return 0 if self.cache is None else self.max_length - self.mask.shape[1]

    def prefill(self, rows: Sequence[Sequence[int]], prefix: Sequence[int] | None = None) -> Tensor:
        from transformers import DynamicCache

        n, head = len(rows), list(prefix or [])
        ids, real, positions = left_pad(rows, self.pad_id, len(head), self.max_length)
        if any(len(row) == 0 for row in rows):
            raise ConfigError("every prompt row needs at least one id after the prefix")
        self.cache = DynamicCache(config=self.model.config)
        self.mask = torch.zeros(n, 0, dtype=torch.long, device=self.device)
        self.next_pos = torch.zeros(n, dtype=torch.long, device=self.device)
        if head:
            self.model(input_ids=torch.tensor([head], device=self.device), cache=self.cache, use_cache=True,
                       logits_to_keep=1)
            self.cache.batch_repeat_interleave(n)
            self.mask = torch.ones(n, len(head), dtype=torch.long, device=self.device)
            self.next_pos += len(head)
        positions = self.next_pos[:, None] + positions.to(self.device)
        return self._forward(ids.to(self.device), positions, real.long().to(self.device))

    def step(self, tokens: Tensor) -> Tensor:
        ids = tokens.to(self.device, torch.long)[:, None]
        return self._forward(ids, self.next_pos[:, None].clone(), torch.ones_like(ids))

    def _forward(self, ids: Tensor, positions: Tensor, real: Tensor) -> Tensor:
        self.mask = torch.cat([self.mask, real], dim=1)
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        self.next_pos = positions[:, -1] + 1
        return out.logits[:, -1]
