"""``litlab bboxer``: BBoxER (arXiv 2507.01752) on an existing language model, without training.

The model (a ``litlab fit`` checkpoint or a Hugging Face directory, :func:`~litlab.lightning_modules.loading.
load_model`) is post-trained by a seeded black-box optimizer told only comparisons: ``x`` scales the chosen
tensors, ``W ⊙ exp(x)`` (:mod:`litlab.evolution.modification`), and the fitness is exact-match accuracy on the
training problems by batched greedy generation. The report gives accuracy before and after on the training
(selection), held-out and transfer problems, the bound table (:mod:`litlab.evolution.privacy`) and, with
``audit``, the loss-based membership-inference attack (:mod:`litlab.evaluation.membership_inference`) on the
unmodified model, on BBoxER's best candidate and on a gradient fine-tuned copy
(:func:`litlab.methods.finetune_baseline.gradient_finetune`) trained on the same problems.

The problem sets are those of the :class:`~litlab.callbacks.bboxer.BBoxER` callback (same arguments).
Under ``torchrun`` (``WORLD_SIZE > 1``), a gloo process group is started and the problem batches are dealt to
the ranks; every rank ends with the same model and rank 0 writes the files: ``report.json``, ``fitness.png``,
``state.pt`` (the engine's state every ``checkpoint_every`` evaluations: a rerun with the same ``output``
continues it) and, when the result is kept and ``save_model``, the changed model under ``model/`` (a Hugging
Face directory for a directory input, else a checkpoint ``bboxer.ckpt``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from litlab.callbacks.bboxer import ProblemSets, load_problem_sets
from litlab.errors import ConfigError, check_int
from litlab.evaluation.math_scoring import MathAccuracy, binomial_se, problem_batches
from litlab.evaluation.membership_inference import loss_attack, solution_losses
from litlab.evolution import EvolutionEngine, Fitness, SearchSpace, shard
from litlab.evolution import distributed as ranks
from litlab.evolution.modification import check_places, modification_space
from litlab.evolution.optimizer import check_optimizer_name
from litlab.evolution.privacy import bounds_table, format_bounds
from litlab.evolution.safeguard import safeguard_keeps
from litlab.lightning_modules.loading import load_model
from litlab.methods.finetune_baseline import gradient_finetune

SEARCH_KEYS = ("where", "tensors", "norm_granularity", "scale", "box", "subspace_dim", "projection", "optimizer",
               "budget", "num_workers", "seed", "feedback", "delta", "safeguard", "max_new_bytes", "batch_size",
               "poisoning_k", "secret_bits", "checkpoint_every", "resume", "progress_bar")


@dataclass
class BBoxERRun:
    """A finished run: its report, its search space over the model, and its best candidate."""

    report: dict[str, Any]
    space: SearchSpace
    best: Any


def run_bboxer(lm: Any, sets: ProblemSets, output: str | Path | None = None, **search: Any) -> BBoxERRun:
    """BBoxER on a loaded model (changed in place when the result is kept).

    Args:
        lm: The language model (``generate_batch``; its parameters are scaled in place).
        sets: The problems (:func:`~litlab.callbacks.bboxer.load_problem_sets`).
        output: Directory of ``report.json``, ``fitness.png`` and ``state.pt`` (None: no files, no resume).
        **search: The search arguments of :func:`bboxer` (``SEARCH_KEYS``).
    """
    unknown = sorted(set(search) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"run_bboxer: unknown arguments {unknown}; allowed: {list(SEARCH_KEYS)}")
    args = {**_defaults(), **search}
    args["where"] = check_places(args["where"])
    space = modification_space(lm, args["where"], args["tensors"], args["norm_granularity"], args["scale"],
                               args["box"], args["subspace_dim"], args["projection"], args["seed"])
    fitness = Fitness(MathAccuracy(sets.demonstrations, args["max_new_bytes"]))
    size = args["batch_size"]
    train, held, transfer = (shard(problem_batches(items, size)) if items else None
                             for items in (sets.train, sets.heldout, sets.transfer))
    transfer_before = None if transfer is None else fitness.evaluate(lm, transfer).value
    out = None if output is None else Path(output)
    clock = {"seconds": 0.0}
    engine = EvolutionEngine(
        lm, space, fitness, optimizer=args["optimizer"], budget=args["budget"], num_workers=args["num_workers"],
        seed=args["seed"], feedback=args["feedback"],
        heldout=None if held is None else timed(lambda model: fitness.evaluate(model, held).value, clock),
        checkpoint_path=None if out is None else out / "state.pt", checkpoint_every=args["checkpoint_every"],
        resume=args["resume"], apply_best=False, delta=args["delta"], progress_bar=args["progress_bar"])
    result = engine.run(train)
    changed = not space.is_identity(result.best)
    kept = safeguard_keeps(result) if args["safeguard"] and held is not None else True
    transfer_after = transfer_before
    if transfer is not None and changed:
        with space.applied(result.best):
            transfer_after = fitness.evaluate(lm, transfer).value
    if kept:
        space.apply(result.best)
    bounds = bounds_table(result.bits, result.num_examples, result.history, result.feedback, result.delta,
                          args["poisoning_k"], args["secret_bits"], result.mode)
    counts = {"selection": len(sets.train), "heldout": len(sets.heldout), "transfer": len(sets.transfer)}
    scores = {"selection": (result.selection_before, result.selection_after),
              "heldout": (result.heldout_before, result.heldout_after), "transfer": (transfer_before, transfer_after)}
    report: dict[str, Any] = {
        "accuracy": {name: {"before": b, "after": a, "returned": a if kept else b, "n": counts[name],
                            "se_before": None if b is None else binomial_se(b, counts[name]),
                            "se_after": None if a is None else binomial_se(a, counts[name])}
                     for name, (b, a) in scores.items()},
        "changed": changed, "kept": kept, "bounds": bounds, "bounds_markdown": format_bounds(bounds),
        "search": {k: v for k, v in args.items() if k not in ("progress_bar",)},
        "dimension": space.dimension, "space": space.describe(), "shots": len(sets.demonstrations),
        "seconds": {"search": result.seconds_total, "fitness": result.seconds_fitness, "heldout": clock["seconds"],
                    "overhead_share": overhead_share(result.seconds_total - clock["seconds"], result.seconds_fitness)},
        "world_size": ranks.world_size(), "result": result.to_dict(),
    }
    if out is not None and ranks.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        result.plot(out / "fitness.png")
        report["plot"] = str(out / "fitness.png")
    return BBoxERRun(report, space, result.best)


def timed(fn: Any, clock: dict[str, float]) -> Any:
    """``fn`` that adds its wall time to ``clock["seconds"]``."""
    def call(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            clock["seconds"] += time.perf_counter() - start
    return call


def overhead_share(search_seconds: float, fitness_seconds: float) -> float:
    """Share of the search's wall time (held-out scoring excluded) spent outside the fitness function."""
    return 0.0 if search_seconds <= 0 else max(0.0, 1.0 - fitness_seconds / search_seconds)


