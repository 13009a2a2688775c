"""EvolutionaryRetrofit (AfterLearnER) in process: after fit, split, safeguard, report, weights, errors, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import (
    LightningDataModule,
    LightningModule,
    Trainer,
    seed_everything,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litlab.callbacks import EvolutionaryRetrofit
from litlab.callbacks.evolution_data import subset_loader
from litlab.callbacks.retrofit_metrics import macro_f1
from litlab.datamodules import EmbeddedImageDataModule
from litlab.errors import ConfigError
from litlab.evolution import HyperParameters, generalization_gap, shard
from litlab.evolution.split import fraction_split
from litlab.lightning_cli import LitlabTrainer
from litlab.lightning_modules import MoEImageClassifier

TINY_VIT = {"model_name": "test_vit", "num_classes": 10, "img_size": 8, "in_chans": 1, "num_experts": 4,
            "top_k": 1, "placement": "last-1",
            "model_kwargs": {"patch_size": 2, "depth": 2, "embed_dim": 32, "num_heads": 2}}
QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- a real fit


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    """A tiny MoE ViT fit on digits for 4 short epochs (~60% top-1), then retrofitted (head biases, macro-F1) in on_fit_end."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fit")
    seed_everything(0)
    module = MoEImageClassifier(**TINY_VIT, lr=3e-3, warmup_epochs=0)
    retrofit = EvolutionaryRetrofit(select="model.head.bias", mode="additive", granularity="channel", scale=0.3,
                                    budget=30, metric="macro_f1", safeguard=False)
    trainer = Trainer(max_epochs=4, limit_train_batches=40, limit_val_batches=2, default_root_dir=root,
                      logger=CSVLogger(root), callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True),
                                                         retrofit], **QUIET)
    datamodule = EmbeddedImageDataModule(dataset="digits", batch_size=32, augment=False)
    trainer.fit(module, datamodule=datamodule)
    return {"root": root, "module": module, "retrofit": retrofit, "trainer": trainer, "datamodule": datamodule}


