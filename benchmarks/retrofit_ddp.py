"""Distributed fitness of the AfterLearnER callback: wall time of the retrofit phase on 2 DDP ranks vs 1 (CPU).

The model is the tiny MoE ViT of ``configs/retrofit/vit_tiny_moe_retrofit.yaml`` (untrained: the time of a search
does not depend on the weights) on the embedded MNIST validation split (500 images: 300 selection, 200 held-out),
the callback of that config (per-class logit biases, macro-F1, OnePlusOne, comparison feedback) with the same
budget in every case, one torch thread per rank. Each case runs in its own process (2 ranks: Lightning's DDP
launcher starts the second one, gloo backend); the time is that of ``EvolutionaryRetrofit.run`` on rank 0 (the
search, the held-out scores before and after, the files), not of start-up. Two metrics exercise the two reductions
of the engine: ``top1`` all-reduces a sum and a count per evaluation, ``macro_f1`` gathers every rank's
predictions (``all_gather_object``) per evaluation.

Prints JSON lines: ``retrofit_seconds`` and ``fitness_ms_per_evaluation`` per case, and ``time_ratio_vs_1_rank``
(2-rank time / 1-rank time of the same metric, lower is better; 0.5 is a perfect split).

    .venv/bin/python benchmarks/retrofit_ddp.py [--budget 100]     # about 1.5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "retrofit" / "vit_tiny_moe_retrofit.yaml"
BENCH = "retrofit_ddp"
CASES = [(1, "top1"), (2, "top1"), (1, "macro_f1"), (2, "macro_f1")]  # (ranks, metric)


def emit(case: str, metric: str, value: Any, unit: str | None, baseline: Any = None, ratio: Any = None) -> None:
    print(json.dumps({"bench": BENCH, "case": case, "metric": metric, "value": value, "unit": unit,
                      "baseline": baseline, "ratio": ratio}), flush=True)


def run_case(ranks: int, metric: str, budget: int, out: str) -> None:
    """One case, in this process (and, for 2 ranks, the one Lightning starts): writes rank 0's time to ``out``."""
    import logging
    import warnings

    import torch
    import yaml

    from litlab.callbacks import EvolutionaryRetrofit
    from litlab.datamodules import EmbeddedImageDataModule
    from litlab.lightning_cli import LitlabTrainer
    from litlab.lightning_modules import MoEImageClassifier

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    config = yaml.safe_load(CONFIG.read_text())
    retrofit_args = next(cb["init_args"] for cb in config["trainer"]["callbacks"]
                         if cb["class_path"].endswith("EvolutionaryRetrofit"))
    seconds: list[float] = []

    class Timed(EvolutionaryRetrofit):
        def run(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            result = super().run(trainer, pl_module)
            seconds.append(time.perf_counter() - start)
            return result

    callback = Timed(**{**retrofit_args, "budget": budget, "metric": metric, "resume": False, "progress_bar": False,
                        "output_dir": str(Path(out).parent / f"{metric}_r{ranks}")})
    torch.manual_seed(0)
    module = MoEImageClassifier(num_classes=10, img_size=28, in_chans=1, **config["model"]["init_args"])
    datamodule = EmbeddedImageDataModule(**config["data"]["init_args"])
    trainer = LitlabTrainer(accelerator="cpu", devices=ranks, strategy="ddp" if ranks > 1 else "auto", logger=False,
                            callbacks=[callback], limit_val_batches=1, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(Path(out).parent))
    result = trainer.retrofit(module, datamodule)
    if trainer.is_global_zero:
        Path(out).write_text(json.dumps({"seconds": seconds[0], "evaluations": result.num_evaluations,
                                         "n": result.num_examples, "fitness_seconds": result.seconds_fitness}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--case", nargs=3, metavar=("RANKS", "METRIC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(int(args.case[0]), args.case[1], args.budget, args.case[2])
        return
    times: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ranks, metric in CASES:
            out = os.path.join(tmp, f"{metric}_r{ranks}.json")
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            cmd = [sys.executable, __file__, "--budget", str(args.budget), "--case", str(ranks), metric, out]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            case = f"{metric}_{ranks}_rank{'s' if ranks > 1 else ''}_budget{args.budget}"
            if proc.returncode != 0 or not os.path.exists(out):
                emit(case, "error", proc.stderr[-500:], None)
                continue
            stats = json.loads(Path(out).read_text())
            times[(ranks, metric)] = stats["seconds"]
            emit(f"{case}_n{stats['n']}", "retrofit_seconds", round(stats["seconds"], 2), "s")
            emit(f"{case}_n{stats['n']}", "fitness_ms_per_evaluation",
                 round(1000 * stats["fitness_seconds"] / stats["evaluations"], 2), "ms")
    for metric in dict.fromkeys(m for _, m in CASES):
        one, two = times.get((1, metric)), times.get((2, metric))
        if one and two:
            emit(f"{metric}_2_ranks_vs_1_rank_budget{args.budget}", "time_ratio_vs_1_rank", round(two, 2), "s",
                 baseline=round(one, 2), ratio=round(two / one, 3))


if __name__ == "__main__":
    main()
