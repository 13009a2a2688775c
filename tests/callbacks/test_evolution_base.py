"""`EvolutionCallback` serves a method other than AfterLearnER: a subclass that only says what it searches and
how it scores runs after fit, applies or vetoes the result, writes its files, logs under its own prefix and
resumes from its state file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litlab.callbacks.evolution_base import EvaluationData, EvolutionCallback
from litlab.errors import ConfigError
from litlab.evolution import Fitness, HyperParameters, SearchSpace

QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}


class Threshold(LightningModule):
    """Classifies ``x > threshold``; trains nothing (one dummy step), the callback searches ``threshold``."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.hp = HyperParameters({"threshold": (0.0, -1.0, 1.0)})

    def training_step(self, batch, batch_idx):
        return (self.dummy - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=4)


class ThresholdSearch(EvolutionCallback):
    """Searches the threshold on points whose true boundary is 0.5 (selection) or ``heldout_boundary``."""

    log_prefix = "threshold"
    weights_name = "threshold.ckpt"

    def __init__(self, heldout_boundary: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.heldout_boundary = heldout_boundary

    def build_space(self, pl_module):
        return SearchSpace({"hp": pl_module.hp})

    def build_fitness(self, trainer, pl_module):
        return Fitness(lambda model, batch: ((batch[0] > model.hp["threshold"]) == batch[1]).float())

    def evaluation_data(self, trainer, pl_module, limit):
        x = torch.linspace(-1, 1, 41)
        selection = [(x, x > 0.5)]
        heldout = [(x, x > self.heldout_boundary)]
        return EvaluationData(selection, heldout, 41, 41)

    def fitness_name(self) -> str:
        return "accuracy"

    def report_extras(self):
        return {"task": "threshold"}


def fit(callback: EvolutionCallback, tmp_path: Path) -> Threshold:
    module = Threshold()
    trainer = Trainer(max_steps=1, callbacks=[callback], logger=CSVLogger(tmp_path, name="logs"),
                      default_root_dir=tmp_path, **QUIET)
    trainer.fit(module)
    return module


def test_a_subclass_runs_after_fit_applies_saves_and_logs(tmp_path):
    callback = ThresholdSearch(optimizer="OnePlusOne", budget=30, seed=0, output_dir=str(tmp_path / "out"))
    module = fit(callback, tmp_path)
    result = callback.result
    assert result.selection_after > result.selection_before and callback.kept
    assert module.hp["threshold"] == pytest.approx(result.best["hp"]["threshold"])  # applied to the module
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["task"] == "threshold" and report["kept"] and report["selection_size"] == 41
    assert report["generalization_gap"] == pytest.approx(result.generalization_gap)
    assert (tmp_path / "out" / "threshold.ckpt").is_file() and (tmp_path / "out" / "fitness.png").is_file()
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("threshold/selection_after")]
    assert len(logged) == 1 and float(logged[0]["threshold/selection_after"]) == pytest.approx(result.selection_after)


def test_the_safeguard_vetoes_a_result_that_the_heldout_set_contradicts(tmp_path):
    callback = ThresholdSearch(heldout_boundary=-0.5, optimizer="OnePlusOne", budget=30, seed=0,
                               output_dir=str(tmp_path / "out"))
    module = fit(callback, tmp_path)
    result = callback.result
    assert result.selection_after > result.selection_before and result.heldout_after < result.heldout_before
    assert callback.kept is False and module.hp["threshold"] == 0.0


def test_resume_from_the_state_file_ends_as_an_uninterrupted_run(tmp_path):
    straight = ThresholdSearch(optimizer="OnePlusOne", budget=20, seed=3, output_dir=str(tmp_path / "a"),
                               checkpoint_every=5)
    fit(straight, tmp_path / "a")

    class Interrupted(ThresholdSearch):
        calls = 0

        def build_fitness(self, trainer, pl_module):
            inner = super().build_fitness(trainer, pl_module)

            def scores(model, batch):
                Interrupted.calls += 1
                if Interrupted.calls == 13:
                    raise RuntimeError("interrupted")
                return inner.fn(model, batch)
            return Fitness(scores)

    with pytest.raises(RuntimeError, match="interrupted"):
        fit(Interrupted(optimizer="OnePlusOne", budget=20, seed=3, output_dir=str(tmp_path / "b"),
                        checkpoint_every=5), tmp_path / "b")
    assert (tmp_path / "b" / "state.pt").is_file()
    resumed = ThresholdSearch(optimizer="OnePlusOne", budget=20, seed=3, output_dir=str(tmp_path / "b"),
                              checkpoint_every=5)
    fit(resumed, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "report.json").read_text())["resumed_at_evaluation"] == 10
    assert [r["fitness"] for r in resumed.result.history] == [r["fitness"] for r in straight.result.history]
    assert np.allclose(resumed.result.best["hp"]["threshold"], straight.result.best["hp"]["threshold"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"budget": 0}, "budget=0"), ({"feedback": "bits"}, "feedback='bits'"), ({"delta": 1.0}, "delta=1.0"),
    ({"optimizer": "NoSuchOptimizer"}, "NoSuchOptimizer"), ({"num_workers": 0}, "num_workers=0"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ThresholdSearch(**kwargs)


def test_a_subclass_must_say_what_it_searches_and_how_it_scores():
    class Incomplete(EvolutionCallback):
        def build_space(self, pl_module):
            return SearchSpace({})

    with pytest.raises(TypeError, match="build_fitness"):
        Incomplete()
