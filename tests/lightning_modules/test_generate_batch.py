"""`LanguageModel.generate_batch`: a batch of prompts == each prompt alone (greedy and sampled), for BPE, bytes
and AU-Net models; shared-prefix reuse == no reuse; samples per prompt; stop strings; bad arguments."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from litlab.datamodules import train_bpe
from litlab.errors import ConfigError
from litlab.lightning_modules import AUNetLM, TransformerLM
from litlab.models.lm.generation import StepperDecoder
from litlab.models.lm.ragged import RaggedDecoder

PROMPTS = [b"def ", b"The quick brown fox", b"import os\nimport", b"x"]
PREFIX = b"Q: what is 2 + 2?\nA: 4\n\nQ: what is 3 + 5?\nA: 8\n\n"


def sharpen(model):
    with torch.no_grad():
        model.model.output.weight.mul_(6.0)
    return model.eval()


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory) -> TransformerLM:
    path = train_bpe(output=str(tmp_path_factory.mktemp("bpe") / "bpe.json"), vocab_size=400, max_bytes=100_000)
    L.seed_everything(0)
    return sharpen(TransformerLM(dim=32, layers=2, heads=2, ffn_multiple_of=16, seq_len=256, tokenizer="bpe",
                                 tokenizer_path=path, vocab_size=400))


@pytest.fixture(scope="module")
def byte_model() -> TransformerLM:
    L.seed_everything(1)
    return sharpen(TransformerLM(dim=32, layers=2, heads=2, ffn_multiple_of=16, seq_len=256, tokenizer="bytes",
                                 vocab_size=258))


@pytest.fixture(scope="module")
def aunet_model() -> AUNetLM:
    L.seed_everything(2)
    return sharpen(AUNetLM(dims=[32, 64], layers=[1, 1], heads=[2, 2], windows=[16, None], pooled_lengths=[64],
                           seq_len=256, ffn_multiple_of=16))


@pytest.mark.parametrize("name", ["bpe_model", "byte_model", "aunet_model"])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_p": 0.9, "seed": 7}])
def test_batch_equals_each_prompt_alone(request, name, sampling):
    model = request.getfixturevalue(name)
    batched = model.generate_batch(PROMPTS, max_new_bytes=24, **sampling)
    seed = sampling.pop("seed", 0)
    alone = [model.generate_batch([p], max_new_bytes=24, seed=seed + i, **sampling)[0] for i, p in enumerate(PROMPTS)]
    assert batched == alone
    assert all(len(out) <= 24 for out in batched) and len(set(batched)) > 1
    assert model.generate(PROMPTS[1], max_new_bytes=24) == model.generate_batch(PROMPTS, max_new_bytes=24)[1]


def test_the_flat_model_decodes_the_batch_in_one_cache(bpe_model, byte_model, aunet_model):
    assert isinstance(bpe_model.decoder(), RaggedDecoder) and isinstance(byte_model.decoder(), RaggedDecoder)
    assert isinstance(aunet_model.decoder(), StepperDecoder) and isinstance(bpe_model.decoder(False), StepperDecoder)
    # the ragged cache and one stepper per prompt give the same continuations
    ragged = bpe_model.generate_batch(PROMPTS, max_new_bytes=24)
    assert ragged == bpe_model.generate_batch(PROMPTS, max_new_bytes=24, use_cache=False)


@pytest.mark.parametrize("name", ["bpe_model", "aunet_model"])
def test_prefix_reuse_equals_no_reuse(request, name):
    model = request.getfixturevalue(name)
    questions = [b"Q: what is 1 + 6?\nA:", b"Q: what is 10 + 1?\nA:", b"Q: 0 + 0?\nA:"]
    reused = model.generate_batch(questions, max_new_bytes=16, prefix=PREFIX)
    assert reused == model.generate_batch(questions, max_new_bytes=16, prefix=PREFIX, reuse_prefix=False)
    if name == "aunet_model":  # bytes: the prefix and the question tokenize the same apart or together
        assert reused == model.generate_batch([PREFIX + q for q in questions], max_new_bytes=16)


def test_samples_per_prompt_stop_strings_and_seeds(bpe_model):
    samples = bpe_model.generate_batch(PROMPTS[:2], max_new_bytes=20, temperature=1.5, num_return_sequences=3,
                                       seed=3)
    assert len(samples) == 6 and len(set(samples[:3])) > 1  # three different samples of the first prompt
    assert samples == bpe_model.generate_batch(PROMPTS[:2], max_new_bytes=20, temperature=1.5,
                                               num_return_sequences=3, seed=3)
    free = bpe_model.generate_batch(PROMPTS, max_new_bytes=30)
    cut = free[0][3:5]
    stopped = bpe_model.generate_batch(PROMPTS, max_new_bytes=30, stop=[cut])
    assert cut in stopped[0] and free[0].startswith(stopped[0]) and len(stopped[0]) < len(free[0])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_new_bytes": -1}, "max_new_bytes=-1"), ({"num_return_sequences": 0}, "num_return_sequences=0"),
    ({"temperature": -1.0}, "temperature"), ({"stop": [b""]}, "stop strings"), ({"batch_size": 0}, "batch_size=0"),
])
def test_bad_arguments_name_themselves(byte_model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        byte_model.generate_batch(PROMPTS, **kwargs)
    with pytest.raises(ConfigError, match="not one string"):
        byte_model.generate_batch(b"one prompt")
