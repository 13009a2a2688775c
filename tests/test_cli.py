"""The ``litlab`` command: subcommands, overrides, printed configs, short errors, DDP on 2 CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import yaml

from litlab.cli import TOOLS, main
from litlab.lightning_cli import LitlabCLI

ROOT = Path(__file__).resolve().parent.parent
VIT_MOE = str(ROOT / "configs" / "moe" / "vit_tiny_moe.yaml")


def litlab(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "litlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_print_config_shows_overrides_and_linked_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", VIT_MOE, "--model.init_args.num_experts=16", "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["num_experts"] == 16
    assert config["model"]["class_path"] == "litlab.lightning_modules.MoEImageClassifier"


def test_linked_arguments_reach_the_model(tmp_path):
    cli = LitlabCLI(args=["--config", VIT_MOE, "--data.init_args.img_size=14",
                          f"--trainer.default_root_dir={tmp_path}"], run=False)
    hp = cli.model.hparams
    assert (hp.num_classes, hp.img_size, hp.in_chans) == (10, 14, 1)
    assert cli.model.moe_blocks and all(b.startswith("blocks.") for b in cli.model.moe_blocks)


@pytest.mark.parametrize(
    "override, needle",
    [("--model.init_args.top_k=9", "top_k"),
     ("--model.init_args.placement=middle-2", "placement"),
     ("--data.init_args.val_fraction=1.5", "val_fraction"),
     ("--data.init_args.img_size=16", "img_size=16")],  # 16 px do not split into 7-px patches
)
def test_bad_values_give_one_line_errors(tmp_path, override, needle):
    result = litlab("fit", "--config", VIT_MOE, override, f"--trainer.default_root_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert needle in result.stderr


def test_unknown_key_is_named(tmp_path):
    result = litlab("fit", "--config", VIT_MOE, "--model.init_args.num_expertz=4", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "num_expertz" in result.stderr


@pytest.mark.slow
def test_fit_with_ddp_on_two_cpu_processes_then_test_from_checkpoint(tmp_path):
    fit = litlab(
        "fit", "--config", VIT_MOE, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false", cwd=tmp_path, timeout=400,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpts = sorted(tmp_path.rglob("last.ckpt"))
    assert ckpts, "no checkpoint written"
    png = list(tmp_path.rglob("latest_layers.png"))
    assert len(png) == 1  # written by rank zero only
    test = litlab("test", "--config", VIT_MOE, f"--ckpt_path={ckpts[0]}",
                  "--trainer.limit_test_batches=2", f"--trainer.default_root_dir={tmp_path}", cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/top1" in test.stdout


def test_write_shards_command_then_fit_validate_predict_on_the_shards(tmp_path):
    """`litlab write_shards` output is read by the shard datamodule, end to end through the CLI."""
    from tests.datamodules.conftest import write_image_folder

    src = write_image_folder(tmp_path / "folder", counts={"train": 6, "val": 2}, size=16)
    main(["write_shards", src, str(tmp_path / "shards"), "--shard_size", "5"])
    shards = sorted(p.name for p in (tmp_path / "shards").glob("*.tar"))
    assert shards == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar",
                      "val-000000.tar", "val-000001.tar"]
    data = [
        "--data", "litlab.datamodules.WebDatasetImageDataModule",
        f"--data.init_args.train_shards={tmp_path}/shards/train-{{000000..000003}}.tar",
        f"--data.init_args.val_shards={tmp_path}/shards/val-{{000000..000001}}.tar",
        "--data.init_args.img_size=16", "--data.init_args.batch_size=4", "--data.init_args.augment=false",
    ]
    common = ["--config", VIT_MOE, *data, f"--trainer.default_root_dir={tmp_path / 'run'}",
              "--trainer.enable_progress_bar=false", "--model.init_args.model_kwargs={patch_size: 4}"]
    fit = LitlabCLI(args=["fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3"])
    assert fit.model.hparams.num_classes == 3  # read from the writer's meta.json, linked into the model
    ckpt = str(min((tmp_path / "run").rglob("last.ckpt")))
    validate = LitlabCLI(args=["validate", *common, f"--ckpt_path={ckpt}"])
    assert "val/top1" in validate.trainer.callback_metrics
    predict = LitlabCLI(args=["predict", *common, f"--ckpt_path={ckpt}"])
    assert predict.trainer.state.finished


AUNET2 = str(ROOT / "configs" / "aunet" / "aunet2_tiny.yaml")


@pytest.mark.slow
def test_aunet_fit_with_ddp_on_two_cpu_processes_then_validate_from_checkpoint(tmp_path):
    fit = litlab(
        "fit", "--config", AUNET2, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_steps=3",
        "--trainer.val_check_interval=3", "--trainer.limit_val_batches=2", "--data.init_args.max_bytes=300000",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false", cwd=tmp_path, timeout=400,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "no checkpoint written"
    val = litlab("validate", "--config", AUNET2, f"--ckpt_path={ckpts[0]}", "--data.init_args.max_bytes=300000",
                 "--trainer.limit_val_batches=2", f"--trainer.default_root_dir={tmp_path}", cwd=tmp_path)
    assert val.returncode == 0, val.stderr[-3000:]
    assert "val/bpb" in val.stdout


def test_text_config_errors_name_the_argument(tmp_path):
    result = litlab("fit", "--config", AUNET2, "--data.init_args.source=/no/such/corpus", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "/no/such/corpus" in result.stderr
    result = litlab("fit", "--config", AUNET2, "--model.init_args.pooled_lengths=[96, 48]", cwd=tmp_path)
    assert result.returncode == 2
    assert "pooled_lengths" in result.stderr


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_tool_resolves_and_prints_its_help(name, capsys):
    module, function = TOOLS[name].split(":")
    assert callable(getattr(import_module(module), function))
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code in (0, None)
    assert f"litlab {name}" in capsys.readouterr().out
