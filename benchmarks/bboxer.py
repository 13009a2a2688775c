"""BBoxER benchmark: what post-training costs on top of the batched inference it is made of.

Usage:
    python benchmarks/bboxer.py                 # about 5 minutes on 2 shared CPU cores (the docs' figures)
    python benchmarks/bboxer.py --quick         # 16 problems, 1 repeat (smoke test)

The model is the tiny reasoner (``runs/reasoner/hf``, see docs/language_models.md; ``--model`` for another
``HFCausalLM`` directory or checkpoint); the problems are the first ``--problems`` of its selection split,
zero-shot, greedy, batches of 32, one torch thread. Three places where x acts: ``norms`` (per channel, the demo's),
``channel_scales`` of every linear layer of the blocks (most of the weights), ``subspace`` (k = 16) of the same.

Prints one JSON object per line ``{"bench", "case", "metric", "value", "unit", "baseline", "ratio"}``:

- ``fitness_throughput_vs_inference`` (target >= 0.9): problems/s of one BBoxER fitness evaluation (the
  engine's ``evaluate``: the candidate written into the weights, batched generation and exact match, the weights
  restored) / problems/s of pure batched generation (``math_scores``) of the *same* changed model (the candidate
  applied once beforehand), so both do the same decoding work. Candidates: ``N(0, scale²)`` per coordinate,
  ``--repeats`` of them, interleaved.
- ``peak_memory_vs_inference`` (target <= 1.1): the model's memory, its weight bytes + the peak resident memory
  above the footprint after loading and one small warm-up batch (``ru_maxrss``: activations, KV caches, the
  search's copies), during BBoxER evaluations of a candidate (in a session, which keeps the originals of the
  touched tensors) / during pure inference of the same candidate written into the weights; each in a fresh
  process, the problems handed over in a JSON file. RSS moves by a few MiB from run to run.
  ``search_tensor_bytes_vs_weights``: the bytes the search holds besides the model (copies of the touched
  tensors, the subspace's codes) / the weight bytes, counted exactly; ``1 +`` that ratio bounds the memory
  ratio from above whatever the activations are (inference holds at least the weights).
- ``engine_overhead_share`` (target < 0.02): share of an ``EvolutionEngine`` run's wall time (OnePlusOne,
  comparison feedback, ``--budget`` evaluations, no held-out set) spent outside the fitness function (ask,
  apply, restore, tell), at this evaluation cost.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

BENCH = "bboxer"
SPEC = "procedural_math:num_train=60000,num_selection=500,num_test=1000"
PLACES = {"norms": {"where": ["norms"]}, "channel_scales": {"where": ["channel_scales"]},
          "subspace16": {"where": ["subspace"], "subspace_dim": 16}}
SCALE = 0.02


def emit(case: str, metric: str, value: Any, unit: str | None, baseline: Any = None, ratio: Any = None) -> None:
    print(json.dumps({"bench": BENCH, "case": case, "metric": metric, "value": value, "unit": unit,
                      "baseline": baseline, "ratio": ratio}), flush=True)


def load_problems(problems: int) -> list:
    from litlab.datamodules.math_corpus import parse_math_spec

    dataset, _ = parse_math_spec(SPEC)
    return dataset.problems("selection")[:problems]


def setup(model: str, chosen: list) -> tuple[Any, list]:
    import torch

    from litlab.evaluation.math_scoring import problem_batches
    from litlab.lightning_modules.loading import load_model

    torch.set_num_threads(1)
    lm = load_model(model).eval()
    return lm, problem_batches(chosen, 32)


def build(lm: Any, place: str) -> Any:
    from litlab.evolution.modification import modification_space

    return modification_space(lm, scale=SCALE, seed=0, **PLACES[place])


def candidates(space: Any, count: int) -> list[dict]:
    import numpy as np

    rng = np.random.RandomState(7)
    return [{name: rng.normal(0, SCALE, part.dimension) for name, part in space.parts.items()} for _ in range(count)]


def throughput_section(model: str, problems: int, repeats: int, budget: int) -> None:
    from litlab.evaluation.math_scoring import MathAccuracy, math_scores
    from litlab.evolution import EvolutionEngine, Fitness

    chosen = load_problems(problems)
    lm, batches = setup(model, chosen)
    fitness = Fitness(MathAccuracy(max_new_bytes=320))
    math_scores(lm, chosen[:8], batch_size=8)  # warm-up

    def engine() -> EvolutionEngine:
        return EvolutionEngine(lm, space, fitness, optimizer="OnePlusOne", budget=budget, seed=0,
                               feedback="comparison", apply_best=False)

    for place in PLACES:
        space = build(lm, place)
        evaluator = engine()
        ours, pure = [], []
        with space.session():
            for repeat, value in enumerate(candidates(space, repeats)):
                for kind in (("ours", "pure") if repeat % 2 == 0 else ("pure", "ours")):  # alternate the order
                    if kind == "ours":
                        start = time.perf_counter()
                        evaluator.evaluate(value, batches)
                        ours.append(time.perf_counter() - start)
                    else:
                        with space.applied(value):
                            start = time.perf_counter()
                            math_scores(lm, chosen, batch_size=32)
                            pure.append(time.perf_counter() - start)
        case = f"{place} dim={space.dimension} problems={len(chosen)} batch=32 zero-shot"
        rate, base = len(chosen) / statistics.fmean(ours), len(chosen) / statistics.fmean(pure)
        emit(case, "fitness_throughput_vs_inference", round(rate, 2), "problems/s", round(base, 2),
             round(rate / base, 4))
        result = engine().run(batches)  # a fresh engine: its clocks cover this run only
        emit(case, "engine_overhead_share", round(result.overhead, 5), "fraction", None, None)
        emit(case, "seconds_per_evaluation", round(result.seconds_total / result.num_evaluations, 3), "s")
        weights = sum(p.numel() * p.element_size() for p in lm.parameters())
        extra = search_tensor_bytes(space, candidates(space, 1)[0])
        emit(case, "search_tensor_bytes_vs_weights", extra, "bytes", weights, round(extra / weights, 4))


def search_tensor_bytes(space: Any, value: dict) -> int:
    """Bytes the search keeps besides the model while a candidate is applied in a session: the originals of the
    touched tensors and the subspace's cached projection."""
    with space.session():
        tokens = space.apply(value)
        total = 0
        for part in space.parts.values():
            total += sum(t.numel() * t.element_size() for t in (part._backup or {}).values())
            total += sum(t.numel() * t.element_size() for t in getattr(part, "_cache", {}).values())
        space.restore(tokens)
    return total


