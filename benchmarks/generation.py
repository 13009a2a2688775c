"""Generation benchmark: bytes per second with and without KV caches (AU-Net 2, AU-Net 3, flat byte Transformer).

Usage:
    python benchmarks/generation.py            # 128 new bytes after a 256-byte prompt (the docs' figures)
    python benchmarks/generation.py --quick    # 32 new bytes, a few seconds

Each model is fed real text (CPython's ``pydoc_data.topics``) byte by byte after the prompt — the work of
greedy generation without the sampling, and with realistic boundaries (random-weight models would generate
bytes with unrealistic splits). ``cached``: :class:`litlab.models.lm.generation.Stepper` with KV caches (the
byte stage runs every byte, deeper stages only on their boundaries); ``uncached``: a full forward over the
window for every byte (what the reference's generator costs per byte, minus its O(length) re-splitting).
Both run with random weights in float32 on batch 1, in one process, interleaved per repeat.

CPU runs use ``--threads`` torch threads (default 1: small ops on a busy shared machine are otherwise
dominated by thread synchronisation). Prints one JSON object per line; ``time_per_byte_cached_vs_uncached`` has ``ratio = cached / uncached`` time per byte (lower is better) and the
largest logit difference between the two paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from litlab.models.lm.aunet import AUNet
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.generation import Stepper
from litlab.text import encode_bytes


def models() -> dict[str, AUNet | FlatTransformer]:
    torch.manual_seed(0)
    return {
        "aunet2": AUNet([128, 256], [2, 4], [2, 4], [128, None], [1024, 512]),
        "aunet3": AUNet([128, 256, 384], [2, 2, 4], [2, 4, 6], [128, None, None], [1024, 512, 256]),
        "flat_bytes": FlatTransformer(256, 6, 4, 258, max_length=1024, window=None),
    }


def emit(case: str, metric: str, value: float, unit: str, baseline: float | None = None) -> None:
    ratio = None if baseline in (None, 0) else value / baseline
    print(json.dumps({"bench": "generation", "case": case, "metric": metric, "value": value, "unit": unit,
                      "baseline": baseline, "ratio": ratio}), flush=True)  # fmt: skip


def feed(model: AUNet | FlatTransformer, ids: list[int], prompt: int, use_cache: bool) -> tuple[float, list]:
    stepper = Stepper(model, use_cache=use_cache)
    start = time.perf_counter()
    logits = [stepper.prefill(ids[:prompt])]
    logits += [stepper.step(token) for token in ids[prompt:-1]]
    return time.perf_counter() - start, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    new = 32 if args.quick else args.new
    import pydoc_data.topics

    text = pydoc_data.topics.topics["if"] + pydoc_data.topics.topics["while"]
    ids = encode_bytes(text, eos=False).tolist()[: args.prompt + new + 1]
    for name, model in models().items():
        model.eval()
        case = f"{name},prompt={args.prompt},new={new},fp32,cpu,batch=1"
        feed(model, ids[: args.prompt + 4], args.prompt, True)  # warm-up
        times = {True: [], False: []}
        outputs = {}
        for r in range(args.repeats):
            for use_cache in (True, False) if r % 2 == 0 else (False, True):
                elapsed, outputs[use_cache] = feed(model, ids, args.prompt, use_cache)
                times[use_cache].append(elapsed)
        uncached = new / statistics.median(times[False])
        cached = new / statistics.median(times[True])
        emit(case, "bytes_per_s_uncached", uncached, "bytes/s")
        emit(case, "bytes_per_s_cached", cached, "bytes/s")
        emit(case, "time_per_byte_cached_vs_uncached", 1 / cached, "s", 1 / uncached)
        diff = max((a - b).abs().max().item() for a, b in zip(outputs[True], outputs[False], strict=True))
        emit(case, "max_abs_logit_diff_cached_vs_uncached", diff, "abs")
        emit(case, "params", float(model.num_params()), "count")


if __name__ == "__main__":
    main()
