"""Write the paper-scale MoE configs of ``configs/moe/paper/`` (or check that they are up to date).

    python configs/moe/paper/generate.py            # (re)write the 36 YAML files
    python configs/moe/paper/generate.py --check    # exit 1 if a file differs from what would be written

One file per (dataset, architecture, placement): ``{in1k,in21k}/{arch}_{dense,last2,every2}.yaml``, each a
complete LightningCLI config that runs as is (after editing the data paths). The MoE files use the paper's
default E=8, k=2; the other (E, k) are command-line overrides (see README.md). The recipes and every choice
made where the sources are silent are documented in ``docs/moe_paper_configs.md``; ``tests/test_paper_configs.py``
checks that the committed files equal this script's output and that every config builds (on the meta device).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

DATASETS = ("in1k", "in21k")
PLACEMENTS = ("dense", "last2", "every2")
#: E and k of the paper's grid (the files use E=8, k=2).
NUM_EXPERTS = (4, 8, 16)
TOP_K = (1, 2)
#: ImageNet-21k classes of the full fall11 release (as used by DeiT III and ConvNeXt); 10450 for winter21k-P.
IN21K_CLASSES = 21841


@dataclass(frozen=True)
class Arch:
    """One architecture of the paper and its dense training recipe."""

    key: str  # file-name prefix
    title: str  # human name
    model_name: str  # timm name
    family: str  # "vit" (DeiT III recipe) or "convnext" (ConvNeXt recipe)
    depth: int  # blocks over all stages
    lr: float
    drop_path: dict[str, float]  # per dataset
    model_kwargs: str = "{}"  # YAML flow mapping
    model_kwargs_comment: str = ""


ARCHS = (
    Arch("vit_t", "ViT-T/16", "vit_tiny_patch16_224", "vit", 12, 4e-3, {"in1k": 0.0, "in21k": 0.0},
         "{init_values: 1.0e-4}", "LayerScale init 1e-4, as DeiT III's ViTs"),
    Arch("vit_s", "ViT-S/16", "vit_small_patch16_224", "vit", 12, 4e-3, {"in1k": 0.05, "in21k": 0.05},
         "{init_values: 1.0e-4}", "LayerScale init 1e-4, as DeiT III's ViTs"),
    Arch("vit_b", "ViT-B/16", "vit_base_patch16_224", "vit", 12, 3e-3, {"in1k": 0.1, "in21k": 0.1},
         "{init_values: 1.0e-4}", "LayerScale init 1e-4, as DeiT III's ViTs"),
    Arch("convnext_t", "ConvNeXt-T", "convnext_tiny", "convnext", 18, 4e-3, {"in1k": 0.1, "in21k": 0.0},
         "{}", "timm defaults: layer scale 1e-6, head init scale 1.0, NHWC linear MLPs"),
    Arch("convnext_s", "ConvNeXt-S", "convnext_small", "convnext", 36, 4e-3, {"in1k": 0.4, "in21k": 0.0},
         "{}", "timm defaults: layer scale 1e-6, head init scale 1.0, NHWC linear MLPs"),
    Arch("convnext_iso_s", "ConvNeXt-S (iso.)", "convnext_isotropic_small", "convnext", 18, 4e-3,
         {"in1k": 0.1, "in21k": 0.0}, "{}", "no layer scale, as the ConvNeXt paper's isotropic models"),
)

@dataclass(frozen=True)
class Recipe:
    """Training schedule of one (family, dataset)."""

    name: str
    source: str
    epochs: int
    warmup: int
    per_device_batch: int
    devices: int
    num_nodes: int
    accumulate: int
    optimizer: str
    min_lr: float
    loss: str
    label_smoothing: float
    ema: bool

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.devices * self.num_nodes * self.accumulate


RECIPES = {
    ("vit", "in1k"): Recipe("DeiT III", "DeiT III (Touvron et al. 2022), ImageNet-1k from scratch", 800, 5,
                            256, 8, 1, 1, "lamb", 1e-5, "bce", 0.0, False),
    ("vit", "in21k"): Recipe("DeiT III", "DeiT III, ImageNet-21k pre-training (90-epoch schedule)", 90, 5,
                             256, 8, 1, 1, "lamb", 1e-5, "bce", 0.0, False),
    ("convnext", "in1k"): Recipe("ConvNeXt", "ConvNeXt (Liu et al. 2022), ImageNet-1k from scratch", 300, 20,
                                 128, 8, 1, 4, "adamw", 1e-6, "ce", 0.1, True),
    ("convnext", "in21k"): Recipe("ConvNeXt", "ConvNeXt, ImageNet-22k pre-training", 90, 5,
                                  128, 8, 1, 4, "adamw", 1e-6, "ce", 0.1, True),
}


def moe_blocks(arch: Arch, placement: str) -> list[int]:
    """The global block indices that get an MoE (V-MoE semantics over all blocks, scope ``global``)."""
    if placement == "dense":
        return []
    odd = list(range(1, arch.depth, 2))  # every-2 = range(1, L, 2); last-2 = its last two
    return odd[-2:] if placement == "last2" else odd


def _float(x: float) -> str:
    """A YAML float that every YAML 1.1 loader reads as a float: ``4.0e-3``, ``0.05``, ``1.0`` (never ``4e-3``)."""
    text = f"{float(x):.10g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}e{int(exp)}"
    return text if "." in text else text + ".0"


def render(dataset: str, arch: Arch, placement: str) -> str:
    """The YAML text of one config."""
    recipe = RECIPES[(arch.family, dataset)]
    stem = f"{arch.key}_{placement}"
    rel = f"configs/moe/paper/{dataset}/{stem}.yaml"
    blocks = moe_blocks(arch, placement)
    if placement == "dense":
        what = f"Dense {arch.title}"
    else:
        rule = "Last-2" if placement == "last2" else "Every-2"
        what = f"{arch.title} with MoE MLPs (E=8, k=2, {rule}: blocks {blocks})"
    task = "trained from scratch on ImageNet-1k (paper Tab. 12)" if dataset == "in1k" else \
        "pre-trained on ImageNet-21k (paper Tab. 2 pre-training stage)"
    lr_note = f"lr {_float(arch.lr)} is for this global batch; scale it linearly if you change the batch"
    lines = [
        f"# {what}, {task}; {recipe.name} recipe.",
        '# Paper: "Mixture of Experts for Image Classification: What\'s the Sweet Spot?" (arXiv 2411.18322).',
        f"# Run:   litlab fit --config {rel}",
    ]
    if placement != "dense":
        lines.append("# E, k:  add --model.init_args.num_experts=16 --model.init_args.top_k=1  (grid: E in {4, 8, 16}, k in {1, 2})")
    lines += [
        (f"# Batch: {recipe.global_batch} = {recipe.per_device_batch} per GPU x {recipe.devices} GPUs x "
        f"{recipe.num_nodes} node(s) x accumulate {recipe.accumulate}; {lr_note}."),
        "# Written by configs/moe/paper/generate.py (edit the script, then rerun it); recipe notes: docs/moe_paper_configs.md",
        "seed_everything: 0",
        "trainer:",
        "  accelerator: gpu",
        "  strategy: ddp",
        f"  devices: {recipe.devices}",
        f"  num_nodes: {recipe.num_nodes}",
        "  precision: bf16-mixed",
        f"  max_epochs: {recipe.epochs}",
        f"  accumulate_grad_batches: {recipe.accumulate}",
        "  log_every_n_steps: 100",
        f"  default_root_dir: runs/moe/paper/{dataset}/{stem}",
        "  callbacks:",
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint",
        '      init_args: {monitor: val/top1, mode: max, save_last: true, filename: "best-{epoch}"}',
        "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor",
        "      init_args: {logging_interval: step}",
    ]
    if recipe.ema:
        lines += [
            "    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging  # model EMA of the ConvNeXt recipe",
            "      init_args: {decay: 0.9999}",
        ]
    if placement != "dense":
        lines.append("    - class_path: litlab.callbacks.ExpertUsage")
    lines += [
        "model:",
        "  class_path: litlab.lightning_modules.MoEImageClassifier",
        "  init_args:",
        f"    model_name: {arch.model_name}",
        f"    model_kwargs: {arch.model_kwargs}  # {arch.model_kwargs_comment}",
        f"    drop_path_rate: {_float(arch.drop_path[dataset])}",
    ]
    if placement == "dense":
        lines.append("    num_experts: 0  # dense")
    else:
        lines += [
            "    num_experts: 8",
            "    top_k: 2",
            f"    placement: {'last-2' if placement == 'last2' else 'every-2'}",
            "    placement_scope: global  # block indices count over all blocks of all stages",
            "    router: linear",
            "    expert_width: full",
            "    expert_activation: gelu",
            "    renormalize: false",
            "    router_noise: 0.0",
            "    capacity_factor: null  # dropless",
            "    eval_capacity_factor: null",
            "    load_balance_weight: 0.01",
            "    z_loss_weight: 0.0",
        ]
    lines += [
        f"    loss: {recipe.loss}",
        f"    label_smoothing: {_float(recipe.label_smoothing)}",
        f"    optimizer: {recipe.optimizer}",
        f"    lr: {_float(arch.lr)}",
        "    weight_decay: 0.05",
        f"    warmup_epochs: {recipe.warmup}",
        f"    min_lr_ratio: {_float(round(recipe.min_lr / arch.lr, 8))}  # final lr {_float(recipe.min_lr)}",
        "    mixup_alpha: 0.8",
        "    cutmix_alpha: 1.0",
        "    mixup_prob: 1.0",
        "data:",
    ]
    if dataset == "in1k":
        lines += [
            "  class_path: litlab.datamodules.ImageFolderDataModule",
            "  init_args:",
            "    root: /data/imagenet  # EDIT: holds train/ and val/ with the 1000 class folders (num_classes is counted)",
        ]
    else:
        lines += [
            "  class_path: litlab.datamodules.WebDatasetImageDataModule",
            "  init_args:",
            "    train_shards: /data/imagenet21k-shards/train-{000000..002047}.tar  # EDIT",
            "    val_shards: /data/imagenet21k-shards/val-{000000..000015}.tar  # EDIT: a held-out split",
            f"    num_classes: {IN21K_CLASSES}  # full fall11 release; 10450 for winter21k-P (ImageNet-21K-P)",
            "    train_samples: null  # from meta.json of write_image_shards, else counted in setup",
            "    shuffle_buffer: 5000",
        ]
    lines += [
        "    img_size: 224",
        "    in_chans: 3",
        "    augment: true",
        f"    batch_size: {recipe.per_device_batch}  # per GPU",
        "    num_workers: 10",
        "    seed: 0",
    ]
    return "\n".join(lines) + "\n"


def expected_files() -> dict[Path, str]:
    """Every config path (absolute) and its text."""
    return {
        HERE / dataset / f"{arch.key}_{placement}.yaml": render(dataset, arch, placement)
        for dataset in DATASETS for arch in ARCHS for placement in PLACEMENTS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(HERE)}", file=sys.stderr)
        return 1 if stale else 0
    print(f"wrote {len(stale)} file(s), {len(expected_files()) - len(stale)} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
