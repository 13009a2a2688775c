"""AU-Net: causality, truncation, equivalences, compile, determinism, errors, accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from litlab.errors import ConfigError
from litlab.models.lm.accounting import aunet_flops, aunet_param_counts, compute_hparams
from litlab.models.lm.aunet import AUNet
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.text import encode_bytes, split_token_levels

TEXT = "Hi there, 42 cats sat on 7 mats.\nThen: they left, one by one!"


def tiny(stages: int, **overrides) -> AUNet:
    torch.manual_seed(0)
    kwargs = {
        "dims": [32, 48, 64, 64][:stages],
        "layers": [1] * stages,
        "heads": [2] * stages,
        "windows": [16, None, None, None][:stages],
        "max_lengths": [64, 32, 16, 8][:stages],
        "ffn_multiple_of": 32,
    } | overrides
    return AUNet(**kwargs)


def text_batch(text: str = TEXT) -> tuple[torch.Tensor, torch.Tensor]:
    ids = encode_bytes(text, eos=False)
    levels = split_token_levels(ids, causal=True)
    return torch.from_numpy(ids).long()[None], torch.from_numpy(levels).long()[None]


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_changing_byte_t_never_changes_earlier_logits(stages: int) -> None:
    """Every t: replace byte t, recompute the causal levels of the new text, compare logits before t."""
    model = tiny(stages).eval()
    ids, levels = text_batch()
    length = ids.shape[1]
    ts = list(range(1, length))
    batch_ids = ids.repeat(len(ts), 1)
    batch_levels = levels.repeat(len(ts), 1)
    rng = np.random.default_rng(stages)
    for row, t in enumerate(ts):
        old = int(ids[0, t])
        new = int(rng.choice([b" "[0], b","[0], b"7"[0], b"x"[0], b"\n"[0]]))
        new = new if new != old else (old + 1) % 256
        batch_ids[row, t] = new
        new_levels = split_token_levels(batch_ids[row].numpy(), causal=True)
        assert np.array_equal(new_levels[:t], levels[0, :t].numpy()), "the splitter is not causal"
        batch_levels[row] = torch.from_numpy(new_levels)
    with torch.no_grad():
        base = model(ids, levels)[0]
        changed = model(batch_ids, batch_levels)
    for row, t in enumerate(ts):
        torch.testing.assert_close(changed[row, :t], base[:t], atol=1e-5, rtol=1e-5, msg=f"t={t}")
        assert (changed[row, t] - base[t]).abs().max() > 1e-4
    if stages > 1:
        assert (batch_levels != levels).any()  # the changes did move boundaries


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_causal_with_random_levels_and_heavy_truncation(stages: int) -> None:
    model = tiny(stages, max_lengths=[64, 12, 6, 3][:stages]).eval()
    gen = torch.Generator().manual_seed(stages)
    ids = torch.randint(0, 256, (1, 64), generator=gen)
    levels = torch.randint(0, 4, (1, 64), generator=gen)
    with torch.no_grad():
        base = model(ids, levels)
        stats = model.last_stats
        assert (stats["truncation_rate"] > 0).all()
        assert stats["pooled_counts"][0].item() == 12
        assert all(n <= cap for n, cap in zip(stats["pooled_counts"][:, 0].tolist(), [12, 6, 3], strict=False))
        for t in (1, 5, 20, 40, 63):
            ids2, levels2 = ids.clone(), levels.clone()
            ids2[0, t] = (ids2[0, t] + 1) % 256
            levels2[0, t:] = torch.randint(0, 4, (64 - t,), generator=gen)  # anything from t on may change
            out = model(ids2, levels2)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-5, rtol=1e-5, msg=f"t={t}")


def test_stats_counts_and_truncation_rate() -> None:
    model = tiny(3, max_lengths=[64, 10, 4])
    levels = torch.zeros(2, 64, dtype=torch.long)
    levels[0, ::4] = 1  # 16 stage-1 boundaries, of which every other one is also level 2
    levels[0, ::8] = 2
    levels[1, 10] = 2  # sample 1: position 0 (forced) and byte 10
    model(torch.zeros(2, 64, dtype=torch.long), levels)
    stats = model.last_stats
    assert stats["boundaries"].tolist() == [[16, 2], [8, 2]]
    assert stats["pooled_counts"].tolist() == [[10, 2], [4, 2]]
    # stage 1 drops 6 of 18; stage 2: sample 0 keeps bytes 0, 8, 16, 24 (all kept at stage 1) of 8
    torch.testing.assert_close(stats["truncation_rate"], torch.tensor([6 / 18, 4 / 10]))


def test_shorter_input_than_the_window_and_position_zero_forced() -> None:
    model = tiny(3).eval()
    ids, levels = text_batch("abc def")
    with torch.no_grad():
        out = model(ids, levels)
        levels2 = levels.clone()
        levels2[0, 0] = 0  # position 0 is a boundary of every stage whatever its level says
        torch.testing.assert_close(model(ids, levels2), out, atol=0, rtol=0)
    assert out.shape == (1, ids.shape[1], 258)


def test_one_stage_aunet_is_the_flat_transformer() -> None:
    aunet = tiny(1, windows=[8])
    flat = FlatTransformer(32, 1, 2, 258, max_length=64, window=8, ffn_multiple_of=32)
    flat.load_state_dict(aunet.state_dict())  # same modules, same names (strict)
    ids, levels = text_batch()
    torch.testing.assert_close(aunet(ids, levels), flat(ids), atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_equals_sdpa() -> None:
    sdpa = tiny(3)
    flex = tiny(3, attention="flex")
    flex.load_state_dict(sdpa.state_dict())
    ids, levels = text_batch()
    with torch.no_grad():  # FlexAttention has no CPU backward
        torch.testing.assert_close(flex(ids, levels), sdpa(ids, levels), atol=1e-5, rtol=1e-5)


def test_same_seed_same_model_same_logits() -> None:
    a, b = tiny(3), tiny(3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    ids, levels = text_batch()
    assert torch.equal(a(ids, levels), b(ids, levels))
    torch.manual_seed(1)
    c = AUNet([32, 48], [1, 1], [2, 2], [16, None], [64, 32], ffn_multiple_of=32)
    assert not torch.equal(c.embedding.weight, a.embedding.weight)


def test_every_parameter_gets_a_gradient() -> None:
    model = tiny(4)
    ids, levels = text_batch()
    model(ids, levels).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if "position_weight" not in name:  # only the offsets that occur get a gradient
            assert p.grad.abs().sum() > 0, name


def test_compile_fullgraph_aot_eager_forward_and_backward() -> None:
    model = tiny(3)
    ids, levels = text_batch()
    eager = model(ids, levels)
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(ids, levels)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    assert set(model.last_stats) == {"pooled_counts", "boundaries", "truncation_rate"}
    out.sum().backward()
    for name, p in model.named_parameters():
        scale = max(1.0, float(grads[name].abs().max()))  # float32 sums of many terms: error grows with size
        torch.testing.assert_close(p.grad, grads[name], atol=1e-5 * scale, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_compile_fullgraph_inductor() -> None:
    model = tiny(2)
    ids, levels = text_batch()
    compiled = torch.compile(model, fullgraph=True)  # about 30-50 s on 2 CPU cores without a warm cache
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, levels), model(ids, levels), atol=1e-4, rtol=1e-4)


def test_bf16_autocast_forward() -> None:
    model = tiny(3)
    ids, levels = text_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, levels)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = model(ids, levels)
    assert torch.nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.99


BASE = {"dims": [32, 48], "layers": [1, 1], "heads": [2, 2], "windows": [16, None], "max_lengths": [64, 32]}


@pytest.mark.parametrize(("override", "name"), [
    ({"layers": [1]}, "layers"),
    ({"dims": [32, 48, 64, 64, 64], "layers": [1] * 5, "heads": [2] * 5, "windows": [None] * 5,
      "max_lengths": [64] * 5}, "dims"),  # 5 stages
    ({"dims": [], "layers": [], "heads": [], "windows": [], "max_lengths": []}, "dims"),
    ({"dims": [32, 50]}, "heads"),
    ({"heads": [2, 16]}, "heads"),  # head_dim 3
    ({"windows": [0, None]}, "windows"),
    ({"max_lengths": [32, 64]}, "max_lengths"),
    ({"max_lengths": [64, 0]}, "max_lengths"),
    ({"layers": [1, 0]}, "layers"),
    ({"attention": "fmha"}, "attention"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"upsample_positions": 0}, "upsample_positions"),
    ({"ffn_multiplier": -1.0}, "ffn_multiplier"),
    ({"norm_eps": 0.0}, "norm_eps"),
    ({"dims": 32}, "dims"),
    ({"upsample_impl": "loop"}, "upsample_impl"),
])  # fmt: skip
def test_bad_constructor_arguments_name_the_argument(override: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        AUNet(**(BASE | override))


def test_bad_inputs_are_reported_clearly() -> None:
    model = AUNet(**BASE, check_values=True)
    ids = torch.zeros(2, 10, dtype=torch.long)
    with pytest.raises(ConfigError, match="levels has shape"):
        model(ids, torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ConfigError, match="max length 64"):
        model(torch.zeros(1, 65, dtype=torch.long), torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\[batch, seq_len\]"):
        model(torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=torch.long))
    bad = ids.clone()
    bad[0, 3] = 258
    with pytest.raises(ConfigError, match="input_ids must lie in"):
        model(bad, ids)


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_parameter_count_matches_the_accounting(stages: int) -> None:
    model = tiny(stages)
    counts = aunet_param_counts(model.dims, model.layers_per_stage, 258, 32, None, 16)
    assert counts["total"] == model.num_params()
    assert counts["non_embedding"] == model.num_params(non_embedding=True)


@pytest.mark.parametrize("stages", [1, 3])
def test_flops_match_flop_counter(stages: int) -> None:
    """FlopCounterMode on the meta device (attention decomposes into counted bmm's), forward × 3 = training.

    Linear layers must match exactly; FlopCounterMode charges attention for the whole L×L score matrix,
    which is twice the causal half that the accounting counts when no window cuts it.
    """
    cfg = {"dims": [32, 48, 64][:stages], "layers": [2, 1, 1][:stages], "heads": [2, 2, 2][:stages],
           "windows": [None] * stages, "max_lengths": [64, 32, 16][:stages], "ffn_multiple_of": 32}  # fmt: skip
    with torch.device("meta"):  # on meta, upsampling runs the folded back end
        model = AUNet(**cfg)
        ids = torch.zeros(2, 64, dtype=torch.long)
        levels = torch.zeros(2, 64, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(ids, levels)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    expected = aunet_flops(cfg["dims"], cfg["layers"], cfg["windows"], cfg["max_lengths"], 258, 64, 32,
                           upsample_impl="folded")  # fmt: skip
    per_byte = 3 / (2 * 64)  # training = 3 × forward; batch 2 of 64 bytes
    assert counts["aten.mm"] * per_byte == pytest.approx(expected["linear"], rel=1e-9)
    assert counts["aten.bmm"] * per_byte == pytest.approx(2 * expected["attention"], rel=1e-9)
    grouped = aunet_flops(cfg["dims"], cfg["layers"], cfg["windows"], cfg["max_lengths"], 258, 64, 32)
    assert model.flops_per_byte() == pytest.approx(grouped["total"])  # what "auto" runs on CPU / CUDA
    if stages > 1:  # counted on the CPU, where the grouped_mm back end runs (attention is not counted there)
        with torch.device("cpu"):
            cpu_model = AUNet(**cfg)
        def grouped_mm_flops(a_shape, b_shape, *args, **kwargs) -> int:  # [N, K] x [G, K, M], one group per row
            return 2 * a_shape[0] * a_shape[1] * b_shape[2]

        mapping = {torch.ops.aten._grouped_mm: grouped_mm_flops}
        with FlopCounterMode(display=False, custom_mapping=mapping) as cpu_counter:
            cpu_model(torch.zeros(2, 64, dtype=torch.long), torch.zeros(2, 64, dtype=torch.long))
        cpu_counts = {str(k): v for k, v in cpu_counter.get_flop_counts()["Global"].items()}
        assert cpu_counts["aten._grouped_mm"] > 0
        linear = cpu_counts["aten.mm"] + cpu_counts["aten._grouped_mm"]
        assert linear * per_byte == pytest.approx(grouped["linear"], rel=1e-9)


def test_flops_follow_the_reference_formula_on_a_paper_config() -> None:
    # 2B_2level: dims 512/2048/3456, layers 3/6/12, windows 512/4096/4096, lengths 8192/1600/928
    dims, layers, windows, lengths = [512, 2048, 3456], [3, 6, 12], [512, 4096, 4096], [8192, 1600, 928]
    flops = aunet_flops(dims, layers, windows, lengths, include_transitions=False)
    hidden = [1536, 5632, 9216]
    linear = sum(
        6 * (length / 8192) * mult * n * (4 * d * d + 3 * d * h)
        for d, n, h, length, mult in zip(dims, layers, hidden, lengths, [2, 2, 1], strict=True)
    ) + 6 * 512 * 258
    attention = sum(
        6 * d * s * mult * n * w * (2 * s - w) / s**2 * s / 8192
        for d, n, s, w, mult in zip(dims, layers, lengths, [512, 1600, 928], [2, 2, 1], strict=True)
    )
    assert flops["linear"] == pytest.approx(linear)
    assert flops["attention"] == pytest.approx(attention)
    assert 1.5e9 < flops["total"] < 3e9  # the paper's AU-Net FLOPs per byte are 1.8e9..2.8e9


def test_compute_hparams() -> None:
    out = compute_hparams(1e21, "aunet")
    assert out["batch_size"] == pytest.approx(0.66 * 1e21**0.321)
    assert out["lr"] == pytest.approx(6.6 * 1e21**-0.176)
    assert compute_hparams(1e21, "bpe")["lr"] == pytest.approx(19.3 * 1e21**-0.177)
    with pytest.raises(ConfigError, match="model"):
        compute_hparams(1e21, "mamba")