def membership_audit(base: Any, post_trained: Any, run: BBoxERRun, sets: ProblemSets, finetune_steps: int,
                     finetune_lr: float, seed: int, max_new_bytes: int, batch_size: int) -> dict[str, Any]:
    """The loss attack on the unmodified model, on BBoxER's best candidate and on two gradient fine-tuned copies:
    ``gradient_matched`` stops (checks every 4 steps) once its accuracy on the training problems reaches that of
    BBoxER's best candidate, ``gradient`` takes all ``finetune_steps``.

    Args:
        base: A copy of the unmodified model.
        post_trained: The model BBoxER searched on.
        run: The run (its best candidate is applied for the measurement when the safeguard restored the model).
        sets: The problems (members: ``train``; non-members: ``nonmembers``; accuracy: ``heldout``).
        finetune_steps: AdamW steps of the gradient baselines (at most, for the matched one).
        finetune_lr: Its learning rate.
        seed: Seed of its problem order.
        max_new_bytes: Longest generated solution (held-out accuracy of the baseline).
        batch_size: Problems generated or scored together.
    """
    if not sets.nonmembers:
        raise ConfigError("the membership audit needs non-members: num_nonmembers must be >= 1")
    fitness = Fitness(MathAccuracy(sets.demonstrations, max_new_bytes))

    def attack(model: Any) -> dict[str, Any]:
        members = solution_losses(model, sets.train, batch_size)
        return loss_attack(members, solution_losses(model, sets.nonmembers, batch_size))

    def accuracy(model: Any, problems: Sequence[Any]) -> float | None:
        return fitness.evaluate(model, problem_batches(problems, batch_size)).value if problems else None

    audit: dict[str, Any] = {"base": attack(base)}
    if run.report["kept"]:
        audit["bboxer"] = attack(post_trained)
    else:
        with run.space.applied(run.best):
            audit["bboxer"] = attack(post_trained)
    target = run.report["accuracy"]["selection"]["after"]
    size = min(16, len(sets.train))
    for name, stop in (("gradient_matched", lambda model: accuracy(model, sets.train) >= target), ("gradient", None)):
        tuned, summary = gradient_finetune(base, sets.train, steps=finetune_steps, lr=finetune_lr, batch_size=size,
                                           seed=seed, stop=stop)
        audit[name] = {**attack(tuned), "finetune": summary, "accuracy_selection": accuracy(tuned, sets.train),
                       "accuracy_heldout": accuracy(tuned, sets.heldout)}
    audit["gradient_matched"]["target_selection_accuracy"] = target
    return audit


