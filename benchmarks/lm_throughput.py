"""Training throughput in bytes of text per second: AU-Net 2 and 3 vs the BPE Transformer vs the flat byte Transformer.

The four tiny configs under ``configs/aunet`` are matched at ~4.2e6 training FLOPs per byte (see docs/aunet.md),
so bytes/s compares what each architecture makes of the same compute. The models train side by side in one
process on real batches of the embedded corpus (AdamW steps: forward, backward, update), round-robin over
``--rounds`` so that machine noise hits them alike; the median step time of each is reported, and the ratio of
bytes/s to the BPE model (higher is better for AU-Net; the paper's H100 figures are AU-Net 2 / BPE = 1.07,
AU-Net 3 / BPE = 0.86, flat bytes / BPE = 0.22).

``--scale small`` builds ~12-25M-parameter versions matched at ~3e7 FLOPs per byte; ``--scale 100m`` builds ~100M-parameter versions of the four (for the GPU check, with ``--device cuda
--dtype bf16``).

    python benchmarks/lm_throughput.py [--quick] [--device cuda --dtype bf16 --scale 100m]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {n: str(ROOT / "configs" / "aunet" / f"{n}_tiny.yaml") for n in ("aunet2", "aunet3", "bpe", "bytes")}
# ~12-25M-parameter versions at ~3.0-3.1e7 FLOPs per byte, where matrix products dominate the CPU step.
SCALE_SMALL = {
    "aunet2": ["--model.init_args.dims=[128, 384]", "--model.init_args.layers=[2, 6]",
               "--model.init_args.heads=[2, 6]", "--model.init_args.windows=[128, null]",
               "--model.init_args.pooled_lengths=[192]", "--data.init_args.seq_len=512",
               "--model.init_args.ffn_multiple_of=64"],
    "aunet3": ["--model.init_args.dims=[128, 384, 512]", "--model.init_args.layers=[2, 1, 4]",
               "--model.init_args.heads=[2, 6, 8]", "--model.init_args.windows=[128, null, null]",
               "--model.init_args.pooled_lengths=[192, 96]", "--data.init_args.seq_len=512",
               "--model.init_args.ffn_multiple_of=64"],
    "bpe": ["--model.init_args.dim=448", "--model.init_args.layers=6", "--model.init_args.heads=7",
            "--data.init_args.seq_len=160", "--model.init_args.ffn_multiple_of=64"],
    "bytes": ["--model.init_args.dim=256", "--model.init_args.layers=6", "--model.init_args.heads=4",
              "--model.init_args.window=128", "--data.init_args.seq_len=512", "--model.init_args.ffn_multiple_of=64"],
}
# ~100M-parameter versions (dims x4 of the tiny ones at the byte stage, matched FLOPs/byte roughly).
SCALE_100M = {
    "aunet2": ["--model.init_args.dims=[512, 1024]", "--model.init_args.layers=[2, 8]",
               "--model.init_args.heads=[8, 16]", "--model.init_args.windows=[512, null]",
               "--model.init_args.pooled_lengths=[768]", "--data.init_args.seq_len=2048",
               "--model.init_args.ffn_multiple_of=256"],
    "aunet3": ["--model.init_args.dims=[512, 1024, 1536]", "--model.init_args.layers=[2, 2, 6]",
               "--model.init_args.heads=[8, 16, 24]", "--model.init_args.windows=[512, null, null]",
               "--model.init_args.pooled_lengths=[768, 384]", "--data.init_args.seq_len=2048",
               "--model.init_args.ffn_multiple_of=256"],
    "bpe": ["--model.init_args.dim=1024", "--model.init_args.layers=10", "--model.init_args.heads=16",
            "--data.init_args.seq_len=640", "--model.init_args.ffn_multiple_of=256"],
    "bytes": ["--model.init_args.dim=768", "--model.init_args.layers=8", "--model.init_args.heads=12",
              "--model.init_args.window=512", "--data.init_args.seq_len=2048", "--model.init_args.ffn_multiple_of=256"],
}


def build(name: str, bpe_path: str, scale: str, batch_size: int | None) -> tuple[torch.nn.Module, object]:
    from litlab.lightning_cli import LitlabCLI

    args = ["--config", CONFIGS[name], "--trainer.logger=false"]
    if name == "bpe":
        args.append(f"--data.init_args.tokenizer_path={bpe_path}")
    if scale != "tiny":
        args += {"small": SCALE_SMALL, "100m": SCALE_100M}[scale][name]
    if batch_size is not None:
        args.append(f"--data.init_args.batch_size={batch_size}")
    cli = LitlabCLI(args=args, run=False)
    return cli.model, cli.datamodule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--scale", default="tiny", choices=["tiny", "small", "100m"])
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model per round")
    parser.add_argument("--bpe", default="runs/bpe/bench_2048.json", help="BPE file (trained here when missing)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (2 if args.quick else 6)
    if not Path(args.bpe).is_file():
        from litlab.datamodules.bpe_training import train_bpe

        Path(args.bpe).parent.mkdir(parents=True, exist_ok=True)
        train_bpe(output=args.bpe, vocab_size=2048)
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    cases = {}
    for name in CONFIGS:
        torch.manual_seed(0)
        model, data = build(name, args.bpe, args.scale, args.batch_size)
        data.setup("fit")
        batches = [{k: v.to(device) for k, v in b.items()} for b, _ in zip(data.train_dataloader(), range(steps))]
        model.to(device).train()
        net = model.model
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        cases[name] = {"model": model, "net": net, "opt": opt, "batches": batches, "times": [],
                       "bytes": sum(int(b["target_bytes"].sum()) for b in batches),
                       "params": sum(p.numel() for p in net.parameters()), "flops_per_byte": model.flops_per_byte()}

    def run(case: dict) -> float:
        start = time.perf_counter()
        for batch in case["batches"]:
            with autocast:
                loss = case["model"]._token_losses(batch).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(case["net"].parameters(), 0.2)
            case["opt"].step()
            case["opt"].zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for case in cases.values():  # warm-up (allocator, kernels)
        run(case)
    for _ in range(rounds):
        for case in cases.values():
            case["times"].append(run(case))
    base = cases["bpe"]["bytes"] / statistics.median(cases["bpe"]["times"])
    for name, case in cases.items():
        bps = case["bytes"] / statistics.median(case["times"])
        common = {"bench": "lm_throughput", "case": f"{name}_{args.scale}_{args.device}_{args.dtype}"}
        print(json.dumps({**common, "metric": "train_bytes_per_s", "value": round(bps, 1), "unit": "bytes/s",
                          "baseline": "bpe", "ratio_bytes_per_s_vs_bpe": round(bps / base, 3),
                          "params": case["params"], "flops_per_byte": case["flops_per_byte"]}))


if __name__ == "__main__":
    main()
