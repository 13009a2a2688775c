"""Every tiny config under configs/ fits end to end with fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from litlab.cli import LitlabCLI

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIGS = sorted((ROOT / "configs" / "moe").glob("*.yaml"))


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda p: p.stem)
def test_tiny_config_fits_with_fast_dev_run(config: Path, tmp_path: Path):
    cli = LitlabCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run=2",
                          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    if cli.model.hparams.num_experts > 0:
        assert cli.model.moe_blocks