def bboxer(
    *,
    model: str,
    data: str = "procedural_math",
    train_split: Literal["train", "selection", "test"] = "selection",
    num_train: int = 128,
    heldout_split: Literal["train", "selection", "test"] = "test",
    num_heldout: int = 256,
    transfer: str | None = None,
    num_transfer: int = 256,
    shots: int = 0,
    where: list[str] | str | None = None,
    tensors: list[str] | None = None,
    norm_granularity: Literal["channel", "tensor"] = "channel",
    scale: float = 0.02,
    box: float | None = 0.5,
    subspace_dim: int = 16,
    projection: Literal["sparse", "gaussian"] = "sparse",
    optimizer: str = "OnePlusOne",
    budget: int = 40,
    num_workers: int = 1,
    seed: int = 0,
    feedback: Literal["value", "comparison"] = "comparison",
    delta: float = 0.05,
    safeguard: bool = True,
    poisoning_k: int = 1,
    secret_bits: float = 128.0,
    max_new_bytes: int = 320,
    batch_size: int = 32,
    audit: bool = False,
    num_nonmembers: int = 256,
    finetune_steps: int = 24,
    finetune_lr: float = 3e-4,
    output: str = "runs/bboxer",
    resume: bool = True,
    checkpoint_every: int = 10,
    save_model: bool = True,
    progress_bar: bool = True,
    threads: int = 0,
) -> dict[str, Any]:
    """BBoxER on an existing language model: black-box post-training told only comparisons, with its bounds.

    Args:
        model: A ``litlab fit`` checkpoint of a language model, or a Hugging Face model directory.
        data: Math problems spec; use the spec the model was trained with.
        train_split: Split whose first ``num_train`` problems are the fitness (the training problems).
        num_train: Training problems (``n`` of the bounds).
        heldout_split: Split of the held-out problems (after the training ones when it is the same split).
        num_heldout: Held-out problems (0: none, no safeguard).
        transfer: Spec of a variant problem set (other templates or number ranges), its test split.
        num_transfer: Transfer problems.
        shots: Solved ``train``-split problems in the prompt (0: zero-shot).
        where: Places where x acts: ``norms``, ``layer_scales``, ``channel_scales``, ``subspace`` (default norms).
        tensors: Parameter names or glob patterns of the tensors of the other places.
        norm_granularity: ``channel`` or ``tensor`` scales of the norms.
        scale: Initial mutation size of x.
        box: x stays in ``[-box, box]`` (null: unbounded).
        subspace_dim: Dimension of the random subspace.
        projection: ``sparse`` or ``gaussian`` random subspace.
        optimizer: ``OnePlusOne``, ``DiagonalCMA``, ``CMA``, ``TripleOnePlusOne``, ``TripleDiagonalCMA``,
            ``Portfolio``, ``Zero`` (the no-change control), or any nevergrad name.
        budget: Evaluations, the unmodified model included.
        num_workers: Candidates told together per step.
        seed: Seed of the optimizer, the subspace, the demonstrations and the audit's fine-tuning.
        feedback: ``comparison`` (only rankings are told) or ``value``.
        delta: Failure probability of the generalization bound.
        safeguard: Keep the result only if held-out accuracy does not drop.
        poisoning_k: Altered problems the poisoning certificate checks.
        secret_bits: Entropy of the secret of the extraction bound.
        max_new_bytes: Longest generated solution.
        batch_size: Problems generated together.
        audit: Also run the membership-inference audit against a gradient fine-tuned copy.
        num_nonmembers: Fresh problems of ``heldout_split`` (after the held-out ones) as the audit's non-members.
        finetune_steps: AdamW steps of the audit's gradient baseline.
        finetune_lr: Its learning rate.
        output: Directory of the files.
        resume: Continue from ``<output>/state.pt`` when it exists.
        checkpoint_every: Evaluations between writes of ``state.pt``.
        save_model: Write the changed model under ``<output>/model`` when the result is kept.
        progress_bar: Show a progress bar.
        threads: Torch CPU threads (0: torch's default).

    Returns:
        The report (also ``<output>/report.json``).
    """
    for key, value, low in (("num_nonmembers", num_nonmembers, 0), ("finetune_steps", finetune_steps, 1)):
        check_int(key, value, low)
    check_optimizer_name(optimizer)
    _init_distributed()
    set_threads(threads)
    sets = load_problem_sets(data, train_split, num_train, heldout_split, num_heldout, transfer, num_transfer, shots,
                             seed, num_nonmembers if audit else 0)
    lm = load_model(model)
    lm.eval()
    base = copy.deepcopy(lm) if audit else None
    run = run_bboxer(lm, sets, output, where=where or ["norms"], tensors=tensors,
                        norm_granularity=norm_granularity, scale=scale, box=box, subspace_dim=subspace_dim,
                        projection=projection, optimizer=optimizer, budget=budget, num_workers=num_workers, seed=seed,
                        feedback=feedback, delta=delta, safeguard=safeguard, max_new_bytes=max_new_bytes,
                        batch_size=batch_size, poisoning_k=poisoning_k, secret_bits=secret_bits,
                        checkpoint_every=checkpoint_every, resume=resume, progress_bar=progress_bar)
    report = run.report
    if audit:
        report["audit"] = membership_audit(base, lm, run, sets, finetune_steps, finetune_lr, seed, max_new_bytes,
                                           batch_size)
    report.update(model=model, data=data, transfer=transfer)
    if ranks.rank() == 0:
        out = Path(output)
        if save_model and report["kept"] and report["changed"]:
            report["saved_model"] = save_changed_model(lm, model, out / "model")
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        print(format_report(report))
    return report


