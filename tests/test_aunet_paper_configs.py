"""Every AU-Net paper config builds on the meta device, with the parameter count of the accounting formulas."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from litlab.datamodules import TextDataModule
from litlab.lightning_modules import AUNetLM, TransformerLM
from litlab.models.lm.accounting import aunet_param_counts, flat_param_counts

ROOT = Path(__file__).resolve().parent.parent
PAPER = sorted((ROOT / "configs" / "aunet" / "paper").glob("*.yaml"))
# Parameters in billions we expect (Table 9's size classes; the 2B references as released).
EXPECTED_B = {"aunet2_1b": (0.9, 1.1), "aunet3_1b": (2.3, 2.7), "aunet4_1b": (4.0, 4.4), "aunet2_8b": (6.4, 6.8),
              "ref_2b_1level": (1.2, 1.4), "ref_2b_2level": (2.3, 2.7), "bpe_1b": (1.4, 1.6)}


def build_on_meta(path: Path):
    config = yaml.safe_load(path.read_text())
    model_cfg, data_cfg = config["model"], config["data"]["init_args"]
    data_params = inspect.signature(TextDataModule.__init__).parameters
    assert set(data_cfg) <= set(data_params), f"{path.name}: unknown data arguments"
    cls = {"litlab.lightning_modules.AUNetLM": AUNetLM, "litlab.lightning_modules.TransformerLM": TransformerLM}[
        model_cfg["class_path"]]
    args = {**model_cfg["init_args"], "seq_len": data_cfg["seq_len"]}
    with torch.device("meta"):
        return cls(**args), args


def test_every_paper_config_is_listed():
    assert {p.stem for p in PAPER} == set(EXPECTED_B)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_builds_on_meta_with_the_expected_size(path: Path):
    model, args = build_on_meta(path)
    params = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    if isinstance(model, AUNetLM):
        expected = aunet_param_counts(args["dims"], args["layers"], ffn_multiple_of=args["ffn_multiple_of"])["total"]
        assert model.max_lengths() == [args["seq_len"], *args["pooled_lengths"]]
    else:
        expected = flat_param_counts(args["dim"], args["layers"], args["vocab_size"], args["ffn_multiple_of"],
                                     args.get("ffn_multiplier"))["total"]
    assert params == expected
    low, high = EXPECTED_B[path.stem]
    assert low <= params / 1e9 <= high
    assert 1e9 < model.flops_per_byte() < 3e10
