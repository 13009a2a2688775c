"""Cached generation equals full forward passes, step by step; sampling options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litlab.errors import ConfigError
from litlab.models.lm.aunet import AUNet
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.generation import Stepper, generate
from litlab.models.lm.sampling import sample_next
from litlab.text import BOS, EOS, encode_bytes, split_token_levels

TEXT = (
    "In 1492, Columbus sailed the ocean blue; then: nothing happened!\n\n"
    "The quick brown fox jumps over the lazy dog. Numbers 12345 and 678 split too...   \n"
    "Last line, with words words words and more words to cross every level."
)


def tiny_aunet(stages: int, max_lengths: list[int]) -> AUNet:
    torch.manual_seed(stages)
    return AUNet(
        dims=[32, 48, 64, 64][:stages], layers=[1, 2, 1, 1][:stages], heads=[2] * stages,
        windows=[12, None, 8, None][:stages], max_lengths=max_lengths, ffn_multiple_of=32,
    ).eval()  # fmt: skip


CASES = [
    # (stages, max lengths): roomy ones, and tight ones (pooled stages saturate; the byte window slides)
    (1, [256]),
    (2, [256, 128]),
    (3, [256, 128, 64]),
    (4, [256, 128, 64, 32]),
    (2, [96, 12]),
    (4, [80, 20, 8, 3]),
]


@pytest.mark.parametrize(("stages", "max_lengths"), CASES)
def test_cached_logits_equal_full_forward_at_every_step(stages: int, max_lengths: list[int]) -> None:
    model = tiny_aunet(stages, max_lengths)
    ids = encode_bytes(TEXT, eos=False).tolist()
    stepper = Stepper(model, use_cache=True)
    prompt = 9
    got = [stepper.prefill(ids[:prompt])]
    starts = [stepper.start]
    for token in ids[prompt:-1]:
        got.append(stepper.step(token))
        starts.append(stepper.start)
    levels = split_token_levels(np.array(ids), causal=True)
    assert stepper.levels == levels[:-1].tolist()  # the streaming splitter agrees with the batch one
    # the stepped bytes are boundaries at every level the model uses
    for level in range(1, stages):
        assert (levels[prompt:-1] >= level).sum() >= 3
    # One full forward per window gives the logits of every prefix in it (causality, tested in test_aunet.py);
    # every 16th step is also checked against a forward over exactly its prefix.
    ends = [prompt + i for i in range(len(got))]
    with torch.no_grad():
        for start in sorted(set(starts)):
            steps = [i for i, s in enumerate(starts) if s == start]
            last = ends[steps[-1]]
            full = model(torch.tensor([ids[start:last]]), torch.from_numpy(levels[start:last]).long()[None])[0]
            for i in steps:
                torch.testing.assert_close(got[i], full[ends[i] - start - 1], atol=1e-5, rtol=1e-5, msg=f"step {i}")
        for i in range(0, len(got), 16):
            start, end = starts[i], ends[i]
            prefix = model(torch.tensor([ids[start:end]]), torch.from_numpy(levels[start:end]).long()[None])[0, -1]
            torch.testing.assert_close(got[i], prefix, atol=1e-5, rtol=1e-5, msg=f"step {i} (prefix)")
    if max_lengths[0] < len(ids):
        assert starts[-1] > 0  # the window slid at least once


@pytest.mark.parametrize("stages", [1, 3])
def test_greedy_cached_equals_uncached(stages: int) -> None:
    model = tiny_aunet(stages, [64, 32, 16][:stages])
    a = generate(model, "Hello, wor", max_new_bytes=70)  # crosses the 64-byte window: slides
    b = generate(model, "Hello, wor", max_new_bytes=70, use_cache=False)
    assert a == b and len(a) > 0


def test_flat_transformer_generation() -> None:
    torch.manual_seed(0)
    model = FlatTransformer(32, 2, 2, 258, max_length=40, window=8, ffn_multiple_of=32).eval()
    assert generate(model, "abc", 50) == generate(model, "abc", 50, use_cache=False)  # slides once
    stepper = Stepper(model)
    ids = encode_bytes(TEXT[:60], eos=False).tolist()
    got = [stepper.prefill(ids[:5])] + [stepper.step(t) for t in ids[5:39]]
    with torch.no_grad():
        full = model(torch.tensor([ids[:39]]))[0]
    torch.testing.assert_close(torch.stack(got), full[4:39], atol=1e-5, rtol=1e-5)


def test_stop_when_the_window_is_full() -> None:
    model = tiny_aunet(2, [32, 16])
    prompt = "0123456789"
    out = generate(model, prompt, max_new_bytes=100, on_full="stop")
    assert len(out) <= 32 - 1 - len(prompt) + 1  # BOS + prompt + generated ≤ window (+ the byte never fed back)


def test_sampling_is_seeded_and_filters_work() -> None:
    model = tiny_aunet(2, [128, 64])
    kwargs = {"max_new_bytes": 40, "temperature": 1.0}
    a = generate(model, "The ", seed=1, **kwargs)
    assert a == generate(model, "The ", seed=1, **kwargs)
    assert a != generate(model, "The ", seed=2, **kwargs)
    greedy = generate(model, "The ", max_new_bytes=40)
    assert generate(model, "The ", top_k=1, seed=5, **kwargs) == greedy
    assert generate(model, "The ", top_p=1e-6, seed=5, **kwargs) == greedy


def test_sample_next_filters() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    gen = torch.Generator().manual_seed(0)
    assert sample_next(logits) == 0
    assert sample_next(logits, banned=[0]) == 1
    draws = {sample_next(logits, 1.0, top_p=0.7, generator=gen) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7 ≤ 0.5 + 0.3
    draws = {sample_next(logits, 1.0, top_k=3, generator=gen) for _ in range(300)}
    assert draws == {0, 1, 2}
    draws = {sample_next(logits, 5.0, generator=gen) for _ in range(300)}
    assert draws == {0, 1, 2, 3}


def test_eos_stops_generation_and_bos_is_never_produced() -> None:
    model = tiny_aunet(1, [64])
    head = torch.nn.Linear(32, 258)  # a head with a bias makes the winner explicit
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[BOS] = 10.0  # BOS would win, but it is banned ...
        head.bias[ord("z")] = 5.0
    model.output = head
    assert generate(model, "x", max_new_bytes=10) == b"z" * 10
    with torch.no_grad():
        head.bias[EOS] = 20.0  # ... EOS wins and stops at once
    assert generate(model, "x", max_new_bytes=10) == b""


def test_errors() -> None:
    model = tiny_aunet(1, [64])
    with pytest.raises(ConfigError, match="on_full"):
        Stepper(model, on_full="wrap")
    with pytest.raises(ConfigError, match="vocab_size"):
        generate(FlatTransformer(32, 1, 2, 1000, 16), "a")
    with pytest.raises(ConfigError, match="empty"):
        Stepper(model).prefill([])
    for bad, name in (({"top_p": 0.0}, "top_p"), ({"top_k": 0}, "top_k"), ({"temperature": -1.0}, "temperature")):
        with pytest.raises(ConfigError, match=name):
            generate(model, "a", 3, **bad)
