"""`TransformerLM`: the baselines of AU-Net — the same Transformer blocks on BPE tokens or on raw bytes.

On BPE (``tokenizer: bpe``) it is the paper's token-level baseline; on bytes (``tokenizer: bytes``) it is the flat
byte Transformer. Both report bits per byte, so they compare with :class:`AUNetLM` on the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Literal

import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.lightning_modules.language_model import LanguageModel
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.generation import Decoder
from litlab.models.lm.hf_export import export_llama
from litlab.models.lm.ragged import RaggedDecoder
from litlab.text.byte_vocab import BYTE_VOCAB_SIZE
from litlab.text.tokenizers import BPETokenizer, ByteTokenizer


class TransformerLM(LanguageModel):
    """Causal Transformer language model on BPE tokens or bytes.

    Args:
        dim: Model width.
        layers: Number of blocks.
        heads: Attention heads.
        window: Sliding attention window (``null``: full causal attention).
        tokenizer: ``bpe`` or ``bytes`` (linked from the datamodule by the CLI).
        tokenizer_path: The ``tokenizers`` JSON file of the BPE (linked from the datamodule).
        vocab_size: Vocabulary size (linked from the datamodule).
        bytes_per_token: Mean UTF-8 bytes per token of the data (linked from the datamodule); converts FLOPs per
            token into FLOPs per byte.
        seq_len: Tokens per training window (linked from the datamodule).
        rope_theta: RoPE base.
        ffn_multiple_of: SwiGLU hidden width is rounded up to a multiple of this.
        ffn_multiplier: Optional multiplier of the SwiGLU hidden width.
        attention: ``sdpa`` or ``flex``.
        lr: Peak learning rate (ignored when ``compute_budget`` is set).
        weight_decay: AdamW weight decay on matrices and embeddings.
        betas: AdamW betas.
        warmup_steps: Linear warmup in optimizer steps.
        min_lr_ratio: Final learning rate as a fraction of the peak.
        compute_budget: Training compute in FLOPs for the paper's learning-rate rule (``null``: use ``lr``).
        compile: Train a ``torch.compile``-d network.
    """

    def __init__(
        self,
        dim: int = 2048,
        layers: int = 24,
        heads: int = 16,
        window: int | None = None,
        tokenizer: Literal["bpe", "bytes"] = "bpe",
        tokenizer_path: str | None = None,
        vocab_size: int = 4096,
        bytes_per_token: float = 1.0,
        seq_len: int = 1024,
        rope_theta: float = 500000.0,
        ffn_multiple_of: int = 256,
        ffn_multiplier: float | None = None,
        attention: str = "sdpa",
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: Sequence[float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.01,
        compute_budget: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(
            seq_len=seq_len, lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
            min_lr_ratio=min_lr_ratio, compute_budget=compute_budget, compile=compile,
        )
        if tokenizer not in ("bpe", "bytes"):
            raise ConfigError(f"tokenizer={tokenizer!r} is not allowed: choose 'bpe' or 'bytes'")
        if tokenizer == "bytes" and vocab_size != BYTE_VOCAB_SIZE:
            raise ConfigError(f"vocab_size={vocab_size} with tokenizer='bytes': the byte vocabulary has 258 ids")
        if bytes_per_token <= 0:
            raise ConfigError(f"bytes_per_token={bytes_per_token!r} is not allowed: must be > 0")
        self.save_hyperparameters()
        self.model = self.build_model()

    @property
    def compute_family(self) -> str:  # type: ignore[override]
        return "bpe" if self.hparams.tokenizer == "bpe" else "aunet"

    def build_model(self) -> nn.Module:
        hp = self.hparams
        return FlatTransformer(
            dim=hp.dim, layers=hp.layers, heads=hp.heads, vocab_size=hp.vocab_size, max_length=hp.seq_len,
            window=hp.window, rope_theta=hp.rope_theta, ffn_multiple_of=hp.ffn_multiple_of,
            ffn_multiplier=hp.ffn_multiplier, attention=hp.attention,
        )

    # ------------------------------------------------------------------ tokens
    @cached_property
    def tokenizer(self) -> ByteTokenizer | BPETokenizer:
        """The model's tokenizer (:mod:`litlab.text.tokenizers`)."""
        if self.hparams.tokenizer == "bytes":
            return ByteTokenizer()
        if self.hparams.tokenizer_path is None:
            raise ConfigError("tokenizer='bpe' needs tokenizer_path (the tokenizers JSON written by litlab train_bpe)")
        return BPETokenizer(self.hparams.tokenizer_path)

    def flops_per_byte(self) -> float:
        return float(self.model.flops_per_token(self.hparams.seq_len)) / self.hparams.bytes_per_token

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embedding(ids)

    def logits_from_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.model(None, inputs_embeds=embeds)

    def decoder(self, use_cache: bool = True) -> Decoder:
        """The whole batch in one KV cache (:class:`RaggedDecoder`) when the attention is full causal."""
        if use_cache and self.model.trunk.window is None:
            return RaggedDecoder(self.model, pad_id=self.eos_id)
        return super().decoder(use_cache)

    def export_hf(self, out_dir: str, dtype: str = "float32") -> str:
        """Write this model as a Hugging Face Llama directory (:func:`litlab.models.lm.hf_export.export_llama`),
        with its tokenizer for a BPE model (a byte model's ids are the bytes, then BOS and EOS)."""
        tokenizer_json = self.hparams.tokenizer_path if self.hparams.tokenizer == "bpe" else None
        return str(export_llama(self.model, out_dir, tokenizer_json, self.bos_id, self.eos_id, dtype))
