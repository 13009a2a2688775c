"""Flat Transformer baseline: causality, window, compile, errors, parameter and FLOP accounting."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from litlab.errors import ConfigError
from litlab.models.lm.accounting import flat_flops, flat_param_counts
from litlab.models.lm.flat_transformer import FlatTransformer


def tiny(**overrides) -> FlatTransformer:
    torch.manual_seed(0)
    kwargs = {"dim": 32, "layers": 2, "heads": 2, "vocab_size": 300, "max_length": 48, "ffn_multiple_of": 32}
    return FlatTransformer(**(kwargs | overrides))


@pytest.mark.parametrize("window", [None, 4])
def test_causal_and_windowed(window: int | None) -> None:
    model = tiny(window=window).eval()
    ids = torch.randint(0, 300, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids)
        for t in (0, 10, 30, 47):
            ids2 = ids.clone()
            ids2[0, t] = (ids2[0, t] + 1) % 300
            out = model(ids2)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=0, rtol=0)
            assert (out[:, t] - base[:, t]).abs().max() > 1e-4
            if window is not None and t + 2 * (window - 1) + 1 < 48:
                far = t + 2 * (window - 1) + 1  # beyond two layers of window - 1 positions
                torch.testing.assert_close(out[:, far:], base[:, far:], atol=0, rtol=0)


def test_shape_determinism_and_compile() -> None:
    model, again = tiny(), tiny()
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    out = model(ids)
    assert out.shape == (2, 40, 300)
    assert torch.equal(out, again(ids))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(ids), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("override", "name"), [
    ({"dim": 30}, "heads"),
    ({"layers": 0}, "layers"),
    ({"window": -3}, "window"),
    ({"max_length": 0}, "max_length"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"attention": "flash"}, "attention"),
    ({"init_std": -1.0}, "init_std"),
])  # fmt: skip
def test_bad_arguments(override: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        tiny(**override)


def test_bad_inputs() -> None:
    model = tiny(check_values=True)
    with pytest.raises(ConfigError, match="max length 48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ConfigError, match="must lie in"):
        model(torch.full((1, 4), 300))
    with pytest.raises(ConfigError, match="integer ids"):
        model(torch.zeros(1, 4))


def test_parameter_count_and_flops_match_counters() -> None:
    model = tiny()
    counts = flat_param_counts(32, 2, 300, ffn_multiple_of=32)
    assert counts["total"] == model.num_params()
    assert counts["non_embedding"] == model.num_params(non_embedding=True)
    with torch.device("meta"):
        meta_model = tiny()
        ids = torch.zeros(3, 48, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        meta_model(ids)
    got = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    expected = flat_flops(32, 2, 300, seq_len=48, ffn_multiple_of=32)
    per_token = 3 / (3 * 48)
    assert got["aten.mm"] * per_token == pytest.approx(expected["linear"], rel=1e-9)
    assert got["aten.bmm"] * per_token == pytest.approx(2 * expected["attention"], rel=1e-9)
    assert model.flops_per_token() == pytest.approx(expected["total"])
    per_byte = flat_flops(32, 2, 300, seq_len=48, ffn_multiple_of=32, bytes_per_token=4.56)
    assert per_byte["total"] == pytest.approx(expected["total"] / 4.56)


def test_windowed_attention_flops_follow_the_band() -> None:
    full = flat_flops(64, 2, 258, seq_len=1024)
    band = flat_flops(64, 2, 258, seq_len=1024, window=256)
    # mean keys per query: full causal 1024/2; window 256: 256·(2048 - 256)/(2·1024)
    assert band["attention"] / full["attention"] == pytest.approx(256 * (2048 - 256) / 1024**2)
    assert band["linear"] == full["linear"]


@pytest.mark.gpu
def test_cuda_forward_equals_the_cpu_forward():
    torch.manual_seed(0)
    model = FlatTransformer(dim=64, layers=2, heads=4, vocab_size=300, max_length=64, ffn_multiple_of=16)
    ids = torch.randint(0, 300, (2, 48))
    expected = model(ids)
    got = model.cuda()(ids.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