def save_changed_model(lm: Any, source: str, out: Path) -> str:
    """Writes the changed model like its source: a Hugging Face directory, or a checkpoint file."""
    out.mkdir(parents=True, exist_ok=True)
    if os.path.isdir(source):
        lm.hf_model.save_pretrained(out)
        for item in Path(source).iterdir():
            if item.is_file() and not (out / item.name).exists():
                shutil.copy2(item, out / item.name)
        return str(out)
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = {k: v.detach().cpu() for k, v in lm.state_dict().items()}
    path = out / "bboxer.ckpt"
    torch.save(checkpoint, path)
    return str(path)


def format_report(report: dict[str, Any]) -> str:
    """Accuracy before/after per set, the bound table and the audit, as Markdown."""
    lines = ["| set | n | accuracy before | after |", "|---|---:|---:|---:|"]
    for name, row in report["accuracy"].items():
        if row["before"] is not None:
            lines.append(f"| {name} | {row['n']} | {row['before']:.3f} ± {row['se_before']:.3f} | "
                         f"{row['after']:.3f} ± {row['se_after']:.3f} |")
    search = report["search"]
    lines.append(f"\n{'kept' if report['kept'] else 'restored by the safeguard'} (changed: {report['changed']}); "
                 f"{search['optimizer']}, {search['feedback']} feedback, budget {search['budget']}, "
                 f"where {search['where']}, dimension {report['dimension']}, search {report['seconds']['search']:.1f} s "
                 f"(outside the fitness: {report['seconds']['overhead_share']:.2%})\n")
    lines.append(report["bounds_markdown"])
    if "audit" in report:
        lines += ["", audit_table(report["audit"], report["accuracy"])]
    return "\n".join(lines)


