"""Batched decoding: one batch of ragged prompts == each prompt alone, prefix reuse == no reuse, per-row seeds."""

from __future__ import annotations

import pytest
import torch

from litlab.errors import ConfigError
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.generation import StepperDecoder, decode_batch
from litlab.models.lm.ragged import RaggedDecoder
from litlab.models.lm.sampling import sample_tokens

VOCAB, BOS, EOS = 300, 1, 2


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> FlatTransformer:
    torch.manual_seed(0)
    net = FlatTransformer(dim=64, layers=2, heads=4, vocab_size=VOCAB, max_length=128, ffn_multiple_of=16)
    with torch.no_grad():  # a sharper output distribution: greedy paths that differ between prompts
        net.output.weight.mul_(8.0)
    return net.eval()


def prompts(seed: int = 1, count: int = 6) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (count,), generator=generator).tolist()
    return [[BOS, *torch.randint(3, VOCAB, (n,), generator=generator).tolist()] for n in lengths]


def one_by_one(model, rows, **kwargs) -> list[list[int]]:
    return [decode_batch(StepperDecoder(model), [row], 20, eos_id=EOS, banned=(BOS,), **kwargs)[0] for row in rows]


@torch.no_grad()
def test_ragged_prefill_logits_equal_each_prompt_alone(model):
    rows = prompts()
    batched = RaggedDecoder(model).prefill(rows)
    for i, row in enumerate(rows):
        alone = model(torch.tensor([row]))[0, -1]
        torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_batched_greedy_equals_one_by_one(model):
    rows = prompts()
    batched = decode_batch(RaggedDecoder(model), rows, 20, eos_id=EOS, banned=(BOS,))
    assert batched == one_by_one(model, rows)
    assert len({tuple(out) for out in batched}) > 1  # the prompts lead to different continuations


@torch.no_grad()
def test_sampling_with_per_row_generators_equals_one_by_one(model):
    rows = prompts(seed=2, count=4)
    kwargs = {"temperature": 1.0, "top_k": 50, "top_p": 0.9}
    gens = [torch.Generator().manual_seed(10 + i) for i in range(len(rows))]
    batched = decode_batch(RaggedDecoder(model), rows, 20, eos_id=EOS, banned=(BOS,), generators=gens, **kwargs)
    alone = [decode_batch(StepperDecoder(model), [row], 20, eos_id=EOS, banned=(BOS,),
                          generators=[torch.Generator().manual_seed(10 + i)], **kwargs)[0]
             for i, row in enumerate(rows)]
    assert batched == alone


@torch.no_grad()
def test_prefix_reuse_equals_no_reuse(model):
    prefix = prompts(seed=3, count=1)[0] + list(range(40, 80))
    rows = [row[1:] for row in prompts(seed=4, count=5)]
    reused = RaggedDecoder(model)
    logits = reused.prefill(rows, prefix=prefix)
    full = RaggedDecoder(model).prefill([[*prefix, *row] for row in rows])
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
    with_reuse = decode_batch(RaggedDecoder(model), rows, 16, eos_id=EOS, banned=(BOS,), prefix=prefix)
    without = decode_batch(RaggedDecoder(model), [[*prefix, *row] for row in rows], 16, eos_id=EOS, banned=(BOS,))
    assert with_reuse == without
    assert [out[:16] for out in one_by_one(model, [[*prefix, *row] for row in rows])] == with_reuse  # 20 ids each


@torch.no_grad()
def test_stop_and_eos_end_rows_independently(model):
    rows = prompts(count=3)
    free = decode_batch(RaggedDecoder(model), rows, 12, eos_id=EOS, banned=(BOS,))
    stopped = decode_batch(RaggedDecoder(model), rows, 12, eos_id=EOS, banned=(BOS,),
                           stop=lambda row, ids: row == 1 and len(ids) == 3)
    assert stopped[1] == free[1][:3] and stopped[0] == free[0] and stopped[2] == free[2]
    eos = free[0][2]
    ended = decode_batch(RaggedDecoder(model), rows, 12, eos_id=eos, banned=(BOS,))
    assert ended[0] == free[0][:free[0].index(eos)]


def test_errors_name_the_problem(model):
    with pytest.raises(ConfigError, match="max_length=128"):
        RaggedDecoder(model).prefill([[BOS] * 129])
    windowed = FlatTransformer(dim=32, layers=1, heads=2, vocab_size=VOCAB, max_length=64, window=16,
                               ffn_multiple_of=16)
    with pytest.raises(ConfigError, match="window=16"):
        RaggedDecoder(windowed)
    with pytest.raises(ConfigError, match="at least one id"):
        RaggedDecoder(model).prefill([[BOS], []])


def test_sample_tokens_greedy_banned_and_row_generators():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
    assert sample_tokens(logits).tolist() == [1, 0]
    assert sample_tokens(logits, banned=[1, 0]).tolist() == [2, 2]
    a = sample_tokens(logits.repeat(50, 1), 2.0, generators=[torch.Generator().manual_seed(i) for i in range(100)])
    b = sample_tokens(logits.repeat(50, 1), 2.0, generators=[torch.Generator().manual_seed(i) for i in range(100)])
    assert torch.equal(a, b) and len(set(a.tolist())) > 1
    with pytest.raises(ConfigError, match="generators"):
        sample_tokens(logits, 1.0, generators=[None])