def memory_child(mode: str, model: str, problems_file: str, place: str, repeats: int) -> None:
    """Runs in a fresh process: prints the weight bytes and the peak RSS above the footprint after the model is
    loaded and has generated one small batch (imports, lazily loaded code and the weights are in it)."""
    from litlab.evaluation.math_scoring import MathAccuracy, math_scores
    from litlab.evolution import EvolutionEngine, Fitness
    from litlab.text.gsm8k import MathProblem

    chosen = [MathProblem(**record) for record in json.loads(open(problems_file).read())]
    lm, batches = setup(model, chosen)
    space = build(lm, place)
    value = candidates(space, 1)[0]
    math_scores(lm, chosen[:4], batch_size=4)  # warm-up: a smaller peak than the measured batches
    if mode == "inference":  # the candidate written into the weights for good, its undo information dropped
        tokens = space.apply(value)
        del tokens
        gc.collect()
    before = _rss_kib()
    if mode == "inference":
        for _ in range(repeats):
            math_scores(lm, chosen, batch_size=32)
    else:
        engine = EvolutionEngine(lm, space, Fitness(MathAccuracy(max_new_bytes=320)), optimizer="OnePlusOne",
                                 budget=repeats, seed=0, apply_best=False)
        with space.session():
            for _ in range(repeats):
                engine.evaluate(value, batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    weights = sum(p.numel() * p.element_size() for p in lm.parameters()) // 1024
    print(json.dumps({"peak_above_baseline_kib": max(0, peak - before), "weights_kib": weights}))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory_section(model: str, problems: int, repeats: int) -> None:
    import dataclasses
    import tempfile

    records = [dataclasses.asdict(p) for p in load_problems(problems)]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(records, f)
    try:
        for place in PLACES:
            peaks = {}
            for mode in ("inference", "bboxer"):
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--model", model, "--problems-file",
                                      f.name, "--place", place, "--repeats", str(repeats)],
                                     capture_output=True, text=True, check=True)
                child = json.loads(out.stdout.strip().splitlines()[-1])
                peaks[mode] = (child["weights_kib"] + child["peak_above_baseline_kib"]) / 1024
            emit(f"{place} problems={problems} batch=32", "peak_memory_vs_inference", round(peaks["bboxer"], 1),
                 "MiB", round(peaks["inference"], 1), round(peaks["bboxer"] / peaks["inference"], 4))
    finally:
        os.unlink(f.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/reasoner/hf")
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=["inference", "bboxer"])
    parser.add_argument("--place", choices=list(PLACES), default="norms")
    parser.add_argument("--problems-file")
    args = parser.parse_args()
    if args.child:
        memory_child(args.child, args.model, args.problems_file, args.place, args.repeats)
        return
    if args.quick:
        args.problems, args.repeats, args.budget = 16, 1, 3
    throughput_section(args.model, args.problems, args.repeats, args.budget)
    memory_section(args.model, args.problems, args.repeats)


if __name__ == "__main__":
    main()