def test_runs_after_fit_and_changes_only_the_selected_tensor(fitted):
    module, retrofit = fitted["module"], fitted["retrofit"]
    trained = torch.load(fitted["root"] / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    now = module.state_dict()
    changed = {name for name, value in now.items() if not torch.equal(value, trained[name])}
    assert changed == {"model.head.bias"}
    assert retrofit.result.best_index > 0 and retrofit.kept
    assert retrofit.result.selection_after > retrofit.result.selection_before
    assert module.device.type == "cpu"  # left where on_fit_end found it
    delta = now["model.head.bias"] - trained["model.head.bias"]
    expected = torch.tensor(retrofit.result.best_json["parameters"]["model.head.bias"], dtype=torch.float32)
    torch.testing.assert_close(delta, expected)


def test_report_plot_weights_and_logged_metrics(fitted):
    retrofit, module = fitted["retrofit"], fitted["module"]
    report = json.loads(Path(retrofit.paths["report"]).read_text())
    for key in ("selection_before", "selection_after", "heldout_before", "heldout_after", "bits", "generalization_gap",
                "nan_count", "history", "best"):
        assert key in report
    val_size = len(fitted["datamodule"].val_dataset)
    assert report["selection_size"] + report["heldout_size"] == val_size
    assert report["num_examples"] == report["selection_size"] == round(val_size * 0.5)
    assert report["bits"] == 29  # comparison feedback, (1+1): one bit per evaluation after the identity
    assert report["generalization_gap"] == pytest.approx(generalization_gap(29, report["num_examples"], 0.05))
    assert report["kept"] is True and report["metric"] == "macro_f1" and len(report["history"]) == 30
    assert Path(retrofit.paths["plot"]).stat().st_size > 1000
    loaded = MoEImageClassifier.load_from_checkpoint(retrofit.paths["weights"])
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    with open(fitted["trainer"].logger.experiment.metrics_file_path) as f:
        rows = [row for row in csv.DictReader(f) if row.get("retrofit/generalization_gap")]
    assert len(rows) == 1 and float(rows[0]["retrofit/generalization_gap"]) == pytest.approx(report["generalization_gap"])
    assert float(rows[0]["retrofit/selection_after"]) == pytest.approx(report["selection_after"])


def test_retrofit_subcommand_method_on_the_trained_checkpoint_matches_the_fit(fitted, tmp_path):
    """LitlabTrainer.retrofit (what `litlab retrofit` runs) from last.ckpt gives the weights of the fit's search."""
    callback = EvolutionaryRetrofit(select="model.head.bias", mode="additive", granularity="channel", scale=0.3,
                                    budget=30, metric="macro_f1", safeguard=False, output_dir=str(tmp_path / "out"))
    trainer = LitlabTrainer(logger=False, callbacks=[callback], default_root_dir=tmp_path, limit_val_batches=1,
                            **QUIET)
    module = MoEImageClassifier(**TINY_VIT)
    datamodule = EmbeddedImageDataModule(dataset="digits", batch_size=32, augment=False)
    result = trainer.retrofit(module, datamodule, ckpt_path=str(fitted["root"] / "ckpt" / "last.ckpt"))
    assert result.history == fitted["retrofit"].result.history
    for name, value in fitted["module"].state_dict().items():
        assert torch.equal(module.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="add an EvolutionaryRetrofit callback to trainer.callbacks"):
        LitlabTrainer(logger=False, **QUIET).retrofit(module, datamodule)


# ---------------------------------------------------------------------------------------------- split


def test_selection_and_heldout_are_disjoint_deterministic_and_shard_without_padding():
    selection, heldout = fraction_split(101, 0.3, seed=4)
    assert len(selection) == 30 and len(heldout) == 71
    assert not set(selection) & set(heldout) and sorted({*selection, *heldout}) == list(range(101))
    again = fraction_split(101, 0.3, seed=4)
    assert np.array_equal(again[0], selection) and np.array_equal(again[1], heldout)
    assert not np.array_equal(fraction_split(101, 0.3, seed=5)[0], selection)
    shards = [shard(selection.tolist(), rank, 4) for rank in range(4)]
    assert sorted(i for part in shards for i in part) == selection.tolist()  # every example once, none repeated
    assert {len(part) for part in shards} <= {7, 8}
    loader = DataLoader(TensorDataset(torch.arange(101)), batch_size=8)
    assert torch.cat([b[0] for b in subset_loader(loader, selection, distributed=False)]).tolist() == selection.tolist()
    with pytest.raises(ConfigError, match="selection_fraction"):
        fraction_split(3, 0.1, seed=0)


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    generator = torch.Generator().manual_seed(0)
    pred, true = torch.randint(0, 6, (200,), generator=generator), torch.randint(1, 5, (200,), generator=generator)
    outputs = [(pred[:70], true[:70]), (pred[70:], true[70:])]
    assert macro_f1(outputs) == pytest.approx(f1_score(true.numpy(), pred.numpy(), average="macro"))


# ---------------------------------------------------------------------------------------------- tiny modules


class Linear(LightningModule):
    """A seeded linear classifier; ``fail_at`` makes the module metric raise at that call (an interruption)."""

    def __init__(self, dim: int = 4, classes: int = 3, seed: int = 0, nan_above: float | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.head = nn.Linear(dim, classes)
        self.other = nn.Linear(dim, dim)
        self.nan_above = nan_above
        self.fail_at: int | None = None
        self.calls = 0
        self.hp = HyperParameters({"shift": (0.0, -2.0, 2.0)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def validation_step(self, batch, batch_idx):
        return None

    def retrofit_scores(self, batch) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("interrupted")
        x, y = batch
        logits = self(x)
        logits[:, 0] += self.hp["shift"]
        scores = (logits.argmax(-1) == y).float()
        if self.nan_above is not None and float(self.head.bias[0]) > self.nan_above:
            scores = scores * float("nan")
        return scores

    def retrofit_hyperparameters(self) -> HyperParameters:
        return self.hp


class Plain(LightningModule):
    """A classifier without the retrofit protocol (no retrofit_scores, no retrofit_hyperparameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def validation_step(self, batch, batch_idx):
        return None


class Data(LightningDataModule):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        self.x, self.y = x, y

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16)


def random_data(n: int = 96, dim: int = 4, classes: int = 3) -> Data:
    generator = torch.Generator().manual_seed(1)
    return Data(torch.randn(n, dim, generator=generator), torch.randint(0, classes, (n,), generator=generator))


def retrofit_run(module: LightningModule, data: LightningDataModule, tmp_path: Path, ckpt_path: str | None = None,
                 **kwargs) -> EvolutionaryRetrofit:
    args = {"select": "head.bias", "mode": "additive", "granularity": "channel", "scale": 0.5, "budget": 40,
            "metric": "module", "safeguard": False, "output_dir": str(tmp_path), **kwargs}
    callback = EvolutionaryRetrofit(**args)
    trainer = LitlabTrainer(logger=False, callbacks=[callback], default_root_dir=tmp_path, **QUIET)
    trainer.retrofit(module, data, ckpt_path=ckpt_path)
    callback.trainer = trainer
    return callback


def test_safeguard_restores_the_trained_model_when_the_heldout_score_drops(tmp_path):
    """Selection examples are labelled 0 and held-out ones 1: what helps selection hurts held-out."""
    n = 40
    selection, _ = fraction_split(n, 0.5, seed=0)
    y = torch.ones(n, dtype=torch.long)
    y[torch.from_numpy(selection)] = 0
    data = Data(torch.zeros(n, 4), y)
    module = Linear(classes=2)
    with torch.no_grad():
        module.head.bias.copy_(torch.tensor([0.0, 0.1]))
    trained = module.head.bias.detach().clone()
    guarded = retrofit_run(module, data, tmp_path / "guarded", metric="top1", safeguard=True)
    result = guarded.result
    assert result.selection_before == 0.0 and result.selection_after == 1.0
    assert result.heldout_before == 1.0 and result.heldout_after == 0.0
    assert guarded.kept is False and torch.equal(module.head.bias, trained)
    assert json.loads(Path(guarded.paths["report"]).read_text())["kept"] is False
    unguarded = retrofit_run(module, data, tmp_path / "unguarded", metric="top1", safeguard=False)
    assert unguarded.kept is True and module.head.bias[0] > module.head.bias[1]


def test_hyperparameters_declared_by_the_module_are_searched(tmp_path):
    module = Linear()
    callback = retrofit_run(module, random_data(), tmp_path, select=None, hyperparameters=True, budget=20)
    assert set(callback.result.best) == {"hyperparameters"}
    assert callback.result.selection_after >= callback.result.selection_before
    assert module.hp["shift"] == callback.result.best["hyperparameters"]["shift"]


def test_nan_fitness_during_the_run_counts_as_worst_and_is_reported(tmp_path):
    module = Linear(nan_above=0.05)
    with torch.no_grad():
        module.head.bias.zero_()
    callback = retrofit_run(module, random_data(), tmp_path, budget=30, scale=1.0)
    assert callback.result.nan_count > 0
    assert json.loads(Path(callback.paths["report"]).read_text())["nan_count"] == callback.result.nan_count
    assert float(module.head.bias.detach()[0]) <= 0.05  # a NaN candidate is never the best


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"optimizer": "OnePlusOnee"}, "optimizer='OnePlusOnee'"), ({"budget": 0}, "budget=0"),
     ({"metric": "f2"}, "metric='f2'"), ({"selection_fraction": 1.5}, "selection_fraction=1.5"),
     ({"selection_fraction": 1.0}, "safeguard"), ({"feedback": "bits"}, "feedback='bits'"),
     ({"select": None}, "nothing to retrofit")],
)
def test_bad_arguments_are_named(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        EvolutionaryRetrofit(**{"select": "head.bias", **kwargs})


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"select": "nope.*"}, "select='nope.*' selects no parameter"),
     ({"metric": "module", "nan_above": -1.0}, "metric='module' on the selection set: .*nan"),
     ({"select": None, "hyperparameters": True, "plain": True}, "retrofit_hyperparameters"),
     ({"metric": "module", "plain": True}, "retrofit_scores")],
)
def test_errors_at_run_time_are_named(tmp_path, kwargs, needle):
    nan_above, plain = kwargs.pop("nan_above", None), kwargs.pop("plain", False)
    module = Plain() if plain else Linear(nan_above=nan_above)
    with pytest.raises(ConfigError, match=needle):
        retrofit_run(module, random_data(), tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------------- resume


def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path):
    data = random_data()
    straight = Linear()
    reference = retrofit_run(straight, data, tmp_path / "straight", checkpoint_every=5)
    assert reference.result.best_index > 0

    # interrupted inside evaluation 22 (3 metric calls per evaluation, after 3 for the held-out score of the
    # identity): state.pt holds the state after evaluation 20
    module = Linear()
    trained = module.head.bias.detach().clone()
    module.fail_at = 3 + 22 * 3  # the last batch of evaluation 22
    callback = EvolutionaryRetrofit(select="head.bias", mode="additive", granularity="channel", scale=0.5, budget=40,
                                    metric="module", safeguard=False, checkpoint_every=5,
                                    output_dir=str(tmp_path / "interrupted"))
    trainer = LitlabTrainer(logger=False, callbacks=[callback], default_root_dir=tmp_path, **QUIET)
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.retrofit(module, data)
    assert torch.equal(module.head.bias, trained)  # the candidate in effect was undone
    state = callback.state_dict()
    assert state["engine"]["num_evaluations"] == 20 and not state["applied"]
    trainer.save_checkpoint(tmp_path / "mid.ckpt")  # a Lightning checkpoint taken after the interruption
    module.fail_at = None

    # (a) from the engine's file: the same output_dir
    resumed = retrofit_run(Linear(), data, tmp_path / "interrupted", checkpoint_every=5)
    # (b) from the callback state of the Lightning checkpoint (another output_dir, no file there)
    from_ckpt = retrofit_run(Linear(), data, tmp_path / "from_ckpt", ckpt_path=str(tmp_path / "mid.ckpt"),
                             checkpoint_every=5)
    for run in (resumed, from_ckpt):
        report = json.loads(Path(run.paths["report"]).read_text())
        assert report["resumed_at_evaluation"] == 20
        assert run.result.history == reference.result.history
        assert run.result.best_json == reference.result.best_json
    for module in (resumed.trainer.lightning_module, from_ckpt.trainer.lightning_module):
        assert torch.equal(module.head.bias, straight.head.bias)


def test_a_finished_applied_state_is_not_applied_twice(tmp_path):
    data = random_data()
    module = Linear()
    first = retrofit_run(module, data, tmp_path / "a")
    retrofitted = module.head.bias.detach().clone()
    first.trainer.save_checkpoint(tmp_path / "after.ckpt")  # weights and callback state, both retrofitted
    assert first.state_dict()["applied"] is True
    again = retrofit_run(Linear(), data, tmp_path / "b", ckpt_path=str(tmp_path / "after.ckpt"))
    assert torch.equal(again.trainer.lightning_module.head.bias, retrofitted)
    assert again.result is None
