"""Flat causal Transformer language model: the BPE baseline and the flat byte Transformer of the AU-Net paper.

``embedding → TransformerStack → RMSNorm → head`` (head not tied to the embedding). The modules and their
names are those of a one-stage :class:`~litlab.models.lm.aunet.AUNet` (``embedding``, ``trunk``, ``norm``,
``output``), so a one-stage AU-Net's state dict loads into a FlatTransformer and computes the same logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from litlab.errors import ConfigError
from litlab.models.lm.checks import check_lm_inputs, check_lm_scalars, check_stack_args
from litlab.models.lm.kv_cache import StackCache
from litlab.models.lm.transformer import (
    RMSNorm,
    TransformerStack,
    init_trunc_normal_,
)

__all__ = ["FlatTransformer"]


class FlatTransformer(nn.Module):
    """Decoder-only Transformer over tokens (BPE ids or bytes).

    Args:
        dim: Model width.
        layers: Number of blocks.
        heads: Attention heads (``dim`` divisible by it, even head width).
        vocab_size: Vocabulary size (258 for bytes, the tokenizer's size for BPE).
        max_length: Longest input (sizes the RoPE table).
        window: Sliding attention window (None = full causal).
        rope_theta: RoPE base.
        ffn_multiple_of: SwiGLU hidden width rounded up to a multiple of this.
        ffn_multiplier: Optional factor on the SwiGLU hidden width.
        norm_eps: RMSNorm epsilon.
        attention: ``"sdpa"`` or ``"flex"``.
        init_std: σ override for every matrix (None: the reference's ``dim^-0.5`` rules).
        check_values: Also check that ids lie in the vocabulary (a host sync; skipped under torch.compile).
    """

    def __init__(
        self,
        dim: int,
        layers: int,
        heads: int,
        vocab_size: int,
        max_length: int,
        window: int | None = None,
        rope_theta: float = 5e5,
        ffn_multiple_of: int = 256,
        ffn_multiplier: float | None = None,
        norm_eps: float = 1e-5,
        attention: str = "sdpa",
        init_std: float | None = None,
        check_values: bool = False,
    ) -> None:
        super().__init__()
        check_stack_args(dim=dim, layers=layers, heads=heads, max_length=max_length, window=window, attention=attention)
        check_lm_scalars(vocab_size, rope_theta, ffn_multiple_of, ffn_multiplier, norm_eps, init_std)
        self.dim, self.num_layers, self.heads, self.vocab_size = dim, layers, heads, vocab_size
        self.max_length, self.window, self.check_values = max_length, window, check_values
        self.config = {
            "dim": dim, "layers": layers, "vocab_size": vocab_size, "window": window,
            "ffn_multiple_of": ffn_multiple_of, "ffn_multiplier": ffn_multiplier,
        }  # fmt: skip
        self.embedding = nn.Embedding(vocab_size, dim)
        self.trunk = TransformerStack(
            dim, layers, heads, max_length, window, rope_theta, ffn_multiple_of, ffn_multiplier, norm_eps,
            attention, init_std,
        )  # fmt: skip
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        std = init_std or dim**-0.5
        init_trunc_normal_(self.embedding.weight, std)
        init_trunc_normal_(self.output.weight, std)

    def new_cache(self) -> StackCache:
        """An empty KV cache for cached decoding (capacity ``max_length``)."""
        return self.trunk.new_cache()

    def forward(
        self,
        input_ids: Tensor | None,
        cache: StackCache | None = None,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Next-token logits ``[B, T, vocab_size]`` for ``input_ids [B, T]`` (``T ≤ max_length``).

        With ``cache``, the positions are appended to it (prefill or one decoding step); ragged batches also give
        ``positions`` and ``mask`` (see :meth:`TransformerStack.forward`). ``inputs_embeds [B, T, dim]`` replaces
        the embedding of ``input_ids`` (soft inputs: pass ``input_ids=None``). ``last_only``: the logits of the last
        position only (``[B, 1, vocab_size]``, what decoding needs).
        """
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("give input_ids or inputs_embeds")
            check_lm_inputs(input_ids, self.max_length, self.vocab_size, self.check_values)
            inputs_embeds = self.embedding(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.dim:
            raise ConfigError(f"inputs_embeds must be [batch, seq_len, {self.dim}], got {tuple(inputs_embeds.shape)}")
        hidden = self.trunk(inputs_embeds, cache, positions, mask)
        return self.output(self.norm(hidden[:, -1:] if last_only else hidden))

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters; ``non_embedding`` leaves out the input embedding and the output head."""
        total = sum(p.numel() for p in self.parameters())
        return total - 2 * self.vocab_size * self.dim if non_embedding else total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token at ``seq_len`` (default ``max_length``); see :mod:`litlab.models.lm.accounting`."""
        from litlab.models.lm.accounting import flat_flops

        if seq_len is not None and seq_len < 1:
            raise ConfigError(f"seq_len={seq_len!r} is not allowed: expected a positive integer")
        return flat_flops(**self.config, seq_len=seq_len or self.max_length)["total"]
