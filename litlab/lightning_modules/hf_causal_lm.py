"""`HFCausalLM`: any Hugging Face ``transformers`` causal language model as a litlab :class:`LanguageModel`.

Built from a local model directory (``pretrained_path``: Llama, Qwen, SmolLM, ... checkpoints, with their
tokenizer; nothing is downloaded) or from a config dict for a randomly initialized model (``config``: e.g.
``{"model_type": "llama", "hidden_size": 64, ...}``, with litlab's BPE or a local tokenizer). It has the
interface of litlab's own language models: ``encode``/``decode``, logits for ids or for soft inputs
(:meth:`HFCausalLM.logits_from_embeds`), batched scoring (:meth:`~LanguageModel.score`) and batched
KV-cached generation (:meth:`~LanguageModel.generate_batch`, in the model's own cache:
:class:`~litlab.models.lm.hf_model.HFDecoder`); and ``litlab fit`` fine-tunes it on the text datamodules
(next-token cross-entropy, bits per byte).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Literal

import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.lightning_modules.language_model import LanguageModel
from litlab.models.lm.generation import Decoder
from litlab.models.lm.hf_model import HFDecoder, HFLogits, build_hf_model, load_hf_model
from litlab.text.tokenizers import BPETokenizer, HFTokenizer


class HFCausalLM(LanguageModel):
    """A ``transformers`` causal LM (``AutoModelForCausalLM``) trained, scored and sampled like litlab's own LMs.

    Args:
        pretrained_path: A local Hugging Face model directory (``config.json`` + weights); or give ``config``.
        config: A config dict for ``AutoConfig.for_model`` (``model_type`` + sizes): a randomly initialized model.
        tokenizer_path: A Hugging Face tokenizer directory, or a litlab BPE JSON (``litlab train_bpe``); default:
            ``pretrained_path`` (linked from a text datamodule by the CLI).
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights.
        attn_implementation: ``sdpa`` or ``eager``.
        vocab_size: Vocabulary size of the data (linked from the datamodule); with ``config`` it sets the model's
            vocabulary when the config gives none, and it must not exceed the model's.
        bytes_per_token: Mean UTF-8 bytes per token of the data (linked); converts FLOPs per token to per byte.
        seq_len: Tokens per training window (linked from the datamodule).
        lr: Peak learning rate.
        weight_decay: AdamW weight decay on matrices and embeddings.
        betas: AdamW betas.
        warmup_steps: Linear warmup in optimizer steps.
        min_lr_ratio: Final learning rate as a fraction of the peak.
        compute_budget: Training compute in FLOPs for the AU-Net paper's learning-rate rule (``null``: use ``lr``).
        compile: Train a ``torch.compile``-d network.
    """

    compute_family = "bpe"

    def __init__(
        self,
        pretrained_path: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer_path: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        vocab_size: int | None = None,
        bytes_per_token: float = 4.0,
        seq_len: int = 1024,
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        betas: Sequence[float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        compute_budget: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(
            seq_len=seq_len, lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
            min_lr_ratio=min_lr_ratio, compute_budget=compute_budget, compile=compile,
        )
        if (pretrained_path is None) == (config is None):
            raise ConfigError("give exactly one of pretrained_path (a local model directory) and config (a dict)")
        if tokenizer_path is None and pretrained_path is None:
            raise ConfigError("config needs tokenizer_path (a tokenizer directory or a litlab BPE JSON)")
        if bytes_per_token <= 0:
            raise ConfigError(f"bytes_per_token={bytes_per_token!r} is not allowed: must be > 0")
        self.save_hyperparameters()
        self.model = self.build_model()

    def build_model(self) -> nn.Module:
        hp = self.hparams
        if hp.pretrained_path is not None:
            model = load_hf_model(hp.pretrained_path, hp.dtype, hp.attn_implementation)
        else:
            config = dict(hp.config)
            if hp.vocab_size is not None:
                config.setdefault("vocab_size", hp.vocab_size)
            model = build_hf_model(config, hp.dtype, hp.attn_implementation)
        size = model.get_input_embeddings().num_embeddings
        if hp.vocab_size is not None and hp.vocab_size > size:
            raise ConfigError(f"vocab_size={hp.vocab_size} (the data's) exceeds the model's {size} embeddings")
        return HFLogits(model)

    @property
    def hf_model(self) -> nn.Module:
        """The ``transformers`` model itself."""
        return self.model.hf

    # ------------------------------------------------------------------ tokens
    @cached_property
    def tokenizer(self) -> HFTokenizer | BPETokenizer:
        """The tokenizer (:mod:`litlab.text.tokenizers`): a directory's ``AutoTokenizer``, or a litlab BPE JSON."""
        path = self.hparams.tokenizer_path or self.hparams.pretrained_path
        if os.path.isfile(path) and path.endswith(".json"):
            return BPETokenizer(path)
        return HFTokenizer(path)

    # ------------------------------------------------------------------ soft inputs, decoding, accounting
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf_model.get_input_embeddings()(ids)

    def logits_from_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.model(None, inputs_embeds=embeds)

    def decoder(self, use_cache: bool = True) -> Decoder:
        """The model's own KV cache over a left-padded batch (``use_cache`` is always on for HF models)."""
        return HFDecoder(self.hf_model, pad_id=self.eos_id)

    def flops_per_byte(self) -> float:
        """``6·N + 6·layers·hidden·seq_len`` training FLOPs per token (N: non-embedding parameters; attention
        scores and values over the causal half), per byte of text."""
        config = self.hf_model.config
        params = sum(p.numel() for name, p in self.hf_model.named_parameters()
                     if "embed" not in name and "lm_head" not in name)
        layers = int(getattr(config, "num_hidden_layers", 0))
        hidden = int(getattr(config, "hidden_size", 0))
        return (6.0 * params + 6.0 * layers * hidden * self.hparams.seq_len) / self.hparams.bytes_per_token
