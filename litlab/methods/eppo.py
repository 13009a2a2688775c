"""``litlab eppo``: evolve the few-shot pre-prompt of an existing language model (EPPO, arXiv 2412.04291).

Loads a ``litlab fit`` checkpoint or a Hugging Face model directory, runs the :class:`~litlab.callbacks.eppo.EPPO`
callback on it in one process (CPU, or the GPU with ``--accelerator gpu``), prints the comparison with the
baselines and writes ``preprompt.txt``, ``preprompt.json``, ``report.json`` and ``fitness.png`` to ``--output``.
To search under DDP, put the callback in the trainer's callbacks of ``litlab fit`` (it runs after training).

Example (the tiny reasoner of ``docs/language_models.md``)::

    litlab eppo --model runs/reasoner/hf --data "procedural_math:num_train=60000,num_selection=500,num_test=1000" \\
        --shots 4 --num_fitness 64 --budget 60 --output runs/eppo
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

from litlab.callbacks.eppo import EPPO
from litlab.errors import ConfigError
from litlab.lightning_modules.loading import load_model


def eppo(
    *,
    model: str,
    data: str = "procedural_math",
    test_data: str | None = None,
    shots: int = 4,
    shots_range: tuple[int, int] | None = None,
    start: list[int] | None = None,
    pool_size: int | None = None,
    num_fitness: int = 100,
    num_heldout: int | None = None,
    optimizer: str = "DiscreteLenglerOnePlusOne",
    budget: int = 100,
    feedback: str = "comparison",
    seed: int = 0,
    random_draws: int = 10,
    baseline_seed: int = 0,
    random_search: bool = True,
    sc_samples: int = 5,
    sc_temperature: float = 0.7,
    max_new_bytes: int = 320,
    batch_size: int | None = None,
    safeguard: bool = False,
    resume: bool = True,
    delta: float = 0.05,
    output: str = "runs/eppo",
    accelerator: str = "auto",
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Evolve the k-shot chain-of-thought pre-prompt of a language model; compare it with the baselines.

    Args:
        model: A ``litlab fit`` checkpoint of a language model, or a Hugging Face model directory.
        data: ``procedural_math[:key=value,...]`` or ``<file>.jsonl:num_train=..,num_selection=..,num_test=..``
            (GSM8K format): the pool is its train split, the fitness subset its selection split, the held-out
            set its test split. Use the spec the model was trained with.
        test_data: A GSM8K-format ``.jsonl`` of held-out problems (default: the test split of ``data``).
        shots: Demonstrations per pre-prompt, ``k``.
        shots_range: ``[low, high]``: also search ``k`` in this range (e.g. ``[2, 8]``).
        start: Pool indices of the starting pre-prompt (default: the first ``shots``).
        pool_size: Use only the first ``pool_size`` train problems as the pool.
        num_fitness: Selection problems the fitness is measured on.
        num_heldout: Held-out problems measured (default: all).
        optimizer: ``DiscreteLenglerOnePlusOne``, ``DiscreteOnePlusOne``, ``RandomSearch`` or
            ``PortfolioDiscreteOnePlusOne``.
        budget: Fitness evaluations, the start included.
        feedback: ``comparison`` (one bit per evaluation) or ``value``.
        seed: Seed of the optimizer and of the random search.
        random_draws: Random k-shot pre-prompts measured as a baseline.
        baseline_seed: Seed of the random k-shot draws and of the self-consistency sampling.
        random_search: Also run random search at the same budget.
        sc_samples: Samples per held-out problem for self-consistency (< 2: none).
        sc_temperature: Temperature of the self-consistency samples.
        max_new_bytes: Longest generated answer.
        batch_size: Problems generated together (default: all of a set at once, one prefix per candidate).
        safeguard: Keep the result only if its held-out accuracy is not below the start's.
        resume: Continue an interrupted search from the state files in ``output``.
        delta: Failure probability of the generalization bounds.
        output: Directory of the files.
        accelerator: ``auto``, ``cpu`` or ``gpu``.
        progress_bar: Show the search's progress bar.

    Returns:
        The report (also in ``<output>/report.json``).
    """
    callback = EPPO(
        data=data, test_data=test_data, shots=shots, shots_range=shots_range, start=start, pool_size=pool_size,
        num_fitness=num_fitness, num_heldout=num_heldout, max_new_bytes=max_new_bytes, batch_size=batch_size,
        random_draws=random_draws, baseline_seed=baseline_seed, random_search=random_search, sc_samples=sc_samples,
        sc_temperature=sc_temperature, optimizer=optimizer, budget=budget, seed=seed, feedback=feedback,
        safeguard=safeguard, resume=resume, output_dir=output, delta=delta, progress_bar=progress_bar)
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ConfigError(f"accelerator={accelerator!r} is not allowed: choose auto, cpu or gpu")
    began = time.perf_counter()
    lm = load_model(model)
    report = run_eppo(callback, lm, accelerator)
    report["model"] = model
    report["seconds"] = time.perf_counter() - began
    Path(callback.paths["report"]).write_text(json.dumps(report, indent=1) + "\n")
    print(format_eppo_report(report, callback.paths))
    return report


