"""Evolution engine benchmark: what the engine adds to each evaluation, and what nevergrad costs per ask/tell.

Usage:
    python benchmarks/evolution_overhead.py            # about 3 minutes on 2 shared CPU cores
    python benchmarks/evolution_overhead.py --quick    # a few seconds per section (smoke test)

Prints one JSON object per line:
``{"bench": "evolution_overhead", "case": ..., "metric": ..., "value": ..., "unit": ..., "baseline": ..., "ratio": ...}``
with ``ratio = ours / baseline`` for times (lower is better; the metric name says against what).

Sections:
  * ``engine``: a 4-block MLP (LayerNorm, 256 -> 1024 -> 256, GELU; a real forward, one torch thread) whose
    fitness (accuracy over a few batches) takes about 10 ms, optimized with ``OnePlusOne`` over three search
    spaces. ``time_per_eval_ratio_vs_bare_fitness``: engine wall time per evaluation against the same fitness
    called in a plain loop (medians over interleaved repeats); ``overhead_share``: the share of the engine's
    wall time spent outside the fitness (ask, apply, restore, tell, bookkeeping), measured inside the run
    (target: below 0.02); ``ask_decode_tell_us`` and ``apply_restore_us``: the two main parts, timed alone.
  * ``optimizers``: ask and tell of each optimizer on the engine's parametrization (``ng.p.Dict`` of one
    ``ng.p.Array`` with sigma 0.01, as a ``ParameterSpace`` makes) at 1k, 10k and 100k dimensions, budget
    1000, losses from a sphere. ``first_ask_ms`` includes the optimizer's set-up; ``ask_tell_ms`` is the mean
    over the next asks and tells (at least 2 s or 200 pairs), so a population method's generation update is
    amortised; the baseline is ``RandomSearch`` at the same dimension. Each optimizer runs in its own process
    with a 3 GiB address-space limit and a wall-clock cap; a case whose first ask takes more than 5 s, or that
    runs out of memory (full-covariance CMA needs d² floats), ends that optimizer's larger dimensions too and
    is reported as ``skipped`` with the reason.
  * ``index_encoding``: EPPO's index space (N = 7,473 items, k = 8) with ``DiscreteLenglerOnePlusOne``: the
    Gaussian-CDF integer array against ``ng.p.Choice(range(N), repetitions=k)`` and ``ng.p.TransitionChoice``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time

OPTIMIZERS = ["RandomSearch", "OnePlusOne", "DiscreteLenglerOnePlusOne", "DiscreteOnePlusOne",
              "PortfolioDiscreteOnePlusOne", "TwoPointsDE", "DiagonalCMA", "CMA", "NGOpt"]
BENCH = "evolution_overhead"


def emit(case: str, metric: str, value, unit: str, baseline=None, ratio=None) -> None:
    print(json.dumps({"bench": BENCH, "case": case, "metric": metric, "value": value, "unit": unit,
                      "baseline": baseline, "ratio": ratio}), flush=True)


# ---------------------------------------------------------------------------------------------------- engine


def engine_section(quick: bool) -> None:
    import torch
    from torch import nn

    from litlab.evolution import (
        EvolutionEngine,
        Fitness,
        HyperParameters,
        ParameterSpace,
        SearchSpace,
        SubspaceSpace,
        make_optimizer,
    )

    torch.set_num_threads(1)

    class Block(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))

    class Net(nn.Module):
        def __init__(self, dim: int = 256, hidden: int = 1024, depth: int = 4, classes: int = 10) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block(dim, hidden) for _ in range(depth))
            self.head = nn.Linear(dim, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(32, 256)
    with torch.no_grad():
        for _ in range(5):
            model(x)
        start = time.perf_counter()
        for _ in range(20):
            model(x)
        per_batch = (time.perf_counter() - start) / 20
    num_batches = max(1, round(0.010 / per_batch))
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 256, generator=generator), torch.randint(0, 10, (32,), generator=generator))
               for _ in range(num_batches)]
    hp = HyperParameters({"temperature": (1.0, 0.1, 10.0)}, log_scale=["temperature"])

    def accuracy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, labels = batch
        return ((model(inputs) / hp["temperature"]).argmax(-1) == labels).float()

    fitness = Fitness(accuracy)
    spaces = {
        "layernorm_channel+temperature": lambda: SearchSpace({
            "norms": ParameterSpace(model, module_type=nn.LayerNorm, select="*.weight", granularity="channel"),
            "hp": hp}),
        "fc2_tensor": lambda: SearchSpace({"fc2": ParameterSpace(model, select="blocks.*.fc2.weight")}),
        "subspace16_fc1_1M_entries": lambda: SearchSpace({
            "sub": SubspaceSpace(model, dim=16, select="blocks.*.fc1.weight", max_cache_mb=128)}),
    }
    budget = 40 if quick else 150
    repeats = 1 if quick else 3
    for case, build in spaces.items():
        space = build()
        dim = space.dimension
        name = f"{case} dim={dim} OnePlusOne eval~{num_batches}x{per_batch * 1e3:.1f}ms"
        engine_per_eval, bare_per_eval, shares = [], [], []
        for repeat in range(repeats):
            engine = EvolutionEngine(model, space, fitness, optimizer="OnePlusOne", budget=budget, seed=repeat,
                                     apply_best=False, seed_evaluations=True)
            start = time.perf_counter()
            result = engine.run(batches)
            engine_per_eval.append((time.perf_counter() - start) / budget)
            shares.append(result.overhead)
            start = time.perf_counter()
            for _ in range(budget):
                fitness.evaluate(model, batches)
            bare_per_eval.append((time.perf_counter() - start) / budget)
        ours, bare = statistics.median(engine_per_eval), statistics.median(bare_per_eval)
        emit(name, "time_per_eval_ratio_vs_bare_fitness", round(ours * 1e3, 3), "ms", round(bare * 1e3, 3),
             round(ours / bare, 4))
        emit(name, "overhead_share", round(statistics.median(shares), 4), "fraction")

        optimizer = make_optimizer("OnePlusOne", space.parametrization(), budget=10_000, num_workers=1, seed=0)
        pairs = 200 if quick else 1000
        start = time.perf_counter()
        values = []
        for i in range(pairs):
            candidate = optimizer.ask()
            values.append(space.decode(candidate.value))
            optimizer.tell(candidate, float(i % 7))
        emit(name, "ask_decode_tell_us", round((time.perf_counter() - start) / pairs * 1e6, 1), "us")
        with space.session():
            start = time.perf_counter()
            for value in values[:100]:
                space.restore(space.apply(value))
            emit(name, "apply_restore_us", round((time.perf_counter() - start) / len(values[:100]) * 1e6, 1), "us")


# ---------------------------------------------------------------------------------------------------- optimizers

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    warnings.filterwarnings("ignore")
    import numpy as np
    import nevergrad as ng
    name, dims, min_seconds, min_pairs, cap = sys.argv[1], [int(d) for d in sys.argv[2].split(",")], \\
        float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    for dim in dims:
        try:
            param = ng.p.Dict(x=ng.p.Array(shape=(dim,)).set_mutation(sigma=0.01))
            param.random_state = np.random.RandomState(0)
            opt = ng.optimizers.registry[name](parametrization=param, budget=1000, num_workers=1)
            start = time.perf_counter()
            c = opt.ask(); opt.tell(c, float(np.sum(c.value["x"] ** 2)))
            first = time.perf_counter() - start
            if first > cap:
                print(json.dumps({"dim": dim, "skipped": f"first ask+tell took {first:.1f} s > {cap:.0f} s"}))
                break
            ask = tell = 0.0
            pairs = 0
            while pairs < min_pairs or ask + tell < min_seconds:
                t0 = time.perf_counter(); c = opt.ask(); t1 = time.perf_counter()
                opt.tell(c, float(np.sum(c.value["x"] ** 2))); t2 = time.perf_counter()
                ask += t1 - t0; tell += t2 - t1; pairs += 1
                if pairs >= 5 and (ask + tell) / pairs > cap:
                    break
            print(json.dumps({"dim": dim, "first": first, "ask": ask / pairs, "tell": tell / pairs, "pairs": pairs}),
                  flush=True)
        except MemoryError:
            print(json.dumps({"dim": dim, "skipped": "out of memory under a 3 GiB limit"}), flush=True)
            break
    """
)


