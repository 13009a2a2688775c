"""AU-Net: an autoregressive U-Net over raw bytes ("From Bytes to Ideas", arXiv 2506.14761).

Stages ``0..S-1`` (``S = len(dims)``, 1 to 4). Stage 0 works on bytes; stage s ≥ 1 on the positions that the
split levels mark as its boundaries (:mod:`litlab.models.lm.pooling`). Reading top to bottom::

    x = embedding(bytes)                                  # [B, T, dims[0]]
    for s in 0..S-2:  x = encoder[s](x); skip[s] = x; x = pooling[s](x)      # down: [B, L_{s+1}, dims[s+1]]
    x = trunk(x)                                                              # the deepest stage
    for s in S-2..0:  x = decoder[s](skip[s] + upsampling[s](x))              # up: multi-linear upsampling
    logits = output(norm(x))

Every stage is a causal :class:`~litlab.models.lm.transformer.TransformerStack` (RoPE positions counted within
the stage, optional sliding window). With one stage the model is a flat byte Transformer (embedding → stack
→ norm → head), the same modules and parameter names as :class:`~litlab.models.lm.flat_transformer.FlatTransformer`.

Causality: a pooled vector at boundary p_k has seen bytes ≤ p_k, and fine position t reads the last
boundary ≤ t, so no shift is needed; position 0 is forced to be a boundary of every stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from litlab.errors import ConfigError
from litlab.models.lm.checks import check_lm_inputs, check_lm_scalars, check_stack_args
from litlab.models.lm.kv_cache import StackCache
from litlab.models.lm.pooling import Pooling, PoolingPlan, pooling_plan
from litlab.models.lm.transformer import (
    ATTENTION_IMPLS,
    RMSNorm,
    TransformerStack,
    init_trunc_normal_,
)
from litlab.models.lm.upsampling import UPSAMPLING_IMPLS, MultiLinearUpsampling

__all__ = ["AUNet", "AUNetCache"]

MAX_STAGES = 4


@dataclass
class AUNetCache:
    """KV caches of every stack of an :class:`AUNet`, plus what a cached forward leaves for the next step.

    ``stage_outputs[s]`` is the last output sequence of stage s (trunk or decoder), ``plan`` the pooling
    plan of the last cached forward (``None`` before one).
    """

    encoders: list[StackCache]
    decoders: list[StackCache]
    trunk: StackCache
    stage_outputs: list[Tensor | None] = field(default_factory=list)
    plan: PoolingPlan | None = None


def _check_lists(**lists: object) -> int:
    lengths = {}
    for name, value in lists.items():
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} is not allowed: expected a list with one entry per stage")
        lengths[name] = len(value)
    num_stages = lengths["dims"]
    if not 1 <= num_stages <= MAX_STAGES:
        raise ConfigError(f"dims has {num_stages} entries: AU-Net supports 1 to {MAX_STAGES} stages")
    for name, n in lengths.items():
        if n != num_stages:
            raise ConfigError(f"{name} has {n} entries but dims has {num_stages}: give one entry per stage")
    return num_stages


class AUNet(nn.Module):
    """Autoregressive U-Net language model over bytes.

    Args:
        dims: Width of each stage, bytes first (e.g. ``[512, 2048, 3072]``).
        layers: Blocks per stage; below the trunk this is the count of the encoder and of the decoder each.
        heads: Attention heads per stage (``dims[i]`` divisible by it, even head width for RoPE).
        windows: Sliding attention window per stage (None = full causal), e.g. ``[512, 4096, 4096]``.
        max_lengths: Static sequence length per stage: ``max_lengths[0]`` is the byte window (the longest
            input accepted), ``max_lengths[s]`` the number of pooled vectors stage s keeps (boundaries beyond
            it are dropped; see ``last_stats``). Positive and non-increasing.
        vocab_size: Input/output vocabulary (258: bytes + BOS + EOS). Embedding and head are not tied.
        rope_theta: RoPE base of every stage.
        ffn_multiple_of: SwiGLU hidden width rounded up to a multiple of this.
        ffn_multiplier: Optional factor on the SwiGLU hidden width.
        norm_eps: RMSNorm epsilon.
        upsample_positions: Number of position-specific upsampling matrices (16 in the paper).
        attention: Attention back end, ``"sdpa"`` or ``"flex"``.
        residual_skips: Add the encoder output of a stage to the upsampled vectors (the U-Net skip).
        init_std: σ override for every block matrix, the embedding and the head (None: ``dim^-0.5`` rules
            of the reference); pooling and upsampling keep their fan-in rule.
        check_values: Also check that ids lie in the vocabulary (a host sync; skipped under torch.compile).
        upsample_impl: Upsampling back end: ``"auto"`` (``grouped_mm`` where it can run, else ``folded``),
            ``"folded"`` or ``"grouped_mm"`` (see :mod:`litlab.models.lm.upsampling`); all compute the same function.
    """

    def __init__(
        self,
        dims: Sequence[int],
        layers: Sequence[int],
        heads: Sequence[int],
        windows: Sequence[int | None],
        max_lengths: Sequence[int],
        vocab_size: int = 258,
        rope_theta: float = 5e5,
        ffn_multiple_of: int = 256,
        ffn_multiplier: float | None = None,
        norm_eps: float = 1e-5,
        upsample_positions: int = 16,
        attention: str = "sdpa",
        residual_skips: bool = True,
        init_std: float | None = None,
        check_values: bool = False,
        upsample_impl: str = "auto",
    ) -> None:
        super().__init__()
        num_stages = _check_lists(dims=dims, layers=layers, heads=heads, windows=windows, max_lengths=max_lengths)
        for i in range(num_stages):
            check_stack_args(
                dim=dims[i], layers=layers[i], heads=heads[i], max_length=max_lengths[i], window=windows[i],
                attention=attention, suffix=f"[{i}]",
            )  # fmt: skip
        for i in range(1, num_stages):
            if max_lengths[i] > max_lengths[i - 1]:
                raise ConfigError(f"max_lengths={list(max_lengths)} is not allowed: expected non-increasing lengths")
        check_lm_scalars(vocab_size, rope_theta, ffn_multiple_of, ffn_multiplier, norm_eps, init_std)
        if not isinstance(upsample_positions, int) or upsample_positions < 1:
            raise ConfigError(f"upsample_positions={upsample_positions!r} is not allowed: expected a positive integer")
        if upsample_impl not in UPSAMPLING_IMPLS:
            raise ConfigError(f"upsample_impl={upsample_impl!r} is not allowed: expected one of {UPSAMPLING_IMPLS}")
        if attention not in ATTENTION_IMPLS:
            raise ConfigError(f"attention={attention!r} is not allowed: expected one of {ATTENTION_IMPLS}")

        self.dims, self.layers_per_stage, self.heads = list(dims), list(layers), list(heads)
        self.windows, self.max_lengths = list(windows), list(max_lengths)
        self.num_stages, self.vocab_size = num_stages, vocab_size
        self.upsample_positions, self.residual_skips, self.init_std = upsample_positions, residual_skips, init_std
        self.check_values = check_values
        self.config = {
            "dims": self.dims, "layers": self.layers_per_stage, "windows": self.windows,
            "max_lengths": self.max_lengths, "vocab_size": vocab_size, "ffn_multiple_of": ffn_multiple_of,
            "ffn_multiplier": ffn_multiplier, "upsample_positions": upsample_positions,
        }  # fmt: skip

        def stack(i: int) -> TransformerStack:
            return TransformerStack(
                dims[i], layers[i], heads[i], max_lengths[i], windows[i], rope_theta, ffn_multiple_of,
                ffn_multiplier, norm_eps, attention, init_std,
            )  # fmt: skip

        self.embedding = nn.Embedding(vocab_size, dims[0])
        self.encoders = nn.ModuleList(stack(i) for i in range(num_stages - 1))
        self.poolings = nn.ModuleList(Pooling(dims[i], dims[i + 1], norm_eps) for i in range(num_stages - 1))
        self.trunk = stack(num_stages - 1)
        self.upsamplings = nn.ModuleList(
            MultiLinearUpsampling(dims[i + 1], dims[i], upsample_positions, norm_eps, upsample_impl)
            for i in range(num_stages - 1)
        )
        self.decoders = nn.ModuleList(stack(i) for i in range(num_stages - 1))
        self.norm = RMSNorm(dims[0], norm_eps)
        self.output = nn.Linear(dims[0], vocab_size, bias=False)
        std = init_std or dims[0] ** -0.5
        init_trunc_normal_(self.embedding.weight, std)
        init_trunc_normal_(self.output.weight, std)
        self.last_stats: dict[str, Tensor] = {}

    def new_cache(self) -> AUNetCache:
        """Empty KV caches for cached decoding (see :mod:`litlab.models.lm.generation`)."""
        return AUNetCache(
            encoders=[enc.new_cache() for enc in self.encoders],
            decoders=[dec.new_cache() for dec in self.decoders],
            trunk=self.trunk.new_cache(),
            stage_outputs=[None] * self.num_stages,
        )

    def forward(self, input_ids: Tensor, levels: Tensor, cache: AUNetCache | None = None) -> Tensor:
        """Next-byte logits.

        Args:
            input_ids: ``[B, T]`` byte ids, ``T ≤ max_lengths[0]``.
            levels: ``[B, T]`` split levels of ``input_ids`` (stage s pools where level > s - 1; position 0
                is treated as a boundary of every stage whatever its level).
            cache: Fill these KV caches (a prefill for cached decoding); None for training.

        Returns:
            ``[B, T, vocab_size]`` logits. ``self.last_stats`` then holds ``pooled_counts`` ``[S-1, B]``,
            ``boundaries`` ``[S-1, B]`` and ``truncation_rate`` ``[S-1]`` (tensors, no host sync).
        """
        check_lm_inputs(input_ids, self.max_lengths[0], self.vocab_size, self.check_values)
        if levels.shape != input_ids.shape:
            raise ConfigError(
                f"levels has shape {tuple(levels.shape)} but input_ids has {tuple(input_ids.shape)}: one level per id"
            )
        plan = pooling_plan(levels, self.max_lengths[1:], self.upsample_positions)
        self.last_stats = {
            "pooled_counts": plan.counts,
            "boundaries": plan.boundaries,
            "truncation_rate": plan.truncation_rate,
        }
        x = self.embedding(input_ids)
        skips = []
        for s in range(self.num_stages - 1):
            x = self.encoders[s](x, None if cache is None else cache.encoders[s])
            skips.append(x)
            x = self.poolings[s](x, plan.gather_index[s])
        x = self.trunk(x, None if cache is None else cache.trunk)
        if cache is not None:
            cache.stage_outputs[-1] = x
        for s in reversed(range(self.num_stages - 1)):
            up = self.upsamplings[s](x, plan.coarse_index[s], plan.offset[s])
            x = skips[s] + up if self.residual_skips else up
            x = self.decoders[s](x, None if cache is None else cache.decoders[s])
            if cache is not None:
                cache.stage_outputs[s] = x
        if cache is not None:
            cache.plan = plan
        return self.output(self.norm(x))

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters; ``non_embedding`` leaves out the input embedding and the output head."""
        total = sum(p.numel() for p in self.parameters())
        return total - 2 * self.vocab_size * self.dims[0] if non_embedding else total

    def flops_per_byte(self, seq_len: int | None = None) -> float:
        """Training FLOPs per byte at ``seq_len`` bytes (default ``max_lengths[0]``); see :mod:`litlab.models.lm.accounting`."""
        from litlab.models.lm.accounting import aunet_flops

        impl = "grouped_mm" if all(up.grouped for up in self.upsamplings) else "folded"
        return aunet_flops(**self.config, seq_len=seq_len or self.max_lengths[0], upsample_impl=impl)["total"]

