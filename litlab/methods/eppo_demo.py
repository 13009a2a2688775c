"""``litlab eppo_demo``: EPPO against random k-shot and random search at equal budget, over several seeds.

On a trained language model (by default the tiny reasoner of ``docs/language_models.md``, ``runs/reasoner/hf``,
and the procedural problems it was trained on), one :class:`~litlab.callbacks.eppo.EPPO` run per seed
(``seed = 0 .. seeds-1``, everything else equal). The runs share one cached scorer, so what does not depend
on the seed (zero-shot, the start, the random k-shot draws of ``baseline_seed``) is computed once.

Summary (``<output>/summary.json``, printed as a table), on the held-out problems (never searched on):

- EPPO and random search: mean over the seeds ± standard error over the seeds (sd/√seeds);
- random k-shot: mean over the draws ± standard error over the draws (sd/√draws);
- zero-shot and the start: one measurement ± its binomial standard error;
- EPPO's gain over random k-shot: the difference of the means ± ``sqrt(SE_EPPO² + SE_random²)``; the target
  is a gain above two standard errors, reported as met or not (the numbers are never tuned on the held-out
  problems). These standard errors are those of the methods' randomness (seeds, draws); every measurement
  also has the binomial error of the finite held-out set, shared by all prompts (the same problems), so each
  seed's gain is also given paired over the problems (``paired_gain_over_random_per_seed``: mean ± SE of the
  per-problem differences).

Figures: ``fitness_curves.png`` (best fitness so far against evaluations, EPPO and random search, each seed)
and ``heldout.png`` (fitness-subset and held-out exact match of every prompt, with the standard errors).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from litlab.callbacks.eppo import EPPO
from litlab.errors import check_int
from litlab.lightning_modules.loading import load_model
from litlab.methods.eppo import run_eppo

REASONER_SPEC = "procedural_math:num_train=60000,num_selection=500,num_test=1000"


def eppo_demo(
    *,
    model: str = "runs/reasoner/hf",
    data: str = REASONER_SPEC,
    seeds: int = 3,
    shots: int = 4,
    num_fitness: int = 40,
    num_heldout: int = 200,
    budget: int = 20,
    optimizer: str = "DiscreteLenglerOnePlusOne",
    random_draws: int = 10,
    sc_samples: int = 3,
    sc_temperature: float = 0.7,
    max_new_bytes: int = 256,
    threads: int = 1,
    output: str = "runs/eppo_demo",
) -> dict[str, Any]:
    """EPPO vs random k-shot vs random search at equal budget, held-out exact match over several seeds.

    Args:
        model: A ``litlab fit`` checkpoint of a language model or a Hugging Face directory.
        data: The math-problem spec the model was trained with (pool: train, fitness: selection, held-out: test).
        seeds: Seeds of the search (and of the random search), ``0 .. seeds-1``.
        shots: Demonstrations per pre-prompt.
        num_fitness: Selection problems of the fitness.
        num_heldout: Held-out test problems.
        budget: Fitness evaluations per search (the same for random search).
        optimizer: EPPO's optimizer.
        random_draws: Random k-shot pre-prompts (the baseline).
        sc_samples: Self-consistency samples for the start and the chosen pre-prompts (< 2: none).
        sc_temperature: Self-consistency temperature.
        max_new_bytes: Longest answer.
        threads: torch CPU threads.
        output: Directory of the runs, ``summary.json`` and the figures.

    Returns:
        The summary.
    """
    check_int("seeds", seeds, 1)
    check_int("threads", threads, 1)
    torch.set_num_threads(threads)
    began = time.perf_counter()
    lm = load_model(model)
    runs, shared, report = [], None, {}
    for seed in range(seeds):
        callback = EPPO(data=data, shots=shots, num_fitness=num_fitness, num_heldout=num_heldout,
                        max_new_bytes=max_new_bytes, random_draws=random_draws, sc_samples=sc_samples,
                        sc_temperature=sc_temperature, optimizer=optimizer, budget=budget, seed=seed,
                        output_dir=str(Path(output) / f"seed{seed}"), progress_bar=False)
        callback.shared_scorer = shared
        report = run_eppo(callback, lm, "cpu")
        shared = callback.scorer
        assert callback.random_search_result is not None
        runs.append({"seed": seed, "eppo": report["eppo"]["chosen"], "random_search": report["eppo"]["random_search"],
                     "paired_gain": report["eppo"]["heldout_gain"], "history": report["history"],
                     "random_search_history": callback.random_search_result.history})
    summary = summarize(runs, report["eppo"])
    summary.update(model=model, data=data, optimizer=optimizer, budget=budget, shots=shots,
                   command=f"litlab eppo_demo --model {model} --seeds {seeds} --budget {budget} --num_fitness "
                           f"{num_fitness} --num_heldout {num_heldout} --shots {shots}")
    out = Path(output)
    plot_fitness_curves(runs, report["eppo"]["start"]["selection"], out / "fitness_curves.png")
    plot_heldout(summary, out / "heldout.png")
    summary["seconds"] = time.perf_counter() - began
    (out / "summary.json").write_text(json.dumps({**summary, "runs": runs}, indent=1) + "\n")
    print(format_summary(summary))
    return summary


def _mean_se(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "se": sd / math.sqrt(len(values)), "n": len(values)}


def summarize(runs: list[dict[str, Any]], last: dict[str, Any]) -> dict[str, Any]:
    """Means and standard errors of every prompt (see the module docstring); ``last``: one run's comparison."""
    rows: dict[str, dict[str, Any]] = {}
    for name in ("zero_shot", "start"):
        m = last[name]
        rows[name] = {"heldout": {"mean": m["heldout"], "se": m["heldout_se"], "n": 1},
                      "selection": {"mean": m["selection"], "se": m["selection_se"], "n": 1}}
    draws = last["random"]["draws"]
    rows["random"] = {part: _mean_se([d[part] for d in draws]) for part in ("heldout", "selection")}
    for name in ("random_search", "eppo"):
        rows[name] = {part: _mean_se([r[name][part] for r in runs]) for part in ("heldout", "selection")}
    if "heldout_sc" in last["chosen"]:
        m = last["start"]
        rows["start"]["heldout_sc"] = {"mean": m["heldout_sc"], "se": m["heldout_sc_se"], "n": 1}
        rows["eppo"]["heldout_sc"] = _mean_se([r["eppo"]["heldout_sc"] for r in runs])
    eppo, random = rows["eppo"]["heldout"], rows["random"]["heldout"]
    gain = eppo["mean"] - random["mean"]
    se = math.sqrt(eppo["se"] ** 2 + random["se"] ** 2)
    paired = [r["paired_gain"].get("over_random") for r in runs]
    return {"prompts": rows, "gain_over_random": {"gain": gain, "se": se, "target_met": bool(gain > 2 * se)},
            "paired_gain_over_random_per_seed": paired,
            "gain_over_random_search": eppo["mean"] - rows["random_search"]["heldout"]["mean"],
            "bits": last["bits"], "generalization_gap": last["generalization_gap"], "delta": last["delta"],
            "num_fitness": last["num_fitness"], "num_heldout": last["num_heldout"], "seeds": len(runs),
            "random_draws": len(draws), "sc_samples": last["sc_samples"], "sc_temperature": last["sc_temperature"]}


