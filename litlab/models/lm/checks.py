"""Argument and input checks shared by litlab's language models (each raises a ConfigError naming the value)."""

from __future__ import annotations

import torch
from torch import Tensor

from litlab.errors import ConfigError

ATTENTION_IMPLS = ("sdpa", "flex")


def check_stack_args(
    *,
    dim: int,
    layers: int,
    heads: int,
    max_length: int,
    window: int | None,
    attention: str,
    suffix: str = "",
) -> None:
    """Validate one stack's arguments; ``suffix`` (e.g. ``"[1]"``) locates the value inside a per-stage list."""

    def bad(name: str, value: object, allowed: str) -> ConfigError:
        return ConfigError(f"{name}{suffix}={value!r} is not allowed: expected {allowed}")

    for name, value in (("dims" if suffix else "dim", dim), ("layers", layers), ("heads", heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(name, value, "a positive integer")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise bad("max_lengths" if suffix else "max_length", max_length, "a positive integer")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise bad("windows" if suffix else "window", window, "a positive integer or None")
    dim_name = f"dims{suffix}" if suffix else "dim"
    if dim % heads != 0:
        raise bad("heads", heads, f"a divisor of {dim_name}={dim}")
    if (dim // heads) % 2 != 0:
        raise bad("heads", heads, f"an even head_dim for RoPE ({dim_name}={dim} / heads gives {dim / heads})")
    if attention not in ATTENTION_IMPLS:
        raise ConfigError(f"attention={attention!r} is not allowed: expected one of {ATTENTION_IMPLS}")


def check_lm_scalars(
    vocab_size: int,
    rope_theta: float,
    ffn_multiple_of: int,
    ffn_multiplier: float | None,
    norm_eps: float,
    init_std: float | None,
) -> None:
    """Shared validation of the scalar arguments of the language models."""
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size={vocab_size!r} is not allowed: expected a positive integer")
    if not rope_theta > 0:
        raise ConfigError(f"rope_theta={rope_theta!r} is not allowed: expected a positive number")
    if not isinstance(ffn_multiple_of, int) or ffn_multiple_of < 1:
        raise ConfigError(f"ffn_multiple_of={ffn_multiple_of!r} is not allowed: expected a positive integer")
    if ffn_multiplier is not None and not ffn_multiplier > 0:
        raise ConfigError(f"ffn_multiplier={ffn_multiplier!r} is not allowed: expected a positive number or None")
    if not norm_eps > 0:
        raise ConfigError(f"norm_eps={norm_eps!r} is not allowed: expected a positive number")
    if init_std is not None and not init_std > 0:
        raise ConfigError(f"init_std={init_std!r} is not allowed: expected a positive number or None")


def check_lm_inputs(input_ids: Tensor, max_length: int, vocab_size: int, check_values: bool) -> None:
    """Shape checks (free) and, when asked and not compiling, value checks (a host sync) of ``input_ids``."""
    if input_ids.dim() != 2:
        raise ConfigError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] > max_length:
        raise ConfigError(f"input_ids has seq_len={input_ids.shape[1]} > the model's max length {max_length}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ConfigError(f"input_ids must hold integer ids, got dtype {input_ids.dtype}")
    if check_values and not torch.compiler.is_compiling() and input_ids.numel() > 0:
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ConfigError(f"input_ids must lie in [0, {vocab_size}), got values in [{low}, {high}]")
