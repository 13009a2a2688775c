"""Shared Transformer blocks: norms, RoPE, attention back ends, sliding windows, KV caches, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from litlab.errors import ConfigError
from litlab.models.lm.transformer import (
    Attention,
    FeedForward,
    RMSNorm,
    RotaryEmbedding,
    TransformerStack,
    apply_rotary,
    ffn_hidden_dim,
    reference_attention,
)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def test_rmsnorm_matches_formula() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16) * 7
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize(("dim", "multiple_of", "multiplier", "expected"), [
    (4096, 256, None, 11008),  # Llama-7B
    (512, 256, None, 1536),
    (2048, 256, None, 5632),
    (4096, 1024, 1.3, 14336),  # Llama-3-8B
])  # fmt: skip
def test_ffn_hidden_dim_llama_rule(dim: int, multiple_of: int, multiplier: float | None, expected: int) -> None:
    assert ffn_hidden_dim(dim, multiple_of, multiplier) == expected
    assert FeedForward(64, 32).hidden_dim == ffn_hidden_dim(64, 32)


def test_rotary_is_a_relative_position_rotation() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=8, max_length=64, theta=5e5)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def rotated(x: torch.Tensor, pos: int) -> torch.Tensor:
        cos, sin = rope(1, pos)
        return apply_rotary(x, cos, sin)

    # norms are preserved, and <R_m q, R_n k> only depends on m - n
    torch.testing.assert_close(rotated(q, 17).norm(), q.norm())
    dots = [(rotated(q, m) * rotated(k, m - 5)).sum() for m in (5, 20, 63)]
    torch.testing.assert_close(dots[0], dots[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dots[0], dots[2], atol=1e-5, rtol=1e-5)
    # position 0 is the identity, and the first channel pair turns by exactly m radians at position m
    torch.testing.assert_close(rotated(q, 0), q)
    x = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]).view(1, 1, 1, 8)
    out = rotated(x, 3).flatten()
    torch.testing.assert_close(out[:2], torch.tensor([math.cos(3.0), math.sin(3.0)]))


def _attention_by_hand(attn: Attention, x: torch.Tensor, window: int | None) -> torch.Tensor:
    b, length, _ = x.shape
    rope = RotaryEmbedding(attn.head_dim, length)
    cos, sin = rope(length)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, length, attn.heads, attn.head_dim)

    q = apply_rotary(heads(attn.wq(x)), cos, sin).transpose(1, 2)
    k = apply_rotary(heads(attn.wk(x)), cos, sin).transpose(1, 2)
    v = heads(attn.wv(x)).transpose(1, 2)
    return attn.wo(reference_attention(q, k, v, window).transpose(1, 2).reshape(b, length, -1))


@pytest.mark.parametrize(("window", "length"), [(None, 40), (8, 40), (8, 8), (8, 5), (1, 12)])
def test_stack_attention_matches_explicit_masked_reference(window: int | None, length: int) -> None:
    torch.manual_seed(0)
    stack = TransformerStack(dim=32, layers=1, heads=4, max_length=48, window=window, ffn_multiple_of=16)
    x = torch.randn(2, length, 32)
    block = stack.layers[0]
    h = x + _attention_by_hand(block.attention, block.attention_norm(x), window)
    expected = h + block.feed_forward(block.ffn_norm(h))
    torch.testing.assert_close(stack(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("window", "length"), [(None, 64), (None, 50), (8, 64), (16, 37), (200, 64)])
def test_sdpa_equals_flex(window: int | None, length: int) -> None:
    torch.manual_seed(0)
    kwargs = {"dim": 32, "layers": 2, "heads": 2, "max_length": 64, "window": window, "ffn_multiple_of": 16}
    sdpa = TransformerStack(**kwargs, attention="sdpa")
    flex = TransformerStack(**kwargs, attention="flex")
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, length, 32)
    with torch.no_grad():  # FlexAttention has no CPU backward (forward only here)
        torch.testing.assert_close(flex(x), sdpa(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 6])
def test_stack_is_causal_and_window_bounds_the_receptive_field(window: int | None) -> None:
    torch.manual_seed(0)
    layers = 2
    stack = TransformerStack(dim=16, layers=layers, heads=2, max_length=40, window=window, ffn_multiple_of=16)
    x = torch.randn(1, 40, 16)
    base = stack(x)
    t = 20
    x2 = x.clone()
    x2[:, t] += 1.0
    out = stack(x2)
    torch.testing.assert_close(out[:, :t], base[:, :t], atol=0, rtol=0)
    assert (out[:, t] - base[:, t]).abs().max() > 1e-4
    if window is not None:
        reach = t + layers * (window - 1)  # each layer sees window - 1 positions back
        torch.testing.assert_close(out[:, reach + 1 :], base[:, reach + 1 :], atol=0, rtol=0)
        assert (out[:, reach] - base[:, reach]).abs().max() > 1e-6


@pytest.mark.parametrize("window", [None, 5])
def test_kv_cache_matches_full_forward(window: int | None) -> None:
    torch.manual_seed(0)
    stack = TransformerStack(dim=16, layers=2, heads=2, max_length=32, window=window, ffn_multiple_of=16).eval()
    x = torch.randn(1, 30, 16)
    full = stack(x)
    cache = stack.new_cache()
    pieces = [stack(x[:, :7], cache), stack(x[:, 7:12], cache)]  # prefill, then a multi-position append
    pieces += [stack(x[:, t : t + 1], cache) for t in range(12, 30)]  # then one position at a time
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 30
    with pytest.raises(ConfigError, match="exceeds this stage's max_length"):
        stack(x[:, :3], cache)


def test_stack_rejects_too_long_input() -> None:
    stack = TransformerStack(dim=16, layers=1, heads=2, max_length=8, ffn_multiple_of=16)
    with pytest.raises(ConfigError, match="max_length=8"):
        stack(torch.randn(1, 9, 16))


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"dim": 30, "heads": 4}, "heads"),
    ({"dim": 24, "heads": 8}, "heads"),  # head_dim 3 is odd: no RoPE pairs
    ({"dim": 0}, "dim"),
    ({"layers": 0}, "layers"),
    ({"window": 0}, "window"),
    ({"max_length": -1}, "max_length"),
    ({"attention": "xformers"}, "attention"),
])  # fmt: skip
def test_stack_config_errors_name_the_argument(kwargs: dict, name: str) -> None:
    args = {"dim": 16, "layers": 1, "heads": 2, "max_length": 8} | kwargs
    with pytest.raises(ConfigError, match=name):
        TransformerStack(**args)


def test_init_is_seeded_truncated_and_scaled() -> None:
    def build() -> TransformerStack:
        torch.manual_seed(3)
        return TransformerStack(dim=256, layers=2, heads=4, max_length=8)

    a, b = build(), build()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    block = a.layers[0]
    for w, std in [(block.attention.wq.weight, 256**-0.5), (block.feed_forward.w2.weight, block.feed_forward.hidden_dim**-0.5)]:
        assert w.abs().max() <= 3 * std + 1e-7
        # a normal truncated at ±3σ has a standard deviation of 0.986σ
        assert abs(w.std().item() / std - 0.986) < 0.02
    override = TransformerStack(dim=256, layers=1, heads=4, max_length=8, init_std=0.02)
    assert override.layers[0].feed_forward.w2.weight.abs().max() <= 0.06 + 1e-7


def test_attention_bf16_autocast_runs() -> None:
    torch.manual_seed(0)
    stack = TransformerStack(dim=32, layers=1, heads=2, max_length=32, window=8, ffn_multiple_of=16)
    x = torch.randn(2, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stack(x)
    assert torch.isfinite(out).all()
    assert F.cosine_similarity(out.float().flatten(), stack(x).flatten(), dim=0) > 0.99
