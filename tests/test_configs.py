"""Every tiny config under configs/ fits end to end with fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from litlab.lightning_cli import LitlabCLI

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIGS = sorted((ROOT / "configs" / "moe").glob("*.yaml")) + sorted((ROOT / "configs" / "aunet").glob("*.yaml"))


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The BPE of the bpe config, trained here on the embedded corpus's train split (as its header says)."""
    from litlab.datamodules import train_bpe

    return train_bpe(output=str(tmp_path_factory.mktemp("bpe") / "bpe.json"), vocab_size=2048)


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_tiny_config_fits_with_fast_dev_run(config: Path, tmp_path: Path, request: pytest.FixtureRequest):
    extra = []
    if "tokenizer: bpe" in config.read_text():
        extra.append(f"--data.init_args.tokenizer_path={request.getfixturevalue('bpe_path')}")
    cli = LitlabCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run=2", *extra,
                          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    if config.parent.name == "moe" and cli.model.hparams.num_experts > 0:
        assert cli.model.moe_blocks
    if config.parent.name == "aunet":  # values linked from the data reached the model
        assert cli.model.hparams.seq_len == cli.datamodule.seq_len
        assert cli.model.model.vocab_size == cli.datamodule.vocab_size
