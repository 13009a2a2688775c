"""Parameter counts and training FLOPs of AU-Net and the flat Transformer, from constructor arguments alone.

Paper-scale configurations can be accounted without instantiating them.

Parameters
    Exact counts of what :class:`~litlab.models.lm.aunet.AUNet` / :class:`~litlab.models.lm.flat_transformer.FlatTransformer`
    build (norm weights included; ``tests/models/test_aunet.py`` checks equality). *Non-embedding* leaves out
    the input embedding and the output head (``2·vocab·dims[0]``), as the reference does.

Training FLOPs (the reference's convention, ``estimate_flops_per_token`` in lingua's ``apps/aunet``)
    One multiply-add = 2 FLOPs, training = 3 × forward (backward = 2 × forward), so a weight matrix applied
    at one position costs ``6 × its size``. Per byte of the window (``T = seq_len``):

    * **blocks**: ``6 · Σ_s (L_s / T) · m_s · layers_s · (4·d_s² + 3·d_s·h_s)``, with ``L_0 = T``, ``L_s`` the
      static pooled length of stage s (every slot is computed, padded or not), ``m_s = 2`` for stages with an
      encoder and a decoder and 1 for the trunk, ``h_s`` the SwiGLU hidden width;
    * **head**: ``6 · dims[0] · vocab`` (the embedding lookup is free);
    * **transitions** (not in the reference's count; ``include_transitions=False`` drops them): pooling
      ``6 · (L_s/T) · d_{s-1}·d_s``; upsampling ``6 · (L_{s-1}/T) · d_s·d_{s-1}`` with ``upsample_impl=
      "grouped_mm"`` (one folded matrix per fine position: what ``"auto"`` runs on CPU and recent GPUs), or
      ``6 · (L_s/T) · P·d_s·d_{s-1}`` with ``"folded"`` (all P matrices per pooled slot; see
      :mod:`litlab.models.lm.upsampling`). The reference computes two products per fine position (``W_up`` and
      ``W_j`` separately);
    * **attention** (score and value products): ``6 · d_s · L_s · m_s·layers_s · w(2L_s − w)/L_s²``, weighted
      by ``L_s/T``, ``w = min(window_s, L_s)``. The factor ``w(2L−w)/(2L)`` is the mean number of keys a
      query sees under a causal sliding window, so only the causal half of the score matrix is counted.

    ``torch.utils.flop_counter.FlopCounterMode`` counts the same matrix products, except that fused or
    masked attention is charged for the *whole* ``L×L`` score matrix (twice the causal half when the window
    covers the sequence); the test checks our figures against it on that basis (exact equality).

    Per token for the BPE baseline: the same formula with one stage; per byte = per token / bytes per token
    (Llama-3's BPE averages 4.56 bytes per token on DCLM, arXiv 2506.14761).

Compute-based hyper-parameters (the AU-Net paper's fits, arXiv 2506.14761; C in training FLOPs):
    AU-Net ``batch = 0.66·C^0.321``, ``lr = 6.6·C^-0.176``; BPE ``batch = 29.9·C^0.231``, ``lr = 19.3·C^-0.177``.
    The batch unit is not stated in the fits we have; we read it as the model's own unit (bytes for AU-Net, tokens
    for BPE) [inferred]. Sanity check against the released reference configs, with C = our FLOPs per byte
    (reference convention) × steps × batch bytes (8 GPUs per node assumed): ``2B_2level`` (C ≈ 1.4e21) gets lr 1.26e-3 for its 1.1e-3
    and batch 4.0M bytes for its 2.2M; ``2B_1level`` (C ≈ 1.0e21) lr 1.33e-3 for 1.65e-3, batch 3.6M for 1.6M.
    So the lr rule matches within ~20%, and the batch rule gives about twice those configs' batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from litlab.errors import ConfigError
from litlab.models.lm.transformer import ffn_hidden_dim

__all__ = [
    "aunet_flops",
    "aunet_param_counts",
    "compute_hparams",
    "flat_flops",
    "flat_param_counts",
]


def _block_matrix_params(dim: int, ffn_multiple_of: int, ffn_multiplier: float | None) -> int:
    return 4 * dim * dim + 3 * dim * ffn_hidden_dim(dim, ffn_multiple_of, ffn_multiplier)


def _stage_multiplicity(num_stages: int) -> list[int]:
    return [2] * (num_stages - 1) + [1]


def aunet_param_counts(
    dims: Sequence[int],
    layers: Sequence[int],
    vocab_size: int = 258,
    ffn_multiple_of: int = 256,
    ffn_multiplier: float | None = None,
    upsample_positions: int = 16,
) -> dict[str, int]:
    """Exact parameter counts of an :class:`~litlab.models.lm.aunet.AUNet` with these arguments.

    Args:
        dims: Stage widths.
        layers: Blocks per stage (encoder and decoder each below the trunk).
        vocab_size: Vocabulary size.
        ffn_multiple_of: SwiGLU rounding.
        ffn_multiplier: SwiGLU factor.
        upsample_positions: Position-specific upsampling matrices.

    Returns:
        ``total``, ``non_embedding`` (without the embedding and the head) and ``embedding`` (those two).
    """
    total = 0
    for dim, n_layers, mult in zip(dims, layers, _stage_multiplicity(len(dims)), strict=True):
        total += mult * n_layers * (_block_matrix_params(dim, ffn_multiple_of, ffn_multiplier) + 2 * dim)
    for fine, coarse in itertools.pairwise(dims):
        total += fine + fine * coarse  # pooling: RMSNorm + Linear
        total += coarse + (1 + upsample_positions) * coarse * fine  # upsampling: RMSNorm + W_up + W_j
    embedding = 2 * vocab_size * dims[0]
    total += embedding + dims[0]  # embedding, head and the final norm
    return {"total": total, "non_embedding": total - embedding, "embedding": embedding}


def flat_param_counts(
    dim: int,
    layers: int,
    vocab_size: int,
    ffn_multiple_of: int = 256,
    ffn_multiplier: float | None = None,
) -> dict[str, int]:
    """Exact parameter counts of a :class:`~litlab.models.lm.flat_transformer.FlatTransformer` (see :func:`aunet_param_counts`)."""
    return aunet_param_counts([dim], [layers], vocab_size, ffn_multiple_of, ffn_multiplier)


def attention_flops(dim: int, length: int, layers: int, window: int | None) -> float:
    """Training FLOPs per position of the attention products of ``layers`` layers over ``length`` positions."""
    w = length if window is None else min(window, length)
    return 6 * dim * length * layers * w * (2 * length - w) / length**2


def aunet_flops(
    dims: Sequence[int],
    layers: Sequence[int],
    windows: Sequence[int | None],
    max_lengths: Sequence[int],
    vocab_size: int = 258,
    seq_len: int | None = None,
    ffn_multiple_of: int = 256,
    ffn_multiplier: float | None = None,
    upsample_positions: int = 16,
    include_transitions: bool = True,
    upsample_impl: str = "grouped_mm",
) -> dict[str, float]:
    """Training FLOPs per byte of an AU-Net (see the module docstring for the convention).

    Args:
        dims: Stage widths.
        layers: Blocks per stage (encoder and decoder each below the trunk).
        windows: Sliding window per stage (None = full causal).
        max_lengths: Static lengths per stage (``max_lengths[0]`` = byte window).
        vocab_size: Vocabulary size.
        seq_len: Bytes per training sequence (default ``max_lengths[0]``).
        ffn_multiple_of: SwiGLU rounding.
        ffn_multiplier: SwiGLU factor.
        upsample_positions: Position-specific upsampling matrices.
        include_transitions: Count pooling and upsampling (the reference's estimate leaves them out).
        upsample_impl: ``"grouped_mm"`` or ``"folded"``: which upsampling computation to count.

    Returns:
        Per byte: ``blocks``, ``head``, ``transitions``, ``attention``, ``linear`` (the first three) and ``total``.
    """
    seq_len = max_lengths[0] if seq_len is None else seq_len
    if seq_len < 1 or seq_len > max_lengths[0]:
        raise ConfigError(f"seq_len={seq_len!r} is not allowed: expected 1..max_lengths[0]={max_lengths[0]}")
    lengths = [seq_len, *max_lengths[1:]]
    blocks = attention = transitions = 0.0
    for dim, n_layers, mult, length, window in zip(
        dims, layers, _stage_multiplicity(len(dims)), lengths, windows, strict=True
    ):
        ratio = length / seq_len
        blocks += 6 * ratio * mult * n_layers * _block_matrix_params(dim, ffn_multiple_of, ffn_multiplier)
        attention += ratio * attention_flops(dim, length, mult * n_layers, window)
    if upsample_impl not in ("grouped_mm", "folded"):
        raise ConfigError(f"upsample_impl={upsample_impl!r} is not allowed: expected 'grouped_mm' or 'folded'")
    if include_transitions:
        for s in range(1, len(dims)):
            fine, coarse = dims[s - 1], dims[s]
            transitions += 6 * (lengths[s] / seq_len) * fine * coarse  # pooling
            if upsample_impl == "folded":
                transitions += 6 * (lengths[s] / seq_len) * upsample_positions * fine * coarse
            else:
                transitions += 6 * (lengths[s - 1] / seq_len) * fine * coarse
    head = 6.0 * dims[0] * vocab_size
    linear = blocks + head + transitions
    return {
        "blocks": blocks,
        "head": head,
        "transitions": transitions,
        "attention": attention,
        "linear": linear,
        "total": linear + attention,
    }


def flat_flops(
    dim: int,
    layers: int,
    vocab_size: int,
    seq_len: int,
    window: int | None = None,
    ffn_multiple_of: int = 256,
    ffn_multiplier: float | None = None,
    bytes_per_token: float = 1.0,
) -> dict[str, float]:
    """Training FLOPs per token of a flat Transformer, divided by ``bytes_per_token`` (e.g. 4.56 for BPE) for per byte.

    Args:
        dim: Width.
        layers: Blocks.
        vocab_size: Vocabulary size.
        seq_len: Tokens per training sequence.
        window: Sliding window (None = full causal).
        ffn_multiple_of: SwiGLU rounding.
        ffn_multiplier: SwiGLU factor.
        bytes_per_token: Average bytes per token (1 for a byte model, or to get per-token figures).

    Returns:
        The keys of :func:`aunet_flops`.
    """
    if not bytes_per_token > 0:
        raise ConfigError(f"bytes_per_token={bytes_per_token!r} is not allowed: expected a positive number")
    per_token = aunet_flops(
        [dim], [layers], [window], [seq_len], vocab_size, seq_len, ffn_multiple_of, ffn_multiplier
    )
    return {k: v / bytes_per_token for k, v in per_token.items()}


# The AU-Net paper's fits (arXiv 2506.14761): (batch coefficient, batch exponent, lr coefficient, lr exponent).
_HPARAM_FITS = {"aunet": (0.66, 0.321, 6.6, -0.176), "bpe": (29.9, 0.231, 19.3, -0.177)}


def compute_hparams(compute: float, model: str = "aunet") -> dict[str, float]:
    """Batch size and learning rate for a training budget of ``compute`` FLOPs (the paper's power laws).

    Args:
        compute: Total training FLOPs C (e.g. FLOPs per byte × bytes seen).
        model: ``"aunet"`` (batch in bytes) or ``"bpe"`` (batch in tokens); units inferred, see module docs.

    Returns:
        ``batch_size`` (float; round it to whole sequences) and ``lr``.
    """
    if model not in _HPARAM_FITS:
        raise ConfigError(f"model={model!r} is not allowed: expected one of {sorted(_HPARAM_FITS)}")
    if not compute > 0:
        raise ConfigError(f"compute={compute!r} is not allowed: expected a positive number of FLOPs")
    batch_coef, batch_exp, lr_coef, lr_exp = _HPARAM_FITS[model]
    return {"batch_size": batch_coef * compute**batch_exp, "lr": lr_coef * compute**lr_exp}