def audit_table(audit: dict[str, Any], accuracy: dict[str, Any]) -> str:
    """The membership-inference audit as Markdown: accuracy and the loss attack for each model."""
    held = {"base": accuracy["heldout"]["before"], "bboxer": accuracy["heldout"]["after"]}
    train = {"base": accuracy["selection"]["before"], "bboxer": accuracy["selection"]["after"]}
    labels = {"base": "unmodified", "bboxer": "BBoxER best candidate"}
    lines = ["| model | training acc. | held-out acc. | attack AUC | TPR @ 1% FPR | TPR @ 0.1% FPR |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in audit.items():
        if name.startswith("gradient"):
            steps = row["finetune"]["steps"]
            label = f"gradient FT, {steps} steps" + (" (matched training acc.)" if name == "gradient_matched" else "")
            train[name], held[name] = row["accuracy_selection"], row["accuracy_heldout"]
        else:
            label = labels[name]
        tpr = row["tpr_at_fpr"]
        acc = [("–" if v is None else f"{v:.3f}") for v in (train[name], held[name])]
        lines.append(f"| {label} | {acc[0]} | {acc[1]} | {row['auc']:.3f} ± {row['auc_se']:.3f} | "
                     f"{tpr['0.01']:.3f} | {tpr['0.001']:.3f} |")
    first = next(iter(audit.values()))
    lines.append(f"\n{first['members']} members (the training problems), {first['nonmembers']} non-members (fresh "
                 f"problems), FPR resolution {first['fpr_resolution']:.4f}")
    return "\n".join(lines)


def _defaults() -> dict[str, Any]:
    return {"where": ["norms"], "tensors": None, "norm_granularity": "channel", "scale": 0.02, "box": 0.5,
            "subspace_dim": 16, "projection": "sparse", "optimizer": "OnePlusOne", "budget": 40, "num_workers": 1,
            "seed": 0, "feedback": "comparison", "delta": 0.05, "safeguard": True, "max_new_bytes": 320,
            "batch_size": 32, "poisoning_k": 1, "secret_bits": 128.0, "checkpoint_every": 10, "resume": True,
            "progress_bar": False}


def _init_distributed() -> None:
    """Starts a gloo process group under ``torchrun`` (``WORLD_SIZE > 1``) unless one exists."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` unless ``threads`` is 0 (torch's default)."""
    check_int("threads", threads, 0)
    if threads:
        torch.set_num_threads(threads)
