"""``litlab retrofit_lm``: fast exact match == real decoding with biases, the search space, the safeguard, the CLI."""

from __future__ import annotations

import json

import lightning
import lightning.pytorch as L
import pytest
import torch

from litlab.errors import ConfigError
from litlab.evaluation.char_tasks import CharTaskExample, make_char_tasks
from litlab.evaluation.exact_match import GreedyExactMatch, cut_prediction
from litlab.evolution.split import selection_split
from litlab.lightning_modules import AUNetLM
from litlab.methods.afterlearner_lm import (
    DecodingBiases,
    decoding_hyperparameters,
    retrofit_examples,
    retrofit_language_model,
)
from litlab.models.lm.transformer import RMSNorm

TINY = {"dims": [32, 64], "layers": [1, 1], "heads": [2, 2], "windows": [16, None], "pooled_lengths": [64],
        "seq_len": 256, "ffn_multiple_of": 16, "warmup_steps": 1}
DOCS = [(
    b"The quick brown foxes jumped over lazy sleeping dogs while zebras watched from distant hills. Python modules "
    b"define classes, functions and variables; packages group related modules together. Every iterator implements "
    b"next, raising StopIteration when exhausted; generators simplify writing them."
)]


@pytest.fixture(scope="module")
def model() -> AUNetLM:
    L.seed_everything(0)
    return AUNetLM(**TINY).eval()


@pytest.fixture(scope="module")
def examples() -> list[CharTaskExample]:
    return make_char_tasks(DOCS, tasks=["join"], examples_per_task=8, num_shots=1, seed=0)


def test_fast_exact_match_equals_real_greedy_decoding(model, examples):
    """Teacher-forced argmax == KV-cached greedy generation, with and without decoding biases."""
    hp = decoding_hyperparameters()
    metric = GreedyExactMatch(model, DecodingBiases(hp, model.encode), max_extra_bytes=4)
    cached = GreedyExactMatch(model, DecodingBiases(hp, model.encode), max_extra_bytes=4, cache_logits=True)  # decoding-only searches
    assert metric.fast
    positives = 0
    for biases in ({}, {"newline_bias": 3.0, "copy_bias": 2.0}):
        hp.apply({**hp.identity(), **biases})
        cases = list(examples[:6])
        for ex in examples[:6]:  # targets the model does (or nearly does) produce
            try:
                pred = cut_prediction(metric.generate(ex)).decode()
            except UnicodeDecodeError:
                continue
            if pred:
                cases += [CharTaskExample(ex.task, ex.prompt, (pred,), 0),
                          CharTaskExample(ex.task, ex.prompt, (pred[:-1] or "zz",), 0)]
        metric.fast = True
        fast = metric.scores(cases)
        metric.fast = False
        slow = metric.scores(cases)
        assert torch.equal(fast, slow), biases
        assert torch.equal(cached.scores(cases), fast), biases
        positives += int(fast.sum())
    hp.apply(hp.identity())
    assert positives > 0  # the construction hits real matches (seeded)


def _fake_scores(monkeypatch, model, heldout_prompts):
    """Exact match 1 on selection iff the RMSNorm weights changed; held-out the opposite (a constructed drop)."""
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}

    def changed() -> bool:
        return any(not torch.equal(p, originals[n]) for n, p in model.named_parameters())

    def scores(self, batch):
        moved = changed()
        return torch.tensor([float(moved != (ex.prompt in heldout_prompts)) for ex in batch])

    monkeypatch.setattr(GreedyExactMatch, "scores", scores)
    return originals


@pytest.mark.parametrize("safeguard", [True, False])
def test_only_norm_weights_change_and_the_safeguard_restores_them(monkeypatch, examples, safeguard):
    L.seed_everything(0)
    model = AUNetLM(**TINY).eval()
    held = [examples[i] for i in selection_split(len(examples), 4, 4, seed=0)[1]]
    originals = _fake_scores(monkeypatch, model, {ex.prompt for ex in held})
    report = retrofit_examples(model, examples, num_selection=4, num_heldout=4, budget=4, seed=0,
                               safeguard=safeguard)
    assert report["selection_before"] == 0.0 and report["selection_after"] == 1.0
    assert report["heldout_before"] == 1.0 and report["heldout_after"] == 0.0
    assert report["changed"] and report["kept"] is (not safeguard)
    norm_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, RMSNorm)}
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, originals[n])}
    if safeguard:
        assert moved == set()
    else:
        assert moved and moved <= norm_weights


def test_report_structure_files_and_checkpoint_through_the_cli(tmp_path, monkeypatch):
    L.seed_everything(0)
    model = AUNetLM(**TINY)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "litlab_class": "litlab.lightning_modules.aunet_lm.AUNetLM"}, ckpt)
    from litlab.cli import main

    out = tmp_path / "out"
    main(["retrofit_lm", str(ckpt), f"--output={out}", "--task=join", "--space=both", "--num_selection=3",
          "--num_heldout=3", "--num_shots=1", "--budget=3", "--max_bytes=200000"])
    report = json.loads((out / "report.json").read_text())
    for key in ("selection_before", "selection_after", "heldout_before", "heldout_after", "kept", "changed",
                "bits", "generalization_gap", "budget", "generation", "result", "seconds", "task"):
        assert key in report, key
    assert report["task"] == "join" and report["budget"] == 3 and report["fast_exact_match"]
    assert report["result"]["num_evaluations"] == 3 and report["result"]["feedback"] == "comparison"
    assert report["bits"] == pytest.approx(2.0)  # (1+1) comparison: nothing told at step 0, 1 bit per step after
    assert 0.0 <= report["selection_before"] <= report["selection_after"] <= 1.0
    assert set(report["result"]["best"]) == {"norms", "decoding"}
    assert not {*report["selection_prompts"]} & {*report["heldout_prompts"]}
    assert (out / "fitness.png").stat().st_size > 0 and (out / "evolution.json").is_file()
    assert report["generation"]["heldout_before"] == report["heldout_before"]  # fast path == real decoding


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"task": "nope"}, "task"), ({"space": "weights"}, "space"), ({"granularity": "entry"}, "granularity"),
    ({"budget": 0}, "budget"), ({"num_selection": 0}, "num_selection"), ({"num_heldout": -1}, "num_heldout"),
    ({"max_extra_bytes": 0}, "max_extra_bytes"), ({"scale": -1.0}, "scale"), ({"box": 0.0}, "box"),
    ({"num_shots": -1}, "num_shots"), ({"optimizer": "NoSuchOptimizer"}, "NoSuchOptimizer"),
])
def test_bad_arguments_raise_config_error_naming_them(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        retrofit_language_model("does-not-matter.ckpt", **kwargs)
