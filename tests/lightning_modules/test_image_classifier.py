"""MoEImageClassifier: losses, aux-loss accounting, router logging, expert-usage plots, bf16, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from litlab.callbacks import ExpertUsage
from litlab.datamodules import EmbeddedImageDataModule
from litlab.errors import ConfigError
from litlab.lightning_modules import MoEImageClassifier
from litlab.models.moe import collect_aux_loss

TINY_VIT = {"model_name": "test_vit", "num_classes": 10, "img_size": 8, "in_chans": 1,
            "model_kwargs": {"patch_size": 2, "depth": 4, "embed_dim": 32, "num_heads": 2}}


def tiny_module(**kwargs) -> MoEImageClassifier:
    return MoEImageClassifier(**{**TINY_VIT, **kwargs})


def digits(batch_size: int = 32) -> EmbeddedImageDataModule:
    return EmbeddedImageDataModule(dataset="digits", batch_size=batch_size, seed=0)


def test_training_loss_is_task_loss_plus_aux_loss():
    seed_everything(0)
    module = tiny_module(num_experts=4, top_k=2, placement="last-2", load_balance_weight=0.1, z_loss_weight=0.01)
    assert module.moe_blocks == ["blocks.1.mlp", "blocks.3.mlp"] or len(module.moe_blocks) == 2
    images, labels = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    module.train()
    loss = module.training_step((images, labels), 0)
    aux = collect_aux_loss(module.model)
    task = torch.nn.functional.cross_entropy(module.model(images), labels, label_smoothing=0.1)
    # the second forward re-routes the same tokens identically (no noise), so the aux loss is the same
    assert aux.item() > 0
    torch.testing.assert_close(loss, task + collect_aux_loss(module.model))


def test_bce_loss_matches_smoothed_one_hot():
    module = tiny_module(loss="bce", label_smoothing=0.1)
    logits, labels = torch.randn(4, 10), torch.tensor([0, 3, 9, 3])
    target = torch.full((4, 10), 0.01)
    target[torch.arange(4), labels] = 0.91
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(module._task_loss(logits, labels), expected)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"lr": 0.0}, "lr"), ({"label_smoothing": 1.5}, "label_smoothing"), ({"num_experts": -1}, "num_experts"),
     ({"loss": "hinge"}, "loss"), ({"optimizer": "sgdx"}, "optimizer"), ({"drop_path_rate": 1.0}, "drop_path_rate")],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        tiny_module(**kwargs)


def test_fit_logs_router_stats_and_writes_expert_usage_plots(tmp_path: Path):
    seed_everything(0)
    module = tiny_module(num_experts=4, top_k=1, placement="every-2", mixup_alpha=0.8, cutmix_alpha=1.0)
    usage = ExpertUsage()
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=4, limit_val_batches=3, default_root_dir=tmp_path,
        callbacks=[usage], enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=digits())
    metrics = trainer.callback_metrics
    assert "train/aux_loss" in metrics and torch.isfinite(metrics["train/loss"])
    assert any(k.startswith("router/blocks_1_mlp/") for k in metrics)
    assert set(usage.usage) == {"blocks.1.mlp", "blocks.3.mlp"}
    for share in usage.usage.values():
        assert len(share) == 4 and abs(sum(share) - 1) < 1e-5
    assert len(usage.paths) == 2 and all(Path(p).stat().st_size > 1000 for p in usage.paths)


def test_bf16_mixed_precision_fit(tmp_path: Path):
    module = tiny_module(num_experts=4, top_k=2)
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", fast_dev_run=2, default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=digits())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_resume_from_checkpoint_continues_the_run(tmp_path: Path):
    """Two epochs in one go give the same weights as one epoch, a checkpoint, and one more epoch resumed."""

    def run(max_epochs: int, ckpt_path: str | None, root: Path) -> tuple[MoEImageClassifier, Trainer]:
        seed_everything(0)
        module = tiny_module(num_experts=4, top_k=2)
        trainer = Trainer(accelerator="cpu", max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=1,
                          default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
                          deterministic=True)
        trainer.fit(module, datamodule=digits(), ckpt_path=ckpt_path)
        return module, trainer

    straight, _ = run(2, None, tmp_path / "a")
    run(1, None, tmp_path / "b")
    ckpt = tmp_path / "b" / "ckpt" / "last.ckpt"
    assert ckpt.exists()
    assert "moe_blocks" in torch.load(ckpt, weights_only=False)
    resumed, trainer = run(2, str(ckpt), tmp_path / "c")
    assert trainer.global_step == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_ema_of_weights_with_lightnings_callback(tmp_path: Path):
    """EMA of the weights (the ConvNeXt recipe) is Lightning's EMAWeightAveraging; it averages the experts too."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    seed_everything(0)
    module = tiny_module(num_experts=4, top_k=2)
    ema = EMAWeightAveraging(decay=0.5)
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=1,
                      default_root_dir=tmp_path, callbacks=[ema], enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(module, datamodule=digits())
    averaged = dict(ema._average_model.module.named_parameters())
    experts = [n for n in averaged if "experts.fc1_weight" in n]
    assert len(experts) == 2
    for name, p in module.named_parameters():
        torch.testing.assert_close(p, averaged[name])  # the averaged weights were swapped in at the end of fit
