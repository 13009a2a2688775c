"""`BBoxER` after fit: it learns from comparisons only, reports its bounds and transfer, resumes to the same
result, refuses sharded strategies and names bad input. The toy reasoner (tests/callbacks/toy_reasoner.py)
makes the fitness a real function of the weights without decoding; one test runs a real tiny TransformerLM."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nevergrad as ng
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.strategies import FSDPStrategy

from litlab.callbacks.bboxer import BBoxER, load_problem_sets
from litlab.datamodules.math_corpus import parse_math_spec
from litlab.errors import ConfigError
from litlab.evaluation.math_scoring import MathAccuracy
from litlab.evolution import Fitness, generalization_gap

from .toy_reasoner import ToyReasoner

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = "procedural_math:num_train=20,num_selection=60,num_test=80"
VARIANT = "procedural_math:procedural_templates=variant,num_train=1,num_selection=0,num_test=30"
QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "logger": False,
         "enable_checkpointing": False}
SMALL = {"data": SPEC, "num_train": 40, "num_heldout": 40, "transfer": VARIANT, "num_transfer": 20,
         "batch_size": 16, "scale": 0.05, "max_new_bytes": 64}


def all_problems() -> list:
    problems = []
    for spec in (SPEC, VARIANT):
        data, _ = parse_math_spec(spec)
        problems += [p for split in ("train", "selection", "test") for p in data.problems(split)]
    return problems


def fit(callback: BBoxER, root: Path, module: ToyReasoner | None = None) -> ToyReasoner:
    module = module or ToyReasoner(all_problems())
    trainer = Trainer(max_steps=1, callbacks=[callback], default_root_dir=root, **QUIET)
    trainer.fit(module)
    return module


def test_learns_from_comparisons_and_reports_bounds_transfer_and_files(tmp_path):
    callback = BBoxER(**SMALL, where="norms", budget=30, seed=0, output_dir=str(tmp_path / "out"))
    before = ToyReasoner(all_problems())
    module = fit(callback, tmp_path, ToyReasoner(all_problems()))
    result = callback.result
    assert result.selection_after > result.selection_before  # the toy's fitness has a signal
    assert result.bits == 29 and result.num_examples == 40  # one bit per (1+1) step after the identity
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    bounds = report["bounds"]
    assert bounds["generalization_gap"] == pytest.approx(generalization_gap(29, 40, 0.05))
    assert bounds["poisoning"]["comparisons"] == 29 and bounds["dp"]["b"] == 29
    assert bounds["extraction"]["bits_in_output"] == 29 and "| generalization gap |" in report["bounds_markdown"]
    assert report["transfer_before"] is not None and report["transfer_after"] is not None
    assert report["selection_size"] == 40 and report["heldout_size"] == 40
    assert (tmp_path / "out" / "bboxer.ckpt").is_file() and (tmp_path / "out" / "fitness.png").is_file()
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, dict(before.named_parameters())[n])}
    expected = {"blocks.0.norm.weight", "blocks.1.norm.weight", "final_norm.weight"} if callback.kept else set()
    assert changed - {"embed.weight"} == expected  # only the norm scales move, and only when kept


def told_losses(monkeypatch) -> list[float]:
    told: list[float] = []
    original = ng.optimizers.base.Optimizer.tell

    def tell(self, candidate, loss, *args, **kwargs):
        told.append(float(loss))
        return original(self, candidate, loss, *args, **kwargs)

    monkeypatch.setattr(ng.optimizers.base.Optimizer, "tell", tell)
    return told


class SquaredFitness(BBoxER):
    """The same search told a monotone transform of the accuracy: comparisons are unchanged."""

    def _fitness(self) -> Fitness:
        inner = super()._fitness()
        return Fitness(inner.fn, aggregate=lambda outs: float(np.mean(np.concatenate(outs))) ** 2 + 0.1)


def test_only_comparisons_are_told(tmp_path, monkeypatch):
    told = told_losses(monkeypatch)
    plain = BBoxER(**SMALL, where="channel_scales", budget=20, seed=1, safeguard=False)
    fit(plain, tmp_path / "a")
    first = list(told)
    told.clear()
    squared = SquaredFitness(**SMALL, where="channel_scales", budget=20, seed=1, safeguard=False)
    fit(squared, tmp_path / "b")
    assert told == first  # the optimizer never sees the values, only which candidate is better
    assert squared.result.selection_after != plain.result.selection_after
    assert np.allclose(squared.result.best["channel_scales"], plain.result.best["channel_scales"])
    # (1+1) comparison feedback: each step tells the incumbent's loss ± 1/2, i.e. one bit
    incumbent = 0.0
    for loss in first[1:]:
        assert loss in (incumbent - 0.5, incumbent + 0.5)
        incumbent = min(incumbent, loss)
    accuracies = {round(r["fitness"], 6) for r in plain.result.history}
    assert len(accuracies) > 1 and not accuracies & {round(x, 6) for x in first}


class FailingToy(ToyReasoner):
    fail_at = 0

    def generate_batch(self, prompts, *args, **kwargs):
        if self.calls + 1 == self.fail_at:
            self.calls += 1
            raise RuntimeError("interrupted")
        return super().generate_batch(prompts, *args, **kwargs)


def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path):
    kwargs = {**SMALL, "where": ["norms", "layer_scales"], "budget": 16, "seed": 2, "checkpoint_every": 4}
    straight = BBoxER(**kwargs, output_dir=str(tmp_path / "a"))
    fit(straight, tmp_path / "a")
    toy = FailingToy(all_problems())
    toy.fail_at = 2 + 3 + 3 * 9 + 2  # transfer (2 batches) and held-out (3) before, then inside evaluation 10
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(BBoxER(**kwargs, output_dir=str(tmp_path / "b")), tmp_path / "b", toy)
    assert (tmp_path / "b" / "state.pt").is_file()
    resumed = BBoxER(**kwargs, output_dir=str(tmp_path / "b"))
    fit(resumed, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "report.json").read_text())["resumed_at_evaluation"] == 8
    assert resumed.result.history == straight.result.history
    for part in ("norms", "layer_scales"):
        assert np.array_equal(resumed.result.best[part], straight.result.best[part])


def test_refuses_sharded_strategies_in_one_line():
    callback = BBoxER(data=SPEC, num_train=4, num_heldout=4)
    with pytest.raises(ConfigError) as info:
        callback.setup(SimpleNamespace(strategy=FSDPStrategy()), None, "fit")
    assert "FSDPStrategy" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"where": "norm"}, "'norm' is not a place where x acts.*did you mean norms"),
    ({"num_train": 0}, "num_train=0"),
    ({"num_heldout": 0}, "safeguard=True needs held-out problems"),
    ({"data": "procedural_math:shots=2"}, "'shots=2' is not allowed"),
    ({"optimizer": "OnePlusTwo"}, "OnePlusTwo"),
    ({"box": -1.0}, "box=-1.0"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BBoxER(**{"data": SPEC, **kwargs})


def test_errors_at_run_time_are_named(tmp_path):
    typo = BBoxER(**SMALL, where="channel_scales", tensors=["blocks.0.fc.weigth"], budget=2)
    with pytest.raises(ConfigError, match="'blocks.0.fc.weigth' matches no parameter.*close matches: blocks.0.fc.weight"):
        fit(typo, tmp_path)
    too_many = BBoxER(**{**SMALL, "num_train": 61}, budget=2)
    with pytest.raises(ConfigError, match="num_train=61 is not allowed: the selection split .* has 60 problems"):
        fit(too_many, tmp_path)


def test_a_real_language_model_after_fit(tmp_path):
    from litlab.datamodules import TextDataModule

    from ..poisoning.tiny import SPEC as TINY_SPEC
    from ..poisoning.tiny import tiny_lm

    model, _ = tiny_lm(tmp_path)
    data = TextDataModule(source=TINY_SPEC, tokenizer="bpe", tokenizer_path=model.hparams.tokenizer_path,
                          seq_len=32, batch_size=2)
    callback = BBoxER(data=TINY_SPEC, num_train=4, num_heldout=4, transfer=VARIANT, num_transfer=2, budget=3,
                      where=["norms", "subspace"], tensors="*.layers.0.feed_forward.*", subspace_dim=2,
                      max_new_bytes=24, batch_size=4, output_dir=str(tmp_path / "out"))
    seed_everything(0)
    trainer = Trainer(max_steps=1, limit_val_batches=1, callbacks=[callback], default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, data)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["num_evaluations"] == 3 and report["bounds"]["bits"] == 2
    assert set(report["space"]) == {"norms", "subspace"} and report["space"]["subspace"]["dimension"] == 2
    sets = load_problem_sets(TINY_SPEC, "selection", 4, "test", 4, VARIANT, 2, 0, 0)
    direct = Fitness(MathAccuracy(max_new_bytes=24)).evaluate(model, [sets.heldout]).value
    assert direct == (report["heldout_after"] if report["kept"] else report["heldout_before"])


@pytest.mark.timeout(300)
def test_two_ddp_ranks_give_the_result_of_one_process(tmp_path):
    kwargs = {**SMALL, "num_train": 44, "where": ["norms", "channel_scales"], "tensors": ["blocks.1.fc.weight"],
              "budget": 12, "num_workers": 2, "seed": 3}
    fit(BBoxER(**kwargs, output_dir=str(tmp_path / "one")), tmp_path / "one")
    two = BBoxER(**kwargs, output_dir=str(tmp_path / "two"))
    trainer = Trainer(max_steps=1, callbacks=[two], default_root_dir=tmp_path / "two", devices=2,
                      strategy="ddp_spawn_find_unused_parameters_true", **QUIET)
    trainer.fit(ToyReasoner(all_problems()))
    one_report, two_report = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    assert one_report["world_size"] == 1 and two_report["world_size"] == 2
    assert one_report["best_index"] > 0  # the search moved
    for key in ("history", "best", "bounds", "transfer_before", "transfer_after", "heldout_after", "kept"):
        assert two_report[key] == one_report[key], key
    weights = [torch.load(tmp_path / name / "bboxer.ckpt", weights_only=False)["state_dict"] for name in ("one", "two")]
    for name in ("blocks.0.norm.weight", "final_norm.weight", "blocks.1.fc.weight"):
        assert torch.equal(weights[0][name], weights[1][name]), name
