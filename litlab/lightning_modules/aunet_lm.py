"""`AUNetLM`: the autoregressive U-Net over raw bytes (AU-Net 2/3/4; one stage is the flat byte Transformer).

The network is :class:`litlab.models.lm.aunet.AUNet`; this module adds what :class:`LanguageModel` shares (loss,
bits per byte, AdamW + warmup/cosine, throughput logging, scoring) plus the byte encoding and the split levels
that tell each pooling stage where words and word groups end (:mod:`litlab.text.splitting`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.lightning_modules.language_model import LanguageModel
from litlab.models.lm.aunet import AUNet
from litlab.text.byte_vocab import BYTE_VOCAB_SIZE
from litlab.text.splitting import split_token_levels
from litlab.text.tokenizers import ByteTokenizer


class AUNetLM(LanguageModel):
    """AU-Net language model on bytes.

    Args:
        dims: Model width of each stage, bytes first (e.g. ``[512, 2048, 3072]`` for AU-Net 3).
        layers: Blocks per stage; below the last stage, each stage has an encoder and a decoder of this many.
        heads: Attention heads per stage.
        windows: Sliding attention window per stage (``null``: full causal attention).
        pooled_lengths: Static maximum pooled length of each deeper stage (one per stage after the first); pooled
            sequences are padded or truncated to it (the truncation rate is logged). ``null``: ``seq_len`` halved
            at every stage.
        seq_len: Byte window of a training sequence (linked from the datamodule by the CLI).
        word_groups: Word-group size of each pooling level of the splitting rule (linked from the datamodule);
            stage ``s`` pools where the level exceeds ``s - 1``.
        rope_theta: RoPE base.
        ffn_multiple_of: SwiGLU hidden width is rounded up to a multiple of this.
        ffn_multiplier: Optional multiplier of the SwiGLU hidden width.
        upsample_positions: Position-specific matrices of the multi-linear upsampling.
        attention: ``sdpa`` (``scaled_dot_product_attention``) or ``flex`` (flex attention).
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
        dims: list[int] = [512, 2048, 3072],  # noqa: B006  (jsonargparse shows list defaults in --help)
        layers: list[int] = [3, 3, 18],  # noqa: B006
        heads: list[int] = [8, 16, 24],  # noqa: B006
        windows: list[int | None] = [512, None, None],  # noqa: B006
        pooled_lengths: list[int] | None = None,
        seq_len: int = 1024,
        word_groups: list[int] = [1, 2, 4],  # noqa: B006
        rope_theta: float = 500000.0,
        ffn_multiple_of: int = 256,
        ffn_multiplier: float | None = None,
        upsample_positions: int = 16,
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
        if pooled_lengths is not None and len(pooled_lengths) != len(dims) - 1:
            raise ConfigError(
                f"pooled_lengths={pooled_lengths!r} must have one entry per stage after the first "
                f"({len(dims) - 1} for dims={dims!r})"
            )
        if len(word_groups) < len(dims) - 1:
            raise ConfigError(
                f"word_groups={word_groups!r} gives {len(word_groups)} pooling levels; dims={dims!r} needs "
                f"{len(dims) - 1}"
            )
        self.save_hyperparameters()
        self.model = self.build_model()

    def max_lengths(self) -> list[int]:
        """Static sequence length of every stage, bytes first."""
        hp = self.hparams
        if hp.pooled_lengths is not None:
            return [hp.seq_len, *hp.pooled_lengths]
        return [max(1, hp.seq_len // 2**s) for s in range(len(hp.dims))]

    def build_model(self) -> nn.Module:
        hp = self.hparams
        return AUNet(
            dims=list(hp.dims), layers=list(hp.layers), heads=list(hp.heads), windows=list(hp.windows),
            max_lengths=self.max_lengths(), vocab_size=BYTE_VOCAB_SIZE, rope_theta=hp.rope_theta,
            ffn_multiple_of=hp.ffn_multiple_of, ffn_multiplier=hp.ffn_multiplier,
            upsample_positions=hp.upsample_positions, attention=hp.attention,
        )

    # ------------------------------------------------------------------ bytes and levels
    @property
    def tokenizer(self) -> ByteTokenizer:
        """Bytes: one id per byte, plus BOS and EOS."""
        return ByteTokenizer()

    def levels_for_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Split levels of each row of a ``[B, T]`` id tensor (causal rule; rows split independently)."""
        rows = ids.detach().cpu().numpy()
        levels = np.stack([split_token_levels(r, self.hparams.word_groups, causal=True) for r in rows])
        return torch.from_numpy(levels.astype(np.int64)).to(ids.device)

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return batch["input_ids"], batch["levels"]

    def inputs_for_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ids, self.levels_for_ids(ids)

    def stage_stats(self) -> dict[str, torch.Tensor]:
        """Per pooling stage: mean pooled vectors per window and the share of boundaries truncated."""
        stats = getattr(self.model, "last_stats", None) or {}
        out: dict[str, torch.Tensor] = {}
        if "pooled_counts" in stats:
            for s, counts in enumerate(stats["pooled_counts"], start=2):
                out[f"pooled_stage{s}"] = counts.float().mean()
        if "truncation_rate" in stats:
            for s, rate in enumerate(stats["truncation_rate"], start=2):
                out[f"truncated_stage{s}"] = rate
        return out

    def flops_per_byte(self) -> float:
        return float(self.model.flops_per_byte(self.hparams.seq_len))
