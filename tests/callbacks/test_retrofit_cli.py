"""EvolutionaryRetrofit through the `litlab` command: after a DDP fit on 2 CPU processes (same retrofitted weights as
one process), `litlab retrofit` end to end, the one-line error without the callback, the config's smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from litlab.cli import main
from litlab.lightning_cli import LitlabCLI

ROOT = Path(__file__).resolve().parents[2]
RETROFIT_CONFIG = ROOT / "configs" / "retrofit" / "vit_tiny_moe_retrofit.yaml"

TINY = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 4
  limit_train_batches: 40
  limit_val_batches: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/ckpt, save_last: true}}
{retrofit}model:
  class_path: litlab.lightning_modules.MoEImageClassifier
  init_args:
    model_name: test_vit
    num_experts: 4
    top_k: 1
    placement: last-1
    model_kwargs: {{patch_size: 2, depth: 2, embed_dim: 32, num_heads: 2}}
    lr: 3.0e-3
    warmup_epochs: 0
data:
  class_path: litlab.datamodules.EmbeddedImageDataModule
  init_args: {{dataset: digits, batch_size: 32, augment: false}}
"""


RETROFIT = """    - class_path: litlab.callbacks.EvolutionaryRetrofit
      init_args: {{select: model.head.bias, mode: additive, granularity: channel, scale: 0.3, budget: 24,
                  metric: macro_f1, selection_fraction: 0.5, safeguard: false, output_dir: {root}/retrofit}}
"""


def config(tmp_path: Path, name: str, retrofit: bool = True) -> Path:
    path = tmp_path / f"{name}.yaml"
    root = tmp_path / name
    path.write_text(TINY.format(root=root, retrofit=RETROFIT.format(root=root) if retrofit else ""))
    return path


def litlab(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "litlab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`litlab fit` of the tiny config in process: trains, writes last.ckpt, then retrofits on one process."""
    tmp_path = tmp_path_factory.mktemp("retrofit_cli")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        LitlabCLI(args=["fit", "--config", str(config(tmp_path, "one"))])
    finally:
        torch.set_num_threads(threads)
    return tmp_path


def test_ddp_fit_on_two_processes_retrofits_like_one_process(one_process: Path):
    """The fit resumes from the trained last.ckpt (nothing left to train), so both runs retrofit the same weights."""
    tmp_path = one_process
    fit = litlab("fit", "--config", str(config(tmp_path, "ddp")), "--trainer.strategy=ddp", "--trainer.devices=2",
                 f"--ckpt_path={tmp_path / 'one' / 'ckpt' / 'last.ckpt'}", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "retrofit" / "report.json").read_text())
    two = json.loads((tmp_path / "ddp" / "retrofit" / "report.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["history"] == one["history"] and two["num_examples"] == one["num_examples"]
    assert one["best_index"] > 0
    reference, distributed = weights(tmp_path / "one" / "retrofit" / "retrofitted.ckpt"), \
        weights(tmp_path / "ddp" / "retrofit" / "retrofitted.ckpt")
    for name, value in reference.items():
        assert torch.equal(distributed[name], value), name


def test_litlab_retrofit_subcommand_end_to_end(one_process: Path):
    tmp_path = one_process
    run = litlab("retrofit", "--config", str(config(tmp_path, "cli")),
                 f"--ckpt_path={tmp_path / 'one' / 'ckpt' / 'last.ckpt'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "EvolutionaryRetrofit: macro_f1 on selection" in run.stdout + run.stderr
    report = json.loads((tmp_path / "cli" / "retrofit" / "report.json").read_text())
    one = json.loads((tmp_path / "one" / "retrofit" / "report.json").read_text())
    assert report["history"] == one["history"] and report["kept"] is True
    reference, retrofitted = weights(tmp_path / "one" / "retrofit" / "retrofitted.ckpt"), \
        weights(tmp_path / "cli" / "retrofit" / "retrofitted.ckpt")
    for name, value in reference.items():
        assert torch.equal(retrofitted[name], value), name
    assert (tmp_path / "cli" / "retrofit" / "fitness.png").stat().st_size > 1000


def test_retrofit_without_the_callback_is_a_one_line_error(one_process: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["retrofit", "--config", str(config(one_process, "none", retrofit=False)),
              f"--ckpt_path={one_process / 'one' / 'ckpt' / 'last.ckpt'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "add an EvolutionaryRetrofit callback to trainer.callbacks" in err and "Traceback" not in err


def test_retrofit_config_fits_with_fast_dev_run(tmp_path: Path):
    """The tiny config of configs/retrofit fits end to end; under fast_dev_run the search is a 2-evaluation smoke test."""
    cli = LitlabCLI(args=["fit", "--config", str(RETROFIT_CONFIG), "--trainer.fast_dev_run=2",
                          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    callback = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "EvolutionaryRetrofit")
    assert cli.trainer.state.finished and callback.result.num_evaluations == 2
    assert callback.result.space["parameters"]["tensors"] == ["model.head.bias"]
    assert not list(tmp_path.rglob("retrofitted.ckpt"))  # fast_dev_run writes no files
