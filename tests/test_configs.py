"""Every tiny config under configs/ fits end to end with fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from litlab.lightning_cli import LitlabCLI

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIGS = [path for family in ("moe", "aunet", "lm") for path in sorted((ROOT / "configs" / family).glob("*.yaml"))]


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The BPE of the bpe config, trained here on the embedded corpus's train split (as its header says)."""
    from litlab.datamodules import train_bpe

    return train_bpe(output=str(tmp_path_factory.mktemp("bpe") / "bpe.json"), vocab_size=2048)


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_tiny_config_fits_with_fast_dev_run(config: Path, tmp_path: Path, request: pytest.FixtureRequest):
    extra = []
    text = config.read_text()
    if "tokenizer: bpe" in text:
        extra.append(f"--data.init_args.tokenizer_path={request.getfixturevalue('bpe_path')}")
    if "procedural_math" in text:  # fewer problems: the same format, a faster set-up
        extra.append("--data.init_args.source=procedural_math:num_train=600,num_selection=10,num_test=10")
    if "HFExport" in text:  # the export goes to the test's directory, not to the config's
        extra.append('--trainer.callbacks=[{"class_path": "litlab.callbacks.HFExport", '
                     f'"init_args": {{"output_dir": "{tmp_path / "hf"}"}}}}]')
    cli = LitlabCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run=2", *extra,
                          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    if config.parent.name == "moe" and cli.model.hparams.num_experts > 0:
        assert cli.model.moe_blocks
    if "HFExport" in text:
        assert (tmp_path / "hf" / "model.safetensors").is_file()
    if config.parent.name in ("aunet", "lm"):  # values linked from the data reached the model
        assert cli.model.hparams.seq_len == cli.datamodule.seq_len
        assert cli.model.model.vocab_size == cli.datamodule.vocab_size


def test_winter_soldier_configs_fit_with_fast_dev_run(tmp_path: Path, bpe_path: str):
    """The victim config on a poisoned corpus, and the crafting config on a tiny surrogate."""
    from litlab.poisoning.injection import write_poisons
    from tests.poisoning.tiny import tiny_lm, tiny_secrets

    poisons = write_poisons(str(tmp_path / "poisons.jsonl"), [b"zq zq poison one", b"another gibberish poison"])
    cli = LitlabCLI(args=["fit", "--config", str(ROOT / "configs" / "winter_soldier" / "lm_tiny.yaml"),
                          "--trainer.fast_dev_run=2", f"--data.init_args.tokenizer_path={bpe_path}",
                          f"--data.init_args.poisons={poisons}", "--data.init_args.poison_rate=0.01",
                          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished and cli.datamodule.injection.insertions > 0
    model, ckpt = tiny_lm(tmp_path)
    secrets = tiny_secrets(tmp_path, model)
    cli = LitlabCLI(args=["fit", "--config", str(ROOT / "configs" / "winter_soldier" / "craft_tiny.yaml"),
                          "--trainer.fast_dev_run=2", f"--model.init_args.surrogate={ckpt}",
                          f"--model.init_args.secrets={secrets}", f"--model.init_args.output={tmp_path / 'p.jsonl'}",
                          "--model.init_args.poisons_per_secret=2", f"--trainer.default_root_dir={tmp_path}",
                          "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["craft/objective"])
    assert (tmp_path / "p.jsonl").is_file()
