"""Every paper-scale config under ``configs/moe/paper/`` parses with the CLI and builds on the ``meta`` device.

The ImageNet paths in the configs are placeholders, so the datamodules are never instantiated: each file is
parsed by the ``litlab`` CLI's own parser (which resolves and type-checks every class path and argument of the
trainer, callbacks, model and data sections), then only the model is instantiated, on ``meta``, with the class
count, image size and channels that the CLI would link from the data section. For every MoE config the whole
(E, k) grid of the paper is built. Expected parameter counts are written out here, independently of the
generator and of ``litlab.models.vision.accounting``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from litlab.lightning_cli import LitlabCLI
from litlab.lightning_modules import MoEImageClassifier
from litlab.models.vision.accounting import count_parameters

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "moe" / "paper"
CONFIGS = sorted(PAPER.glob("*/*.yaml"))
GRID = [(e, k) for e in (4, 8, 16) for k in (1, 2)]

# Dense parameter counts at 1000 classes (ViTs with DeiT III's LayerScale: 2C per block more than plain timm).
DENSE_1K = {
    "vit_t": 5_722_024,  # 5.7M
    "vit_s": 22_059_880,  # 22.1M (22,050,664 without LayerScale)
    "vit_b": 86_586_088,  # 86.6M (86,567,656 without LayerScale)
    "convnext_t": 28_589_128,  # 28.6M
    "convnext_s": 50_223_688,  # 50.2M
    "convnext_iso_s": 22_308_712,  # 22.3M (ConvNeXt paper: 22M)
}
# Stage depths and widths: the MoE formula needs the width C of every replaced MLP.
STAGES = {
    "vit_t": ([12], [192]),
    "vit_s": ([12], [384]),
    "vit_b": ([12], [768]),
    "convnext_t": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "convnext_s": ([3, 3, 27, 3], [96, 192, 384, 768]),
    "convnext_iso_s": ([18], [384]),
}
# The paper's placements (V-MoE names, 0-based global block indices).
BLOCKS = {
    12: {"last2": [9, 11], "every2": [1, 3, 5, 7, 9, 11]},
    18: {"last2": [15, 17], "every2": list(range(1, 18, 2))},
    36: {"last2": [33, 35], "every2": list(range(1, 36, 2))},
}
GLOBAL_BATCH = {"vit": 2048, "convnext": 4096}  # DeiT III / ConvNeXt recipes


def _split(path: Path) -> tuple[str, str, str]:
    """(dataset, arch, placement) of ``configs/moe/paper/<dataset>/<arch>_<placement>.yaml``."""
    arch, placement = path.stem.rsplit("_", 1)
    return path.parent.name, arch, placement


def _mlp(c: int) -> int:
    return 8 * c * c + 5 * c


def _width_of_block(arch: str, index: int) -> int:
    depths, dims = STAGES[arch]
    for depth, dim in zip(depths, dims):
        if index < depth:
            return dim
        index -= depth
    raise AssertionError(f"block {index} out of range for {arch}")


def _block_name(arch: str, index: int) -> str:
    depths, _ = STAGES[arch]
    if len(depths) == 1:
        return f"blocks.{index}.mlp"
    stage = 0
    while index >= depths[stage]:
        index -= depths[stage]
        stage += 1
    return f"stages.{stage}.blocks.{index}.mlp"


class _ParseOnly(LitlabCLI):
    """The litlab CLI without instantiating anything: the data paths are placeholders."""

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


@pytest.fixture(scope="module")
def parser():
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when pytest's own arguments are in sys.argv
    try:
        return _ParseOnly(args=["--config", str(CONFIGS[0])], run=False).parser
    finally:
        sys.argv = argv


def _parse(parser, path: Path, *overrides: str):
    return parser.parse_args(["--config", str(path), *overrides])


def _build(cfg, num_classes: int) -> MoEImageClassifier:
    """The model of a parsed config on the meta device, with the values the CLI links from ``data``."""
    assert cfg.model.class_path == "litlab.lightning_modules.MoEImageClassifier"
    data = cfg.data.init_args
    kwargs = dict(cfg.model.init_args)
    kwargs.update(num_classes=num_classes, img_size=data.img_size, in_chans=data.in_chans)
    with torch.device("meta"):
        return MoEImageClassifier(**kwargs)


def test_there_are_36_configs_and_they_match_the_generator():
    spec = importlib.util.spec_from_file_location("paper_configs_generate", PAPER / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = generate  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(generate)
    finally:
        del sys.modules[spec.name]
    expected = generate.expected_files()
    assert sorted(expected) == CONFIGS, "configs/moe/paper holds files the generator does not write (or lacks some)"
    stale = [p.relative_to(ROOT) for p, text in expected.items() if p.read_text() != text]
    assert not stale, f"out of date (run python configs/moe/paper/generate.py): {stale}"
    assert len(CONFIGS) == 2 * 6 * 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_config_builds_on_meta_for_every_experts_top_k(parser, path: Path):
    dataset, arch, placement = _split(path)
    cfg = _parse(parser, path)

    # trainer / data: what the recipes need, and the global batch of the recipe
    trainer, data = cfg.trainer, cfg.data.init_args
    assert (trainer.accelerator, trainer.strategy, trainer.precision) == ("gpu", "ddp", "bf16-mixed")
    family = "vit" if arch.startswith("vit") else "convnext"
    global_batch = data.batch_size * trainer.devices * trainer.num_nodes * trainer.accumulate_grad_batches
    assert global_batch == GLOBAL_BATCH[family]
    assert data.img_size == 224 and data.in_chans == 3
    callbacks = [c.class_path for c in trainer.callbacks]
    assert ("lightning.pytorch.callbacks.EMAWeightAveraging" in callbacks) == (family == "convnext")
    if dataset == "in1k":
        assert cfg.data.class_path == "litlab.datamodules.ImageFolderDataModule"
        num_classes = 1000  # counted from the class folders by the datamodule
    else:
        assert cfg.data.class_path == "litlab.datamodules.WebDatasetImageDataModule"
        num_classes = data.num_classes
        assert num_classes == 21841

    _, dims = STAGES[arch]
    dense = DENSE_1K[arch] + (num_classes - 1000) * (dims[-1] + 1)
    init = cfg.model.init_args
    if placement == "dense":
        assert init.num_experts == 0
        model = _build(cfg, num_classes)
        assert model.moe_blocks == []
        assert sum(p.numel() for p in model.parameters()) == dense
        return

    assert (init.num_experts, init.top_k, init.router, init.capacity_factor) == (8, 2, "linear", None)
    assert init.load_balance_weight == 0.01 and init.placement_scope == "global"
    blocks = BLOCKS[sum(STAGES[arch][0])][placement]
    for e, k in GRID:
        cfg.model.init_args.num_experts, cfg.model.init_args.top_k = e, k
        model = _build(cfg, num_classes)
        assert model.moe_blocks == [_block_name(arch, i) for i in blocks], (e, k)
        widths = [_width_of_block(arch, i) for i in blocks]
        delta = sum((e - 1) * _mlp(c) + c * e for c in widths)
        assert sum(p.numel() for p in model.parameters()) == dense + delta, (e, k)
        activated = dense + sum((k - 1) * _mlp(c) + c * e for c in widths)  # router + k experts per token
        assert count_parameters(model.model)["activated"] == activated, (e, k)
        layers = [model.model.get_submodule(name).moe for name in model.moe_blocks]
        assert all(m.num_experts == e and m.top_k == k for m in layers), (e, k)


def test_documented_experts_top_k_override(parser):
    """The README's command-line override reaches the MoE layers."""
    cfg = _parse(parser, PAPER / "in1k" / "vit_s_last2.yaml",
                 "--model.init_args.num_experts=16", "--model.init_args.top_k=1")
    model = _build(cfg, 1000)
    assert model.moe_blocks == ["blocks.9.mlp", "blocks.11.mlp"]
    moe = model.model.blocks[11].mlp.moe
    assert (moe.num_experts, moe.top_k) == (16, 1)
    c = 384
    assert sum(p.numel() for p in model.parameters()) == DENSE_1K["vit_s"] + 2 * (15 * _mlp(c) + 16 * c)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, model_override",
    [("in1k/vit_t_last2", []), ("in21k/convnext_t_last2", ["--model.init_args.model_name=test_convnext"])],
)
def test_paper_recipe_trains_one_step_on_cpu(name: str, model_override: list[str], tmp_path: Path, monkeypatch):
    """The recipes' parts run together (LAMB + BCE / AdamW + CE, mixup/cutmix, EMA, ExpertUsage), on the
    embedded images at 32 px in place of ImageNet, on the CPU, in float32 (ConvNeXt: timm's tiny
    ``test_convnext`` in place of ConvNeXt-T, to keep the test short; the real models are built on meta above)."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # keep pytest's arguments away from LightningCLI
    cli = LitlabCLI(args=[
        "fit", "--config", str(PAPER / f"{name}.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
        "--trainer.precision=32-true", "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--data=litlab.datamodules.EmbeddedImageDataModule", "--data.dataset=digits", "--data.img_size=32",
        "--data.in_chans=3", "--data.batch_size=4", "--data.num_workers=0", *model_override,
    ])
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert cli.model.moe_blocks
