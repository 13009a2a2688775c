"""Training throughput (images/s) of the tiny MoE ViT vs the dense ViT of the demo configs, side by side.

Each step is forward + loss (task + aux) + backward + AdamW step on a batch of random images of the configs'
size, the two models interleaved so that machine noise hits both alike. Prints JSON lines
(``time_ratio_vs_dense``: MoE step time / dense step time, lower is better).

    .venv/bin/python benchmarks/train_throughput.py [--steps 30] [--batch-size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from litlab.lightning_modules import MoEImageClassifier
from litlab.models.moe import collect_aux_loss

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "moe"


def build(config: str, device: str) -> tuple[MoEImageClassifier, torch.optim.Optimizer]:
    args = yaml.safe_load((CONFIGS / config).read_text())["model"]["init_args"]
    module = MoEImageClassifier(num_classes=10, img_size=28, in_chans=1, **args).to(device)
    return module, torch.optim.AdamW(module.parameters(), lr=1e-3)


def step(module: MoEImageClassifier, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    logits = module.model(images)
    loss = torch.nn.functional.cross_entropy(logits, labels) + collect_aux_loss(module.model)
    loss.backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    peers = {"dense": build("vit_tiny_dense.yaml", args.device), "moe": build("vit_tiny_moe.yaml", args.device)}
    images = torch.randn(args.batch_size, 1, 28, 28, device=args.device)
    labels = torch.randint(0, 10, (args.batch_size,), device=args.device)
    times: dict[str, list[float]] = {name: [] for name in peers}
    for i in range(args.warmup + args.steps):
        for name, (module, opt) in peers.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(module, opt, images, labels)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in peers:
        print(json.dumps({"bench": "train_throughput", "case": f"vit_tiny_{name}_b{args.batch_size}_{args.device}",
                          "metric": "images_per_s", "value": round(args.batch_size / median[name], 1),
                          "unit": "images/s", "baseline": None, "ratio": None}))
    print(json.dumps({"bench": "train_throughput", "case": f"vit_tiny_moe_vs_dense_b{args.batch_size}_{args.device}",
                      "metric": "time_ratio_vs_dense", "value": round(median["moe"], 5), "unit": "s/step",
                      "baseline": round(median["dense"], 5), "ratio": round(median["moe"] / median["dense"], 3)}))


if __name__ == "__main__":
    main()