def optimizer_section(quick: bool) -> None:
    dims = [1000] if quick else [1000, 10_000, 100_000]
    names = ["RandomSearch", "OnePlusOne", "CMA"] if quick else OPTIMIZERS
    min_seconds, min_pairs, cap = (0.3, 20, 5.0) if quick else (1.5, 200, 5.0)
    baseline: dict[int, float] = {}
    for name in names:
        timeout = 45 if quick else 60
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, name, ",".join(map(str, dims)), str(min_seconds), str(min_pairs), str(cap)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
            reason_left = f"the process failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            reason_left = f"over the {timeout} s cap of this optimizer's process (set-up or first ask > 5 s)"
        rows = {row["dim"]: row for row in map(json.loads, out.splitlines())}
        stopped_at = None
        for dim in dims:
            case, row = f"{name} dim={dim}", rows.get(dim)
            if stopped_at is not None:
                emit(case, "skipped", f"not run: dim={stopped_at} was skipped", "reason")
                continue
            if row is None or "skipped" in row:
                emit(case, "skipped", reason_left if row is None else row["skipped"], "reason")
                stopped_at = dim
                continue
            ask_tell = (row["ask"] + row["tell"]) * 1e3
            if name == "RandomSearch":
                baseline[dim] = ask_tell
            base = baseline.get(dim)
            emit(case, "first_ask_ms", round(row["first"] * 1e3, 3), "ms")
            emit(case, "ask_ms", round(row["ask"] * 1e3, 4), "ms")
            emit(case, "tell_ms", round(row["tell"] * 1e3, 4), "ms")
            emit(case, "ask_tell_time_ratio_vs_RandomSearch", round(ask_tell, 4), "ms",
                 None if base is None else round(base, 4), None if base is None else round(ask_tell / base, 3))


