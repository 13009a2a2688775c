"""``litlab retrofit_lm``: AfterLearnER (arXiv 2410.11330) on a trained language model against generative exact match.

A character-level task of :mod:`litlab.evaluation.char_tasks` (built from held-out documents) is turned into
a *generative* one: the model continues the example's few-shot prompt greedily, the prediction is the
continuation up to the first newline (or EOS, at most ``len(target) + max_extra_bytes`` bytes), and the score
is exact match with the correct answer, a non-differentiable metric. The examples are split (seeded) into a
selection set, which the :class:`~litlab.evolution.EvolutionEngine` optimizes on with comparison feedback, and
a disjoint held-out set, which only measures the identity and the result.

The ℵ-parameters (``space``):

- ``"norms"``: multiplicative scales ``exp(x)`` of the RMSNorm weights (one per tensor, or one per channel);
- ``"decoding"``: logit biases added before the argmax of greedy decoding, which change what greedy decoding
  emits (a temperature would not): on the newline byte (when to stop), the space and the double quote (the
  tiny models' usual formatting errors), on every byte of the question line (a copy bias: the answers of
  ``join``/``delete``/``reverse``/... are made of the question's letters) and on every byte of the few-shot
  answers (an answer-format bias: ``y``/``n`` for ``contains``);
- ``"both"``: the two together.

The fitness, greedy exact match (computed by one teacher-forced pass for byte-level models, equal to real
decoding), is :class:`~litlab.evaluation.exact_match.GreedyExactMatch`, with the decoding biases of :class:`DecodingBiases`. ``check_generation`` re-measures the
held-out set by real cached decoding before and after and reports both.

The split is :func:`litlab.evolution.split.selection_split`. Safeguard (:mod:`litlab.evolution.safeguard`): if
the held-out exact match of the result is below that of the unmodified model, the model and the decoding
settings stay unchanged (``kept: false``); the report says which.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from litlab.errors import ConfigError
from litlab.evaluation.char_tasks import CHAR_TASKS, CharTaskExample, make_char_tasks
from litlab.evaluation.exact_match import (
    GreedyExactMatch,
    cut_prediction,
    generated_exact_match,
    target_of,
)
from litlab.evolution import (
    EvolutionEngine,
    Fitness,
    HyperParameters,
    ParameterSpace,
    SearchSpace,
)
from litlab.evolution.optimizer import check_optimizer_name
from litlab.evolution.safeguard import safeguard_keeps
from litlab.evolution.split import selection_split
from litlab.models.lm.transformer import RMSNorm

SPACES = ("norms", "decoding", "both")
GRANULARITIES = ("tensor", "channel")

# Decoding hyperparameter -> the bytes whose logits it shifts (``None``: computed from the prompt, see
# ``prompt_bytes``: copy_bias, the bytes of the question line; answer_bias, those of the solved answers).
BIAS_BYTES: dict[str, bytes | None] = {"newline_bias": b"\n", "space_bias": b" ", "quote_bias": b'"',
                                       "copy_bias": None, "answer_bias": None}


def decoding_hyperparameters(limit: float = 4.0) -> HyperParameters:
    """The decoding settings searched with ``space="decoding"``: logit biases in ``[-limit, limit]``, default 0."""
    return HyperParameters({name: (0.0, -limit, limit) for name in BIAS_BYTES})


class DecodingBiases:
    """The per-example logit bias of the decoding hyperparameters (the ``logit_bias`` of ``GreedyExactMatch``).

    Args:
        hyperparameters: The searched biases (:func:`decoding_hyperparameters`), read at every call.
        encode: The model's ``encode(bytes) -> ids`` (a byte's ids get its bias).
    """

    def __init__(self, hyperparameters: HyperParameters, encode: Any) -> None:
        self.hp = hyperparameters
        self.encode = encode

    def __call__(self, prompt: str, vocab_size: int) -> torch.Tensor | None:
        """The ``[vocab_size]`` float32 bias of one example, or ``None`` when every bias is 0."""
        active = [name for name in BIAS_BYTES if name in self.hp.defaults and self.hp[name] != 0.0]
        if not active:
            return None
        bias = torch.zeros(vocab_size)
        for name in active:
            chars = BIAS_BYTES[name]
            chars = prompt_bytes(prompt, name) if chars is None else chars
            ids = sorted({i for c in chars for i in self.encode(bytes([c]))})
            bias[ids] += float(self.hp[name])
        return bias


def prompt_bytes(prompt: str, name: str) -> bytes:
    """The bytes a prompt-dependent bias shifts: ``copy_bias``, the question (the prompt's last line);
    ``answer_bias``, the solved examples' answers (on each earlier line, what follows the last ``"`` and its
    two-byte separator ``": "`` or ``"? "``: the answer format of :mod:`litlab.evaluation.char_tasks`)."""
    *shots, question = prompt.split("\n")
    if name == "copy_bias":
        return question.encode()
    return "".join(line.rsplit('"', 1)[-1][2:] for line in shots).encode()


def _load_documents(config: str | None, max_bytes: int | None) -> list[bytes]:
    from litlab.datamodules.text import TextDataModule

    if config is None:
        data = TextDataModule(max_bytes=max_bytes)
    else:
        from importlib import import_module

        import yaml

        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config={config!r}: no such file")
        spec = (yaml.safe_load(path.read_text()) or {}).get("data")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ConfigError(f"config={config!r} has no data: class_path: ... section")
        module, name = spec["class_path"].rsplit(".", 1)
        data = getattr(import_module(module), name)(**(spec.get("init_args") or {}))
        if not hasattr(data, "documents"):
            raise ConfigError(f"config={config!r}: {spec['class_path']} has no documents(split) method")
    return data.documents("val") + data.documents("test")


def retrofit_language_model(
    ckpt_path: str,
    output: str = "runs/retrofit_lm",
    task: str = "join",
    space: Literal["norms", "decoding", "both"] = "norms",
    granularity: Literal["tensor", "channel"] = "tensor",
    num_selection: int = 60,
    num_heldout: int = 60,
    num_shots: int = 3,
    budget: int = 150,
    optimizer: str = "OnePlusOne",
    scale: float = 0.1,
    box: float | None = 1.0,
    bias_limit: float = 4.0,
    max_extra_bytes: int = 4,
    seed: int = 0,
    delta: float = 0.05,
    config: str | None = None,
    max_bytes: int | None = None,
    safeguard: bool = True,
    check_generation: bool = True,
    save_checkpoint: bool = True,
) -> dict[str, Any]:
    """Retrofit a trained language model (AfterLearnER) against exact match of greedy generation on a char task.

    Args:
        ckpt_path: Checkpoint of ``litlab fit`` with an AUNetLM or TransformerLM.
        output: Directory of ``report.json``, ``fitness.png`` and (if kept) ``retrofit.ckpt``.
        task: Character task of :mod:`litlab.evaluation.char_tasks` (e.g. ``join``, ``delete``).
        space: ``norms`` (RMSNorm weight scales), ``decoding`` (greedy logit biases) or ``both``.
        granularity: ``tensor`` (one scale per RMSNorm weight) or ``channel`` (one per entry).
        num_selection: Examples the search is evaluated on.
        num_heldout: Disjoint examples measured before and after only.
        num_shots: Solved examples in each prompt.
        budget: Evaluations of the search, the identity included.
        optimizer: nevergrad optimizer (``OnePlusOne``: one bit per evaluation under comparison feedback).
        scale: Initial mutation size of the log-scales.
        box: Log-scales stay in the box ``[-box, box]`` (``null``: unbounded).
        bias_limit: Decoding biases stay in ``[-bias_limit, bias_limit]``.
        max_extra_bytes: Bytes generated beyond the target's length (>= 1).
        seed: Seed of the tasks, of the split and of the optimizer.
        delta: Failure probability of the reported generalization gap.
        config: YAML config whose ``data`` section gives the held-out documents (``null``: TextDataModule
            defaults, the embedded corpus); the ``val`` and ``test`` documents are used.
        max_bytes: Read at most this many bytes of the corpus (only without ``config``).
        safeguard: Restore the model if the held-out exact match drops.
        check_generation: Also measure the held-out set by real KV-cached decoding before and after.
        save_checkpoint: Write ``retrofit.ckpt`` (loadable like the input) when the result is kept.

    Returns:
        The report (also written to ``<output>/report.json``).
    """
    from litlab.lightning_modules.loading import load_language_model

    if task not in CHAR_TASKS:
        raise ConfigError(f"task={task!r} is unknown: choose from {sorted(CHAR_TASKS)}")
    if space not in SPACES:
        raise ConfigError(f"space={space!r} is not allowed: choose from {SPACES}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity={granularity!r} is not allowed: choose from {GRANULARITIES}")
    for name, value, low in (("num_shots", num_shots, 0), ("budget", budget, 1), ("seed", seed, 0),
                             ("max_extra_bytes", max_extra_bytes, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name}={value!r} is not allowed: must be an integer >= {low}")
    for name, value in (("scale", scale), ("bias_limit", bias_limit)) + ((("box", box),) if box else ()):
        if not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{name}={value!r} is not allowed: must be a number > 0")
    if box is not None and not box > 0:
        raise ConfigError(f"box={box!r} is not allowed: must be a number > 0 or null")
    check_optimizer_name(optimizer)
    for name, value in (("num_selection", num_selection), ("num_heldout", num_heldout)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r} is not allowed: must be an integer >= 1")

    start = time.perf_counter()
    model = load_language_model(ckpt_path)
    model.eval()
    documents = _load_documents(config, max_bytes)
    examples = make_char_tasks(documents, tasks=[task], examples_per_task=num_selection + num_heldout,
                               num_shots=num_shots, seed=seed)
    report = retrofit_examples(model, examples, output=output, space=space, granularity=granularity,
                               num_selection=num_selection, num_heldout=num_heldout, budget=budget,
                               optimizer=optimizer, scale=scale, box=box, bias_limit=bias_limit,
                               max_extra_bytes=max_extra_bytes, seed=seed, delta=delta, safeguard=safeguard,
                               check_generation=check_generation)
    report.update(ckpt_path=str(ckpt_path), task=task, num_shots=num_shots, config=config)
    if save_checkpoint and report["kept"] and report["changed"]:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        checkpoint["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        checkpoint["litlab_retrofit"] = {"best": report["result"]["best"], "report": "report.json"}
        path = Path(output) / "retrofit.ckpt"
        torch.save(checkpoint, path)
        report["checkpoint"] = str(path)
    report["seconds"] = time.perf_counter() - start
    Path(output, "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(format_report(report))
    return report


def retrofit_examples(
    model: Any,
    examples: Sequence[CharTaskExample],
    output: str | Path | None = None,
    space: str = "norms",
    granularity: str = "tensor",
    num_selection: int = 60,
    num_heldout: int = 60,
    budget: int = 150,
    optimizer: str = "OnePlusOne",
    scale: float = 0.1,
    box: float | None = 1.0,
    bias_limit: float = 4.0,
    max_extra_bytes: int = 4,
    seed: int = 0,
    delta: float = 0.05,
    safeguard: bool = True,
    check_generation: bool = False,
) -> dict[str, Any]:
    """The search of :func:`retrofit_language_model` on a loaded model and given examples (changes ``model``).

    Args:
        model: A loaded language model (its RMSNorm weights may be changed in place).
        examples: Char-task examples; ``num_selection + num_heldout`` of them are used.
        output: Directory of ``fitness.png`` and ``evolution.json`` (``None``: no files).
        space: ``norms``, ``decoding`` or ``both``.
        granularity: ``tensor`` or ``channel``.
        num_selection: Selection examples.
        num_heldout: Held-out examples.
        budget: Evaluations.
        optimizer: nevergrad optimizer.
        scale: Initial mutation size of the log-scales.
        box: The log-scales stay in ``[-box, box]``.
        bias_limit: Bound of the decoding biases.
        max_extra_bytes: Bytes generated beyond the target's length.
        seed: Seed of the split and the optimizer.
        delta: Failure probability of the generalization gap.
        safeguard: Restore the model when held-out exact match drops.
        check_generation: Re-measure held-out by real decoding before and after.

    Returns:
        The report: scores before/after, ``kept``, the engine's result, the split and timings.
    """
    if space not in SPACES:
        raise ConfigError(f"space={space!r} is not allowed: choose from {SPACES}")
    selection_idx, heldout_idx = selection_split(len(examples), num_selection, num_heldout, seed)
    selection, heldout = [examples[i] for i in selection_idx], [examples[i] for i in heldout_idx]
    parts: dict[str, Any] = {}
    if space in ("norms", "both"):
        parts["norms"] = ParameterSpace(model, module_type=RMSNorm, select="*.weight", mode="multiplicative",
                                        granularity=granularity, scale=scale, box=box)
    hp = decoding_hyperparameters(bias_limit) if space in ("decoding", "both") else None
    if hp is not None:
        parts["decoding"] = hp
    search = SearchSpace(parts)
    metric = GreedyExactMatch(model, None if hp is None else DecodingBiases(hp, model.encode),
                              max_extra_bytes=max_extra_bytes, cache_logits="norms" not in parts)
    generation: dict[str, Any] = {}
    if check_generation:
        tic = time.perf_counter()
        generation["heldout_before"] = float(generated_exact_match(metric, heldout).mean())
        generation["seconds"] = time.perf_counter() - tic
    batches = [selection[i:i + metric.batch_size] for i in range(0, len(selection), metric.batch_size)]
    engine = EvolutionEngine(model, search, Fitness(metric), optimizer=optimizer, budget=budget, seed=seed,
                             feedback="comparison", heldout=lambda m: metric.mean(heldout), delta=delta,
                             apply_best=False)
    result = engine.run(batches)
    changed = not search.is_identity(result.best)
    kept = safeguard_keeps(result) if safeguard else True
    if kept:
        search.apply(result.best)
    report: dict[str, Any] = {
        "space": space, "granularity": granularity, "fast_exact_match": metric.fast,
        "num_selection": len(selection), "num_heldout": len(heldout),
        "selection_before": result.selection_before, "selection_after": result.selection_after,
        "heldout_before": result.heldout_before, "heldout_after": result.heldout_after,
        "changed": changed, "kept": kept, "bits": result.bits, "generalization_gap": result.generalization_gap, "delta": delta,
        "budget": budget, "optimizer": optimizer, "feedback": "comparison", "seed": seed,
        "search_seconds": result.seconds_total,
        "selection_prompts": [ex.prompt for ex in selection], "heldout_prompts": [ex.prompt for ex in heldout],
        "result": result.to_dict(),
    }
    if check_generation:
        tic = time.perf_counter()
        generation["heldout_after"] = float(generated_exact_match(metric, heldout).mean())
        generation["seconds"] += time.perf_counter() - tic
        generation["samples"] = [{"target": target_of(ex), "prediction": cut_prediction(metric.generate(ex)).decode(
            errors="replace")} for ex in heldout[:5]]
        report["generation"] = generation
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        result.to_json(out / "evolution.json")
        result.plot(out / "fitness.png")
        report["plot"] = str(out / "fitness.png")
    return report



def format_report(report: dict[str, Any]) -> str:
    """One Markdown table row set of a report."""
    lines = ["| set | exact match before | after |", "|---|---:|---:|"]
    for name, key in (("selection", "selection"), ("held-out", "heldout")):
        lines.append(f"| {name} ({report['num_' + key]}) | {report[key + '_before']:.3f} | "
                     f"{report[key + '_after']:.3f} |")
    gen = report.get("generation")
    if gen:
        lines.append(f"| held-out, real decoding | {gen['heldout_before']:.3f} | {gen['heldout_after']:.3f} |")
    gap = "n/a" if report["generalization_gap"] is None else f"{report['generalization_gap']:.3f}"
    lines.append(f"\n{'kept' if report['kept'] else 'restored'} (changed: {report['changed']}); "
                 f"{report['bits']:.0f} bits, generalization gap {gap} (delta {report['delta']}), budget {report['budget']}, "
                 f"{report['optimizer']}, space {report['space']}, search {report['search_seconds']:.1f} s")
    return "\n".join(lines)