NAMES = {"zero_shot": "zero-shot", "start": "start (first k)", "random": "random k-shot",
         "random_search": "random search", "eppo": "EPPO"}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a table (held-out exact match ± SE, fitness-subset exact match) and the verdict."""
    lines = [f"{'prompt':18}{'held-out (n=' + str(summary['num_heldout']) + ')':>24}"
             f"{'fitness subset (n=' + str(summary['num_fitness']) + ')':>26}{'self-consistency':>22}"]
    for key, row in summary["prompts"].items():
        held, sel = row["heldout"], row["selection"]
        sc = row.get("heldout_sc")
        lines.append(f"{NAMES[key]:18}{held['mean']:>15.3f} ± {held['se']:.3f}{sel['mean']:>19.3f} ± {sel['se']:.3f}"
                     + (f"{sc['mean']:>15.3f} ± {sc['se']:.3f}" if sc else ""))
    g = summary["gain_over_random"]
    lines.append(f"EPPO - random k-shot on held-out: {g['gain']:+.3f} ± {g['se']:.3f} "
                 f"({'above' if g['target_met'] else 'not above'} 2 standard errors); over random search "
                 f"{summary['gain_over_random_search']:+.3f}; {summary['seeds']} seeds, {summary['random_draws']} draws")
    lines.append(f"bound: {summary['bits']:.0f} bits, held-out >= fitness - {summary['generalization_gap']:.3f} "
                 f"w.p. {1 - summary['delta']:.2f}; {summary['seconds']:.0f} s")
    return "\n".join(lines)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_fitness_curves(runs: list[dict[str, Any]], start: float, path: Path) -> Path:
    """Best fitness so far against evaluations: EPPO (solid) and random search (dashed), one colour per seed."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        color = f"C{i}"
        for key, style, label in (("history", "-", "EPPO"), ("random_search_history", "--", "random search")):
            history = run[key]
            ax.step([r["index"] for r in history], [r["best"] for r in history], where="post", linestyle=style,
                    color=color, label=f"{label}, seed {run['seed']}")
        ax.scatter([r["index"] for r in run["history"]], [r["fitness"] for r in run["history"]], s=6, color=color,
                   alpha=0.3)
    ax.axhline(start, color="gray", linewidth=1, linestyle=":", label="start (first k)")
    ax.set_xlabel("fitness evaluation")
    ax.set_ylabel("exact match on the fitness subset")
    ax.set_title("EPPO vs random search at equal budget (dots: EPPO's candidates)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_heldout(summary: dict[str, Any], path: Path) -> Path:
    """Held-out and fitness-subset exact match of every prompt, with standard errors."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    keys = list(summary["prompts"])
    for offset, part, label in ((-0.2, "selection", "fitness subset"), (0.2, "heldout", "held-out")):
        rows = [summary["prompts"][k][part] for k in keys]
        ax.bar([i + offset for i in range(len(keys))], [r["mean"] for r in rows], width=0.4,
               yerr=[r["se"] for r in rows], capsize=3, label=label, alpha=0.8)
    ax.set_xticks(range(len(keys)), [NAMES[k] for k in keys], fontsize=8)
    values = [summary["prompts"][k][p]["mean"] for k in keys for p in ("selection", "heldout")]
    ax.set_ylim(max(0.0, min(values) - 0.15), min(1.0, max(values) + 0.1))
    ax.set_ylabel("exact match")
    ax.set_title(f"mean ± SE: over {summary['seeds']} seeds (EPPO, random search), {summary['random_draws']} draws "
                 "(random k-shot);\nbinomial for one measurement (zero-shot, start)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
