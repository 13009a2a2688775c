"""`PromptScorer` on real tiny models (litlab TransformerLM and its Hugging Face copy): the fitness and the
generations are the same with and without prefix reuse, scores are cached by pre-prompt, sampling seeds follow
the problem (a split cut into blocks samples as one), prompts over the context score 0, bad input is named."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from litlab.datamodules.math_corpus import parse_math_spec
from litlab.errors import ConfigError
from litlab.evaluation.math_answer import extract_answer, normalize_number
from litlab.evaluation.prompt_scores import ProblemBlock, PromptScorer, context_length, contiguous_blocks
from litlab.text.gsm8k import format_question

from .tiny_math_lm import hf_copy, tiny_math_lm

SPEC = "procedural_math:num_train=200,num_selection=16,num_test=8,per_document=3"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt_scores")
    lm, _ = tiny_math_lm(root, SPEC)
    hf, _ = hf_copy(lm, root / "hf")
    data, _ = parse_math_spec(SPEC)
    return {"litlab": lm, "hf": hf, "pool": data.problems("train"), "problems": data.problems("selection")}


class Spy:
    """Records every generate_batch call (its keyword arguments and outputs) of a language model."""

    def __init__(self, lm) -> None:
        self.lm, self.calls = lm, []

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def generate_batch(self, prompts, **kwargs):
        out = self.lm.generate_batch(prompts, **kwargs)
        self.calls.append({"prompts": list(prompts), **kwargs, "outputs": out})
        return out


def relabelled(lm, pool, problems, indices):
    """The problems with the answer the model gives under the pre-prompt for every other one (so that exact
    match is 1 there and the fitness is not constant); a random model's answers are otherwise always wrong."""
    prefix = PromptScorer(lm, pool).prefix(indices).encode()
    texts = lm.generate_batch([format_question(p.question).encode() for p in problems], max_new_bytes=60,
                              stop=(b"\n\n",), prefix=prefix)
    out = []
    for i, (p, text) in enumerate(zip(problems, texts, strict=True)):
        found = extract_answer(text.decode("utf-8", errors="replace"))
        usable = i % 2 == 0 and found is not None and normalize_number(found) is not None
        out.append(dataclasses.replace(p, answer=found) if usable else p)
    return out


@pytest.mark.parametrize("kind", ["litlab", "hf"])
def test_the_fitness_is_the_same_with_and_without_prefix_reuse(models, kind):
    lm, pool = models[kind], models["pool"]
    indices = (5, 17, 3)
    problems = relabelled(lm, pool, models["problems"][:8], indices)
    block = ProblemBlock(tuple(problems))
    results = {}
    for reuse in (True, False):
        spy = Spy(lm)
        scorer = PromptScorer(spy, pool, max_new_bytes=60, reuse_prefix=reuse)
        results[reuse] = (scorer.scores(indices, block), spy.calls[0]["outputs"])
        assert spy.calls[0]["reuse_prefix"] is reuse and spy.calls[0]["batch_size"] is None  # one batch: once
        assert spy.calls[0]["prefix"] == scorer.prefix(indices).encode()
    assert results[True] == results[False]
    assert 0 < sum(results[True][0]) < len(problems)  # the relabelled half is right: a fitness that can differ


def test_scores_are_cached_by_pre_prompt_and_block(models):
    spy = Spy(models["litlab"])
    scorer = PromptScorer(spy, models["pool"], max_new_bytes=40)
    block = ProblemBlock(tuple(models["problems"][:4]))
    first = scorer.scores((1, 2), block)
    assert scorer.scores([1, 2], block) == first and len(spy.calls) == 1
    assert (scorer.computed, scorer.hits) == (1, 1)
    scorer.scores((2, 1), block)  # another order is another pre-prompt
    scorer.scores((1, 2), ProblemBlock(tuple(models["problems"][4:8]), 4))
    assert len(spy.calls) == 3 and scorer.computed == 3
    assert scorer.scores((), block) == scorer.scores((), block) and spy.calls[-1]["prefix"] is None  # zero-shot


def test_sampling_seeds_follow_the_problem_so_blocks_sample_as_one_split(models):
    spy = Spy(models["litlab"])
    scorer = PromptScorer(spy, models["pool"], max_new_bytes=30)
    problems = models["problems"][:6]
    whole = scorer.scores((0, 1), ProblemBlock(tuple(problems)), samples=3, temperature=1.0, seed=7)
    texts = spy.calls[-1]["outputs"]
    parts = [b for rank in range(2) for b in contiguous_blocks(problems, rank, 2)]
    assert [b.offset for b in parts] == [0, 3]
    shards = [s for b in parts for s in scorer.scores((0, 1), b, samples=3, temperature=1.0, seed=7)]
    assert shards == whole
    assert [t for call in spy.calls[1:] for t in call["outputs"]] == texts  # the same 18 sampled answers
    assert len(set(texts)) > 6  # the samples differ


def test_a_prompt_over_the_context_scores_zero_and_is_counted(tmp_path, models):
    short, _ = tiny_math_lm(tmp_path, SPEC, seq_len=96)
    assert context_length(short) == 96 and context_length(models["hf"]) == 1024
    scorer = PromptScorer(short, models["pool"], max_new_bytes=20)
    block = ProblemBlock(tuple(models["problems"][:3]))
    assert all(scorer.fits((), p) for p in block.problems)
    assert not any(scorer.fits((0, 1, 2), p) for p in block.problems)  # three demonstrations > 96 tokens
    assert scorer.scores((0, 1, 2), block) == [0.0, 0.0, 0.0] and scorer.overflow == 3


def test_bad_input_is_named(models):
    with pytest.raises(ConfigError, match="demonstration pool is empty"):
        PromptScorer(models["litlab"], [])
    with pytest.raises(ConfigError, match="generate_batch"):
        PromptScorer(torch.nn.Linear(1, 1), models["pool"])
    scorer = PromptScorer(models["litlab"], models["pool"][:5])
    with pytest.raises(ConfigError, match="index 5 is outside the pool of 5"):
        scorer.prefix((1, 5))
    with pytest.raises(ConfigError, match="temperature > 0"):
        scorer.scores((1,), ProblemBlock(tuple(models["problems"][:1])), samples=2)