def run_eppo(callback: EPPO, lm: Any, accelerator: str = "cpu") -> dict[str, Any]:
    """Runs ``callback`` on a loaded language model in one process; returns its ``report.json``."""
    trainer = Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, enable_progress_bar=False,
                      default_root_dir=callback.output_dir)
    callback.run(trainer, lm)
    return json.loads(Path(callback.paths["report"]).read_text())


def format_eppo_report(report: dict[str, Any], paths: dict[str, str] | None = None) -> str:
    """The comparison as a few lines: every prompt's fitness and held-out accuracy, gains, bits and bound."""
    e = report["eppo"]
    sc = e["sc_samples"] > 1 and "heldout_sc" in e["chosen"]
    k = f"{e['shots']}" if e["shots_range"] is None else f"{e['shots_range'][0]}-{e['shots_range'][1]}"
    lines = [f"EPPO ({e['optimizer']}, {e['feedback']} feedback, budget {e['budget']}, k={k}, pool of "
             f"{e['pool_size']}): pre-prompt {e['chosen']['indices']}",
             f"{'':28}{'fitness (n=' + str(e['num_fitness']) + ')':>18}{'held-out (n=' + str(e['num_heldout']) + ')':>22}"
             + (f"{'self-consistency (' + str(e['sc_samples']) + ' samples)':>30}" if sc else "")]

    def row(name: str, m: dict[str, Any]) -> str:
        held = f"{m['heldout']:.3f} ± {m['heldout_se']:.3f}" if "heldout" in m else "-"
        text = f"{name:28}{m.get('selection', float('nan')):>18.3f}{held:>22}"
        if sc and "heldout_sc" in m:
            text += f"{m['heldout_sc']:.3f} ± {m['heldout_sc_se']:.3f}".rjust(30)
        return text

    lines += [row("zero-shot", e["zero_shot"]), row("start (first-k or given)", e["start"])]
    if "random" in e:
        r = e["random"]
        held = f"{r['heldout_mean']:.3f} (sd {r['heldout_sd']:.3f})" if "heldout_mean" in r else "-"
        selection = f"{r['selection_mean']:.3f} (sd {r['selection_sd']:.3f})"
        lines.append(f"{'random k-shot (' + str(len(r['draws'])) + ' draws)':28}{selection:>18}{held:>22}")
    if "random_search" in e:
        lines.append(row(f"random search ({e['random_search']['budget']} draws)", e["random_search"]))
    lines.append(row("EPPO", e["chosen"]))
    gains = [f"{g['gain']:+.3f} ± {g['se']:.3f} over {key[5:].replace('_', ' ')}"
             for key, g in e.get("heldout_gain", {}).items()]
    if gains:
        lines.append("held-out gain of EPPO (paired over problems): " + "; ".join(gains))
    if e.get("generalization_gap") is not None:
        lines.append(f"information: {e['bits']:.0f} bits told to the optimizer; with n={e['num_fitness']} fitness "
                     f"problems the held-out accuracy is, with probability {1 - e['delta']:.2f}, at most "
                     f"{e['generalization_gap']:.3f} below the fitness accuracy")
    lines.append(f"fitness computations {e['fitness_computations']} (cache hits {e['cache_hits']}), prompts over the "
                 f"context {e['context_overflow']}" + (f", {report['seconds']:.0f} s" if "seconds" in report else ""))
    if paths:
        lines.append(f"pre-prompt: {paths.get('preprompt_text')} (indices: {paths.get('preprompt_json')}); "
                     f"report: {paths.get('report')}")
    return "\n".join(lines)
