"""``litlab bboxer_demo``: BBoxER (arXiv 2507.01752) on the tiny reasoner over several seeds, on CPU.

For each optimizer seed, the unmodified model is post-trained by :func:`litlab.methods.bboxer.run_bboxer` on the
same training problems; accuracy before and after on the training (selection), held-out and transfer sets is
reported with its mean and standard error over seeds (and the binomial standard error of each measurement).
The ``Zero`` optimizer (no change) is run as the control. Seed 0's result gets the bound table and the
membership-inference audit (its best candidate against a gradient fine-tuned copy of the unmodified model,
:func:`litlab.methods.bboxer.membership_audit`). Nothing is tuned on held-out data: the configuration is fixed
by the arguments, and the held-out and transfer sets are only measured.

Files under ``output``: ``demo.json`` (everything), ``demo.md`` (the tables), ``fitness_curves.png`` (every
seed's candidates and best-so-far curve; also copied to ``figure`` when given) and one directory per seed with
that run's ``fitness.png``.
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from litlab.callbacks.bboxer import load_problem_sets
from litlab.errors import check_int
from litlab.evolution.modification import check_places
from litlab.lightning_modules.loading import load_model
from litlab.methods.bboxer import audit_table, format_report, membership_audit, run_bboxer, set_threads

SPEC = "procedural_math:num_train=60000,num_selection=500,num_test=1000"
VARIANT = "procedural_math:procedural_templates=variant,num_train=1,num_selection=0,num_test=256"
SETS = ("selection", "heldout", "transfer")


def bboxer_demo(
    *,
    model: str = "runs/reasoner/hf",
    data: str = SPEC,
    transfer: str | None = VARIANT,
    seeds: int = 3,
    num_train: int = 128,
    num_heldout: int = 256,
    num_transfer: int = 256,
    where: list[str] | str | None = None,
    optimizer: str = "OnePlusOne",
    budget: int = 40,
    scale: float = 0.02,
    box: float | None = 0.5,
    control_budget: int = 3,
    audit: bool = True,
    num_nonmembers: int = 256,
    finetune_steps: int = 24,
    finetune_lr: float = 3e-4,
    max_new_bytes: int = 320,
    batch_size: int = 32,
    delta: float = 0.05,
    output: str = "runs/bboxer_demo",
    figure: str | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """BBoxER on a model over ``seeds`` optimizer seeds: accuracy before/after, bounds, audit, fitness curves.

    Args:
        model: A ``litlab fit`` checkpoint or a Hugging Face directory (default: the tiny reasoner).
        data: Math problems spec the model was trained with.
        transfer: Spec of the transfer set (another template family; its test split).
        seeds: Optimizer seeds (0, 1, ...).
        num_train: Training problems (the fitness), the first of the selection split.
        num_heldout: Held-out problems, the first of the test split.
        num_transfer: Transfer problems.
        where: Places where x acts (default ``norms``).
        optimizer: The nevergrad optimizer of every seed.
        budget: Evaluations per seed, the unmodified model included.
        scale: Initial mutation size of x.
        box: x stays in ``[-box, box]``.
        control_budget: Budget of the ``Zero`` control run.
        audit: Run the membership-inference audit on seed 0's result.
        num_nonmembers: Fresh test problems after the held-out ones (the audit's non-members).
        finetune_steps: AdamW steps of the audit's gradient baseline.
        finetune_lr: Its learning rate.
        max_new_bytes: Longest generated solution.
        batch_size: Problems generated together.
        delta: Failure probability of the generalization bound.
        output: Directory of the files.
        figure: Also copy the fitness curves PNG to this path.
        threads: Torch CPU threads (0: torch's default).

    Returns:
        The demo's results (also ``<output>/demo.json``).
    """
    check_int("seeds", seeds, 1)
    check_int("control_budget", control_budget, 1)
    set_threads(threads)
    start = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    sets = load_problem_sets(data, "selection", num_train, "test", num_heldout, transfer, num_transfer, 0, 0,
                             num_nonmembers if audit else 0)
    lm = load_model(model)
    lm.eval()
    original = {name: tensor.detach().clone() for name, tensor in lm.state_dict().items()}
    base = copy.deepcopy(lm) if audit else None
    search = {"where": check_places(where or ["norms"]), "scale": scale, "box": box, "delta": delta, "max_new_bytes": max_new_bytes,
              "batch_size": batch_size, "resume": False}
    runs, audit_result, bounds_markdown = [], None, ""
    for seed in range(seeds):
        lm.load_state_dict(original)
        run = run_bboxer(lm, sets, out / f"seed{seed}", optimizer=optimizer, budget=budget, seed=seed, **search)
        print(f"seed {seed}:\n{format_report(run.report)}\n", flush=True)
        if seed == 0:
            bounds_markdown = run.report["bounds_markdown"]
            if audit:
                audit_result = membership_audit(base, lm, run, sets, finetune_steps, finetune_lr, 0, max_new_bytes,
                                                batch_size)
        runs.append(run.report)
    lm.load_state_dict(original)
    control = run_bboxer(lm, sets, out / "control", optimizer="Zero", budget=control_budget, seed=0, **search).report
    lm.load_state_dict(original)
    summary = summarize(runs)
    result = {"model": model, "data": data, "transfer": transfer, "optimizer": optimizer, "budget": budget,
              "where": search["where"], "scale": scale, "box": box, "seeds": seeds, "num_train": num_train,
              "num_heldout": num_heldout, "num_transfer": len(sets.transfer), "summary": summary, "runs": runs,
              "control": control, "audit": audit_result, "seconds": time.perf_counter() - start}
    plot_curves(runs, out / "fitness_curves.png")
    if figure is not None:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "fitness_curves.png", figure)
    markdown = format_demo(result, bounds_markdown)
    (out / "demo.md").write_text(markdown + "\n")
    (out / "demo.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown)
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per set: accuracy before (the same for every seed); of the best candidate (``after``) and of the model
    returned after the safeguard (``returned``), mean and standard error over seeds; how many seeds changed the
    model and how many of those the safeguard kept."""
    summary: dict[str, Any] = {}
    for name in SETS:
        rows = [run["accuracy"][name] for run in runs if run["accuracy"][name]["before"] is not None]
        if not rows:
            continue
        after = [row["after"] for row in rows]
        returned = [row["returned"] for row in rows]
        summary[name] = {"n": rows[0]["n"], "before": rows[0]["before"], "se_before": rows[0]["se_before"],
                         "after_mean": statistics.fmean(after), "after_se": _se(after),
                         "returned_mean": statistics.fmean(returned), "returned_se": _se(returned)}
    summary["changed"] = sum(bool(run["changed"]) for run in runs)
    summary["kept"] = sum(bool(run["kept"] and run["changed"]) for run in runs)
    summary["search_seconds_mean"] = statistics.fmean(run["seconds"]["search"] for run in runs)
    return summary


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def plot_curves(runs: list[dict[str, Any]], path: Path) -> None:
    """Every seed's candidate fitness (dots) and best so far (line) against the evaluation index."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, run in enumerate(runs):
        history = run["result"]["history"]
        color = f"C{index}"
        ax.scatter([r["index"] for r in history], [r["fitness"] for r in history], s=8, alpha=0.4, color=color)
        ax.step([r["index"] for r in history], [r["best"] for r in history], where="post", color=color,
                label=f"seed {run['search']['seed']}: best so far")
    ax.axhline(runs[0]["accuracy"]["selection"]["before"], color="gray", linestyle="--", linewidth=1,
               label="unmodified model")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("accuracy on the training problems")
    search = runs[0]["search"]
    ax.set_title(f"BBoxER: {search['optimizer']} on {', '.join(search['where'])}, comparison feedback", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def format_demo(result: dict[str, Any], bounds_markdown: str) -> str:
    """The demo's tables: accuracy over seeds, per seed, the control, the bounds (seed 0) and the audit."""
    s = result["summary"]
    lines = [f"BBoxER, {result['optimizer']} on {', '.join(result['where'])}, budget {result['budget']}, "
             f"{result['seeds']} seeds, {result['seconds'] / 60:.1f} min wall", "",
             "| set | n | before | best candidate (mean ± SE over seeds) | returned model (after the safeguard) |",
             "|---|---:|---:|---:|---:|"]
    for name in SETS:
        if name in s:
            row = s[name]
            lines.append(f"| {name} | {row['n']} | {row['before']:.3f} ± {row['se_before']:.3f} | "
                         f"{row['after_mean']:.3f} ± {row['after_se']:.3f} | "
                         f"{row['returned_mean']:.3f} ± {row['returned_se']:.3f} |")
    lines += [f"\n{s['changed']} of {result['seeds']} seeds found a better candidate on the training problems; "
              f"the safeguard kept {s['kept']} of them", "",
              "| seed | best candidate: selection | held-out | transfer | kept | bits | gap bound | robust k |",
              "|---:|---:|---:|---:|---|---:|---:|---:|"]
    for run in result["runs"]:
        acc, poison = run["accuracy"], run["bounds"]["poisoning"] or {}
        transfer = "–" if acc["transfer"]["after"] is None else f"{acc['transfer']['after']:.3f}"
        kept = ("yes" if run["kept"] else "no (restored)") if run["changed"] else "– (no change)"
        lines.append(f"| {run['search']['seed']} | {acc['selection']['after']:.3f} | {acc['heldout']['after']:.3f} | "
                     f"{transfer} | {kept} | {run['bounds']['bits']:.0f} | "
                     f"{run['bounds']['generalization_gap']:.3f} | {poison.get('robust_k')} |")
    control = result["control"]["accuracy"]
    lines.append(f"\nZero control (budget {result['control']['search']['budget']}): selection "
                 f"{control['selection']['after']:.3f}, held-out {control['heldout']['after']:.3f} "
                 f"(changed: {result['control']['changed']})\n")
    lines += ["Bounds of seed 0:", "", bounds_markdown]
    audit = result.get("audit")
    if audit:
        lines += ["", "Membership-inference audit (loss attack), seed 0:", "",
                  audit_table(audit, result["runs"][0]["accuracy"])]
    return "\n".join(lines)
