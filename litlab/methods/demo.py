"""``litlab demo`` (``make demo``): MoE ViT vs dense ViT of equal activated parameters, trained the same way.

Both models are fit on the embedded MNIST subset from their configs, evaluated on the test split with the best
validation checkpoint, and printed side by side with the MoE model's expert usage per layer and the paths of
the plots. Then the MoE model is retrofitted (AfterLearnER, :class:`~litlab.callbacks.EvolutionaryRetrofit`):
OnePlusOne moves its 10 per-class logit biases against macro-F1 on 60% of the validation split, told only
comparisons, with the other 40% held out as a safeguard; the before/after scores, the bits the optimizer
learned and the generalization bound are printed. Everything runs on the CPU in a few minutes.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from litlab.callbacks.expert_usage import ExpertUsage
from litlab.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "moe"


def run_demo(
    moe_config: str = str(CONFIG_DIR / "vit_tiny_moe.yaml"),
    dense_config: str = str(CONFIG_DIR / "vit_tiny_dense.yaml"),
    root_dir: str = "runs/demo",
    max_epochs: int | None = None,
    progress_bar: bool = False,
    retrofit_budget: int = 100,
) -> dict[str, Any]:
    """Train the dense and the MoE model of the demo and print the comparison.

    Args:
        moe_config: Config of the MoE model.
        dense_config: Config of the dense model (same recipe, same activated parameters).
        root_dir: Directory of the runs (logs, checkpoints, plots) and of ``results.json``.
        max_epochs: Override the configs' number of epochs.
        progress_bar: Show Lightning's progress bars.
        retrofit_budget: Evaluations of the retrofit of the MoE model (0 skips it).

    Returns:
        The results per model, as written to ``<root_dir>/results.json``.
    """
    from litlab.lightning_cli import LitlabCLI

    # Keep the demo's output to its results: Lightning's info lines and tips, and warnings about the
    # in-process use of LightningCLI, are noise here (they stay in the logs of a plain `litlab fit`).
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    for path in (moe_config, dense_config):
        if not Path(path).is_file():
            raise ConfigError(f"config file {path!r} does not exist")
    results: dict[str, Any] = {}
    for name, config in (("dense", dense_config), ("moe", moe_config)):
        args = ["fit", "--config", config, f"--trainer.default_root_dir={root_dir}/{name}",
                f"--trainer.enable_progress_bar={str(progress_bar).lower()}", "--trainer.enable_model_summary=false"]
        if max_epochs is not None:
            args.append(f"--trainer.max_epochs={max_epochs}")
        print(f"[demo] training the {name} model ({config}) ...", flush=True)
        start = time.perf_counter()
        cli = LitlabCLI(args=args)
        fit_seconds = time.perf_counter() - start
        val = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
        test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
        summary = cli.model.summary()
        usage = next((cb for cb in cli.trainer.callbacks if isinstance(cb, ExpertUsage)), None)
        results[name] = {
            "config": config,
            "total_params": summary["total_params"],
            "activated_params": summary["activated_params"],
            "flops_per_image": summary["flops_per_image"],
            "moe_blocks": summary["moe_blocks"],
            "val_top1": val.get("val/top1"),
            "test_top1": float(test["test/top1"]),
            "test_top5": float(test["test/top5"]),
            "fit_seconds": round(fit_seconds, 1),
            "best_checkpoint": cli.trainer.checkpoint_callback.best_model_path,
            "expert_usage": usage.usage if usage else {},
            "plots": usage.paths if usage else [],
        }
        if name == "moe" and retrofit_budget > 0:
            results["moe"]["retrofit"] = _retrofit(cli, f"{root_dir}/{name}/retrofit", retrofit_budget)
    Path(root_dir).mkdir(parents=True, exist_ok=True)
    out = Path(root_dir) / "results.json"
    out.write_text(json.dumps(results, indent=2))
    print(format_results(results))
    print(f"results: {out}")
    return results


def _retrofit(cli: Any, output_dir: str, budget: int) -> dict[str, Any]:
    """AfterLearnER on the best checkpoint: per-class logit biases against macro-F1, comparison feedback."""
    from litlab.callbacks.retrofit import EvolutionaryRetrofit

    print(f"[demo] retrofitting the moe model's class biases (budget {budget}) ...", flush=True)
    callback = EvolutionaryRetrofit(
        select="model.head.bias", mode="additive", granularity="channel", scale=0.5, box=2.0,
        optimizer="OnePlusOne", budget=budget, feedback="comparison", metric="macro_f1",
        selection_fraction=0.6, safeguard=True, output_dir=output_dir, progress_bar=False,
    )
    cli.trainer.callbacks.append(callback)
    start = time.perf_counter()
    result = cli.trainer.retrofit(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    seconds = time.perf_counter() - start
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {
        "selection_macro_f1": [result.selection_before, result.selection_after],
        "heldout_macro_f1": [result.heldout_before, result.heldout_after],
        "kept": callback.kept, "bits": result.bits, "generalization_gap": result.generalization_gap, "budget": budget,
        "selection_examples": result.num_examples, "test_top1_after": float(test["test/top1"]),
        "seconds": round(seconds, 1), "report": str(Path(output_dir) / "report.json"),
    }


def format_results(results: dict[str, Any]) -> str:
    """The side-by-side table, the expert usage per MoE layer and the plot paths, as text."""
    header = (f"{'model':<6} {'total params':>12} {'activated':>10} {'MFLOPs/img':>10} "
              f"{'test top-1':>10} {'test top-5':>10} {'fit s':>7}  MoE blocks")
    lines = ["", header]
    for name, r in results.items():
        lines.append(
            f"{name:<6} {r['total_params']:>12,} {r['activated_params']:>10,} {r['flops_per_image'] / 1e6:>10.2f} "
            f"{100 * r['test_top1']:>9.2f}% {100 * r['test_top5']:>9.2f}% {r['fit_seconds']:>7.1f}  "
            f"{', '.join(r['moe_blocks']) or '-'}"
        )
    for name, r in results.items():
        if r["expert_usage"]:
            lines.append(f"\nexpert usage of the {name} model (share of routed tokens per expert, validation set):")
            for layer, share in r["expert_usage"].items():
                lines.append(f"  {layer:<22} " + " ".join(f"{s:.2f}" for s in share))
        if r["plots"]:
            lines.append("plots:\n" + "\n".join(f"  {p}" for p in r["plots"]))
        if "retrofit" in r:
            rf = r["retrofit"]
            (sel0, sel1), (held0, held1) = rf["selection_macro_f1"], rf["heldout_macro_f1"]
            lines.append(
                f"\nretrofit of the {name} model (AfterLearnER: 10 class biases, OnePlusOne, {rf['budget']} evaluations,"
                f" comparisons only):\n"
                f"  selection macro-F1 {sel0:.4f} -> {sel1:.4f}   held-out macro-F1 {held0:.4f} -> {held1:.4f}   "
                f"{'kept' if rf['kept'] else 'restored by the safeguard'}\n"
                f"  test top-1 {100 * r['test_top1']:.2f}% -> {100 * rf['test_top1_after']:.2f}%   "
                f"{rf['bits']:.0f} bits told, gap bound {rf['generalization_gap']:.3f} on {rf['selection_examples']} selection images"
                f" (delta 0.05)   report: {rf['report']}"
            )
    return "\n".join(lines)
