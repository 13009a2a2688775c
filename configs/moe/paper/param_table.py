"""Print the markdown tables of docs/moe_paper_configs.md: parameters and FLOPs of every paper config.

    .venv/bin/python configs/moe/paper/param_table.py            # both tables (about a minute on 2 CPU cores)
    .venv/bin/python configs/moe/paper/param_table.py --no-grid  # only the per-file table

Each YAML file is parsed by the ``litlab`` CLI's parser (nothing is instantiated, so the placeholder data paths
need not exist), its model is built on the ``meta`` device with the class count the data section gives
(1000 for the ImageNet-1k folder, ``num_classes`` of the ImageNet-21k shards), and
:func:`litlab.models.vision.accounting.summarize` counts total and activated parameters and forward FLOPs per
224x224 image (multiply-add = 2 FLOPs; divide by 2 for the "GMACs" most vision papers call FLOPs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
GRID_E = (4, 8, 16)
GRID_K = (1, 2)


def _parser():
    from litlab.lightning_cli import LitlabCLI

    class ParseOnly(LitlabCLI):
        def instantiate_classes(self) -> None:
            pass

        def after_instantiate_classes(self) -> None:
            pass

    first = min(HERE.glob("*/*.yaml"))
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return ParseOnly(args=["--config", str(first)], run=False).parser
    finally:
        sys.argv = argv


def _summary(cfg, **overrides) -> dict:
    from litlab.lightning_modules import MoEImageClassifier

    data = cfg.data.init_args
    num_classes = data.num_classes if "num_classes" in data and data.num_classes else 1000
    kwargs = dict(cfg.model.init_args)
    kwargs.update(overrides, num_classes=num_classes, img_size=data.img_size, in_chans=data.in_chans)
    with torch.device("meta"):
        module = MoEImageClassifier(**kwargs)
    return module.summary()


def _indices(blocks: list[str]) -> str:
    """``blocks.9.mlp, blocks.11.mlp`` -> ``9, 11``; ``stages.3.blocks.0.mlp`` -> ``s3.0``."""
    out = []
    for name in blocks:
        parts = name.split(".")
        out.append(parts[1] if parts[0] == "blocks" else f"s{parts[1]}.{parts[3]}")
    return ", ".join(out) if out else "-"


def file_table(parser) -> str:
    rows = [
        "| config | timm model | MoE blocks | total params | activated params | GFLOPs/image | dense GFLOPs |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for path in sorted(HERE.glob("*/*.yaml")):
        cfg = parser.parse_args(["--config", str(path)])
        s = _summary(cfg)
        rows.append(
            f"| `{path.relative_to(HERE)}` | `{cfg.model.init_args.model_name}` | {_indices(s['moe_blocks'])} "
            f"| {s['total_params'] / 1e6:.2f}M | {s['activated_params'] / 1e6:.2f}M "
            f"| {s['flops_per_image'] / 1e9:.2f} | {s['dense_flops_per_image'] / 1e9:.2f} |"
        )
    return "\n".join(rows)


def grid_table(parser, dataset: str = "in1k") -> str:
    head = " | ".join(f"total E={e}" for e in GRID_E)
    act = " | ".join(f"activated k={k} (E=8)" for k in GRID_K)
    flops = " | ".join(f"GFLOPs k={k} (E=8)" for k in GRID_K)
    rows = [f"| config | {head} | {act} | {flops} |", "|---|" + "---:|" * (len(GRID_E) + 2 * len(GRID_K))]
    for path in sorted((HERE / dataset).glob("*.yaml")):
        if path.stem.endswith("_dense"):
            continue
        cfg = parser.parse_args(["--config", str(path)])
        totals = [_summary(cfg, num_experts=e, top_k=2)["total_params"] for e in GRID_E]  # k does not change it
        by_k = [_summary(cfg, num_experts=8, top_k=k) for k in GRID_K]
        cells = [f"{t / 1e6:.2f}M" for t in totals]
        cells += [f"{s['activated_params'] / 1e6:.2f}M" for s in by_k]
        cells += [f"{s['flops_per_image'] / 1e9:.2f}" for s in by_k]
        rows.append(f"| `{path.relative_to(HERE)}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--no-grid", action="store_true", help="skip the (E, k) grid table")
    opts = args.parse_args(argv)
    parser = _parser()
    print(file_table(parser))
    if not opts.no_grid:
        print()
        print(grid_table(parser))
    return 0


if __name__ == "__main__":
    sys.exit(main())
