"""Multi-linear upsampling benchmark: forward + backward of our back ends against the reference's loop.

Usage:
    python benchmarks/upsampling.py            # B=8, T=1024, widths 256<-512 and 512<-1024 (the docs' figures)
    python benchmarks/upsampling.py --quick    # tiny sizes, a few seconds
    python benchmarks/upsampling.py --device cuda --dtype bf16

Boundaries are real: level-1 boundaries (``split_levels``) of CPython's ``pydoc_data.topics`` text, cut in
windows of T bytes; the pooled length is ``T·3200/8192`` (the stage-1 length ratio of the reference's
``2B_1level`` config). Peers, all computing the same function with the same weights:

* ``folded`` (ours, default): one matmul of the pooled sequence with the P=16 folded matrices, then a gather;
* ``grouped_mm`` (ours, option): fine positions sorted by offset, one ``F.grouped_mm``, un-permute;
* ``reference_loop`` (baseline): lingua's algorithm — gather to the fine positions, ``W_up``, then a Python
  loop over the 16 offsets with ``torch.where`` (a host sync each).

CPU runs use ``--threads`` torch threads (default 1: small ops on a busy shared machine are otherwise
dominated by thread synchronisation). Prints one JSON object per line: times are medians of ``--repeats`` runs after a warm-up, peers interleaved;
``ratio = ours / baseline`` (lower is better); ``max_abs_diff`` lines compare outputs and input gradients.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from litlab.models.lm.pooling import pooling_plan
from litlab.models.lm.upsampling import MultiLinearUpsampling, reference_upsample
from litlab.text import split_levels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def real_levels(batch: int, length: int) -> torch.Tensor:
    import pydoc_data.topics

    data = "\n".join(pydoc_data.topics.topics.values()).encode("utf-8")[: batch * length * 2]
    levels = split_levels(data, word_groups=(1,), causal=True)
    return torch.from_numpy(np.asarray(levels[: batch * length], dtype=np.int64)).view(batch, length)


def emit(case: str, metric: str, value: float, unit: str, baseline: float | None = None) -> None:
    ratio = None if baseline in (None, 0) else value / baseline
    print(json.dumps({"bench": "upsampling", "case": case, "metric": metric, "value": value, "unit": unit,
                      "baseline": baseline, "ratio": ratio}), flush=True)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_case(batch: int, length: int, d_fine: int, d_coarse: int, device: torch.device, dtype_name: str,
               repeats: int) -> None:  # fmt: skip
    dtype = DTYPES[dtype_name]
    case = f"B={batch},T={length},d={d_fine}<-{d_coarse},{dtype_name},{device.type}"
    pooled = length * 3200 // 8192
    plan = pooling_plan(real_levels(batch, length).to(device), [pooled])
    coarse, offset = plan.coarse_index[0], plan.offset[0]
    torch.manual_seed(0)
    modules = {impl: MultiLinearUpsampling(d_coarse, d_fine, impl=impl).to(device, dtype)
               for impl in ("folded", "grouped_mm")}  # fmt: skip
    modules["grouped_mm"].load_state_dict(modules["folded"].state_dict())
    y = torch.randn(batch, pooled, d_coarse, device=device, dtype=dtype)
    grad_out = torch.randn(batch, length, d_fine, device=device, dtype=dtype)
    peers = {
        "folded": lambda yy: modules["folded"](yy, coarse, offset),
        "grouped_mm": lambda yy: modules["grouped_mm"](yy, coarse, offset),
        "reference_loop": lambda yy: reference_upsample(modules["folded"], yy, coarse, offset),
    }
    outputs, times = {}, {name: [] for name in peers}

    def run(name: str) -> float:
        yy = y.clone().requires_grad_(True)
        sync(device)
        start = time.perf_counter()
        out = peers[name](yy)
        out.backward(grad_out)
        sync(device)
        elapsed = time.perf_counter() - start
        outputs[name] = (out.detach().float(), yy.grad.float())
        return elapsed

    for name in peers:  # warm-up
        run(name)
    for r in range(repeats):
        order = list(peers) if r % 2 == 0 else list(reversed(peers))
        for name in order:
            times[name].append(run(name))
    base = statistics.median(times["reference_loop"])
    emit(case, "fwd_bwd_time_reference_loop", base, "s")
    for name in ("folded", "grouped_mm"):
        emit(case, f"fwd_bwd_time_{name}", statistics.median(times[name]), "s", base)
        diff_out = (outputs[name][0] - outputs["reference_loop"][0]).abs().max().item()
        diff_grad = (outputs[name][1] - outputs["reference_loop"][1]).abs().max().item()
        emit(case, f"max_abs_diff_out_{name}_vs_reference", diff_out, "abs")
        emit(case, f"max_abs_diff_grad_{name}_vs_reference", diff_grad, "abs")
    boundaries = plan.counts.float().mean().item()
    emit(case, "pooled_vectors_per_sequence", boundaries, "count", float(pooled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [(2, 128, 32, 64)] if args.quick else [(8, 1024, 256, 512), (8, 1024, 512, 1024)]
    for batch, length, d_fine, d_coarse in sizes:
        bench_case(batch, length, d_fine, d_coarse, device, args.dtype, args.repeats)

if __name__ == "__main__":
    main()