# ---------------------------------------------------------------------------------------------------- index encoding


def index_section(quick: bool) -> None:
    import warnings

    import nevergrad as ng
    import numpy as np

    from litlab.evolution import IndexSpace

    warnings.filterwarnings("ignore")
    num_items, k = 7473, 8
    encodings = {
        "gaussian_cdf_int_array": lambda: IndexSpace(num_items, k).parametrization(),
        "Choice_repetitions": lambda: ng.p.Choice(range(num_items), repetitions=k),
        "TransitionChoice": lambda: ng.p.TransitionChoice(range(num_items), repetitions=k),
    }
    times = {}
    for name, build in encodings.items():
        param = build()
        param.random_state = np.random.RandomState(0)
        opt = ng.optimizers.registry["DiscreteLenglerOnePlusOne"](parametrization=param, budget=10_000)
        pairs, spent = 0, 0.0
        limit = 0.5 if quick else 3.0
        while spent < limit and pairs < 2000:
            start = time.perf_counter()
            candidate = opt.ask()
            opt.tell(candidate, float(np.sum(np.asarray(candidate.value) % 97)))
            spent += time.perf_counter() - start
            pairs += 1
        times[name] = (spent / pairs, param.dimension)
    ours = times["gaussian_cdf_int_array"][0]
    for name, (seconds, dimension) in times.items():
        emit(f"N={num_items} k={k} {name} dim={dimension} DiscreteLenglerOnePlusOne",
             "ask_tell_time_ratio_vs_ours", round(seconds * 1e3, 4), "ms", round(ours * 1e3, 4),
             round(seconds / ours, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds per section")
    parser.add_argument("--sections", default="engine,optimizers,index_encoding",
                        help="comma-separated subset of: engine, optimizers, index_encoding")
    args = parser.parse_args()
    sections = {"engine": engine_section, "optimizers": optimizer_section, "index_encoding": index_section}
    for name in args.sections.split(","):
        sections[name](args.quick)


if __name__ == "__main__":
    main()
