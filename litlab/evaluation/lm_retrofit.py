"""``litlab retrofit_lm``: AfterLearnER on a trained language model against generative exact match.

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

Fast exact match: for a byte-level model, greedy decoding reproduces the target iff the (biased) argmax at
every target position equals the target byte under teacher forcing and the argmax after it is a newline or
EOS (by induction on the generated prefix). One batched forward pass over ``prompt + target`` per example
therefore gives exactly the exact match of greedy generation, ~50x faster than decoding byte by byte; other
tokenizers decode for real (KV-cached). ``check_generation`` re-measures the held-out set by real cached
decoding before and after and reports both.

Safeguard: if the held-out exact match of the result is below that of the unmodified model, the model and the
decoding settings are restored (``kept: false``); the report says which.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.evaluation.char_tasks import CHAR_TASKS, CharTaskExample, make_char_tasks
from litlab.evolution import (
    EvolutionEngine,
    Fitness,
    HyperParameters,
    ParameterSpace,
    SearchSpace,
)
from litlab.evolution.optimizer import check_optimizer_name
from litlab.models.transformer import RMSNorm

SPACES = ("norms", "decoding", "both")
GRANULARITIES = ("tensor", "channel")
NEWLINE = b"\n"
# Decoding hyperparameter -> the bytes whose logits it shifts (``None``: computed from the prompt, see
# ``prompt_bytes``: copy_bias, the bytes of the question line; answer_bias, those of the solved answers).
BIAS_BYTES: dict[str, bytes | None] = {"newline_bias": b"\n", "space_bias": b" ", "quote_bias": b'"',
                                       "copy_bias": None, "answer_bias": None}


def target_of(example: CharTaskExample) -> str:
    """The correct answer of ``example`` (the generation target)."""
    return example.choices[example.answer]


def cut_prediction(generated: bytes) -> bytes:
    """The prediction in a continuation: everything before the first newline."""
    return generated.split(NEWLINE, 1)[0]


def exact_match(generated: bytes | str, target: bytes | str) -> bool:
    """Whether the continuation, cut at its first newline, is exactly ``target``."""
    generated = generated.encode() if isinstance(generated, str) else generated
    target = target.encode() if isinstance(target, str) else target
    return cut_prediction(generated) == target


def split_examples(
    examples: Sequence[CharTaskExample], num_selection: int, num_heldout: int, seed: int = 0
) -> tuple[list[CharTaskExample], list[CharTaskExample]]:
    """A seeded split of ``examples`` into a selection set and a disjoint held-out set.

    Args:
        examples: The examples (each used at most once).
        num_selection: Examples of the selection set.
        num_heldout: Examples of the held-out set.
        seed: Seed of the shuffle.

    Returns:
        ``(selection, heldout)``.
    """
    for name, value in (("num_selection", num_selection), ("num_heldout", num_heldout)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r} is not allowed: must be an integer >= 1")
    if num_selection + num_heldout > len(examples):
        raise ConfigError(f"num_selection + num_heldout = {num_selection + num_heldout} exceeds the "
                          f"{len(examples)} examples available")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    selection = [examples[i] for i in order[:num_selection]]
    heldout = [examples[i] for i in order[num_selection:num_selection + num_heldout]]
    return selection, heldout


def decoding_hyperparameters(limit: float = 4.0) -> HyperParameters:
    """The decoding settings searched with ``space="decoding"``: logit biases in ``[-limit, limit]``, default 0."""
    return HyperParameters({name: (0.0, -limit, limit) for name in BIAS_BYTES})


class GreedyExactMatch:
    """Exact match of (biased) greedy decoding on char-task examples: the fitness and the held-out metric.

    Args:
        model: A :class:`~litlab.lightning_modules.language_model.LanguageModel`.
        hyperparameters: The decoding biases read at every evaluation (``None``: no bias).
        max_extra_bytes: Bytes generated beyond the target's length (>= 1: room for the newline).
        fast: Teacher-forced exact match (byte-level models; ``None``: whenever the model is byte-level).
        batch_size: Examples per forward pass on the fast path.
        cache_logits: Keep the fast path's teacher-forced logits per batch of examples and reuse them: only for
            searches that leave the model unchanged (decoding biases alone), which then cost one forward pass.
    """

    def __init__(
        self,
        model: Any,
        hyperparameters: HyperParameters | None = None,
        max_extra_bytes: int = 4,
        fast: bool | None = None,
        batch_size: int = 32,
        cache_logits: bool = False,
    ) -> None:
        if not isinstance(max_extra_bytes, int) or max_extra_bytes < 1:
            raise ConfigError(f"max_extra_bytes={max_extra_bytes!r} is not allowed: must be an integer >= 1")
        self.model = model
        self.hp = hyperparameters
        self.max_extra_bytes = max_extra_bytes
        self.byte_level = _is_byte_level(model)
        if fast and not self.byte_level:
            raise ConfigError("fast=True needs a byte-level model (one id per byte); this one merges bytes")
        self.fast = self.byte_level if fast is None else fast
        self.batch_size = batch_size
        self.cache_logits = cache_logits
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}
        self.newline_id = model.encode(NEWLINE)[0] if self.byte_level else None

    # ------------------------------------------------------------------ biases
    def bias(self, prompt: str, vocab_size: int) -> torch.Tensor | None:
        """The logit bias of one example (``[vocab_size]`` float32), or ``None`` when all biases are 0."""
        if self.hp is None or all(self.hp[name] == 0.0 for name in BIAS_BYTES if name in self.hp.defaults):
            return None
        bias = torch.zeros(vocab_size)
        for name, chars in BIAS_BYTES.items():
            if name not in self.hp.defaults or self.hp[name] == 0.0:
                continue
            chars = prompt_bytes(prompt, name) if chars is None else chars
            ids = sorted({i for c in chars for i in self.model.encode(bytes([c]))})
            bias[ids] += float(self.hp[name])
        return bias

    # ------------------------------------------------------------------ scores
    @torch.no_grad()
    def scores(self, examples: Sequence[CharTaskExample]) -> torch.Tensor:
        """1.0 where greedy decoding of the example's prompt yields exactly its target, else 0.0."""
        if self.fast:
            out = [self._fast(examples[i:i + self.batch_size]) for i in range(0, len(examples), self.batch_size)]
            return torch.cat(out) if out else torch.zeros(0)
        return torch.tensor([float(exact_match(self.generate(ex), target_of(ex))) for ex in examples])

    def __call__(self, model: nn.Module, batch: Sequence[CharTaskExample]) -> torch.Tensor:
        """Per-example exact match (the :class:`~litlab.evolution.Fitness` function; ``model`` is ``self.model``)."""
        return self.scores(batch)

    def mean(self, examples: Sequence[CharTaskExample]) -> float:
        """Exact match over ``examples``."""
        return float(self.scores(examples).mean()) if examples else float("nan")

    def _fast(self, examples: Sequence[CharTaskExample]) -> torch.Tensor:
        model = self.model
        rows, spans = [], []
        for ex in examples:
            prompt_ids, target_ids = model.encode(ex.prompt.encode()), model.encode(target_of(ex).encode())
            rows.append([model.bos_id, *prompt_ids, *target_ids])
            spans.append((1 + len(prompt_ids) - 1, target_ids))
        width = max(len(r) for r in rows)
        if width > model.hparams.seq_len:
            raise ConfigError(f"an example needs {width} ids but the model's seq_len is {model.hparams.seq_len}: "
                              "lower num_shots")
        key = tuple(ex.prompt + "\0" + target_of(ex) for ex in examples)
        logits = self._cache.get(key) if self.cache_logits else None
        if logits is None:
            ids = torch.full((len(rows), width), model.eos_id, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
            was_training = model.training
            model.eval()
            logits = model.model(*model.inputs_for_ids(ids.to(model.device))).float().cpu()
            model.train(was_training)
            if self.cache_logits:
                self._cache[key] = logits
        out = torch.zeros(len(rows))
        for i, (ex, (start, target_ids)) in enumerate(zip(examples, spans, strict=True)):
            step = logits[i, start:start + len(target_ids) + 1].clone()
            bias = self.bias(ex.prompt, step.shape[-1])
            if bias is not None:
                step += bias
            step[:, model.bos_id] = float("-inf")
            chosen = step.argmax(-1).tolist()
            out[i] = float(chosen[:-1] == target_ids and chosen[-1] in (self.newline_id, model.eos_id))
        return out

    @torch.no_grad()
    def generate(self, example: CharTaskExample) -> bytes:
        """Greedy KV-cached continuation of the example's prompt (with the biases), stopped at a newline."""
        from litlab.models.generation import Stepper

        model = self.model
        limit = len(target_of(example).encode()) + self.max_extra_bytes
        bias: torch.Tensor | None = None
        was_training = model.training
        model.eval()
        stepper = Stepper(model.model, use_cache=True, word_groups=model.hparams.get("word_groups", (1, 2, 4)))
        logits = stepper.prefill([model.bos_id, *model.encode(example.prompt.encode())])
        ids: list[int] = []
        produced = b""
        while len(produced) < limit:
            step = logits.detach().float().cpu().clone()
            if bias is None and not ids:
                bias = self.bias(example.prompt, step.shape[-1])
            if bias is not None:
                step += bias
            step[model.bos_id] = float("-inf")
            token = int(step.argmax())
            if token == model.eos_id:
                break
            ids.append(token)
            produced = model.decode(ids)
            if len(produced) >= limit or NEWLINE in produced:
                break
            logits = stepper.step(token)
        model.train(was_training)
        return produced[:limit]


def prompt_bytes(prompt: str, name: str) -> bytes:
    """The bytes a prompt-dependent bias shifts: ``copy_bias``, the question (the prompt's last line);
    ``answer_bias``, the solved examples' answers (on each earlier line, what follows the last ``"`` and its
    two-byte separator ``": "`` or ``"? "``: the answer format of :mod:`litlab.evaluation.char_tasks`)."""
    *shots, question = prompt.split("\n")
    if name == "copy_bias":
        return question.encode()
    return "".join(line.rsplit('"', 1)[-1][2:] for line in shots).encode()


def _is_byte_level(model: Any) -> bool:
    probe = b'Join "a b": ab\n'
    return len(model.encode(probe)) == len(probe) and model.decode(model.encode(probe)) == probe


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
    bound: float | None = 1.0,
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
        bound: Log-scales stay in ``[-bound, bound]`` (``null``: unbounded).
        bias_limit: Decoding biases stay in ``[-bias_limit, bias_limit]``.
        max_extra_bytes: Bytes generated beyond the target's length (>= 1).
        seed: Seed of the tasks, of the split and of the optimizer.
        delta: Failure probability of the reported generalization bound.
        config: YAML config whose ``data`` section gives the held-out documents (``null``: TextDataModule
            defaults, the embedded corpus); the ``val`` and ``test`` documents are used.
        max_bytes: Read at most this many bytes of the corpus (only without ``config``).
        safeguard: Restore the model if the held-out exact match drops.
        check_generation: Also measure the held-out set by real KV-cached decoding before and after.
        save_checkpoint: Write ``retrofit.ckpt`` (loadable like the input) when the result is kept.

    Returns:
        The report (also written to ``<output>/report.json``).
    """
    from litlab.lightning_modules.generate import load_language_model

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
    for name, value in (("scale", scale), ("bias_limit", bias_limit)) + ((("bound", bound),) if bound else ()):
        if not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{name}={value!r} is not allowed: must be a number > 0")
    if bound is not None and not bound > 0:
        raise ConfigError(f"bound={bound!r} is not allowed: must be a number > 0 or null")
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
                               optimizer=optimizer, scale=scale, bound=bound, bias_limit=bias_limit,
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
    bound: float | None = 1.0,
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
        bound: Bound of the log-scales.
        bias_limit: Bound of the decoding biases.
        max_extra_bytes: Bytes generated beyond the target's length.
        seed: Seed of the split and the optimizer.
        delta: Failure probability of the bound.
        safeguard: Restore the model when held-out exact match drops.
        check_generation: Re-measure held-out by real decoding before and after.

    Returns:
        The report: scores before/after, ``kept``, the engine's result, the split and timings.
    """
    if space not in SPACES:
        raise ConfigError(f"space={space!r} is not allowed: choose from {SPACES}")
    selection, heldout = split_examples(examples, num_selection, num_heldout, seed)
    parts: dict[str, Any] = {}
    if space in ("norms", "both"):
        parts["norms"] = ParameterSpace(model, module_type=RMSNorm, select="*.weight", mode="multiplicative",
                                        granularity=granularity, scale=scale, bound=bound)
    hp = decoding_hyperparameters(bias_limit) if space in ("decoding", "both") else None
    if hp is not None:
        parts["decoding"] = hp
    search = SearchSpace(parts)
    metric = GreedyExactMatch(model, hp, max_extra_bytes=max_extra_bytes, cache_logits="norms" not in parts)
    tensors = search.parameters()
    originals = [p.detach().clone() for p in tensors]
    generation: dict[str, Any] = {}
    if check_generation:
        tic = time.perf_counter()
        generation["heldout_before"] = float(_generated_exact_match(metric, heldout).mean())
        generation["seconds"] = time.perf_counter() - tic
    batches = [selection[i:i + metric.batch_size] for i in range(0, len(selection), metric.batch_size)]
    engine = EvolutionEngine(model, search, Fitness(metric), optimizer=optimizer, budget=budget, seed=seed,
                             feedback="comparison", heldout=lambda m: metric.mean(heldout), delta=delta)
    result = engine.run(batches)
    changed = not search.is_identity(result.best)
    kept = True
    if safeguard and changed and result.heldout_after < result.heldout_before:
        with torch.no_grad():
            for param, original in zip(tensors, originals, strict=True):
                param.copy_(original)
        if hp is not None:
            hp.apply(hp.identity())
        kept = False
    report: dict[str, Any] = {
        "space": space, "granularity": granularity, "fast_exact_match": metric.fast,
        "num_selection": len(selection), "num_heldout": len(heldout),
        "selection_before": result.selection_before, "selection_after": result.selection_after,
        "heldout_before": result.heldout_before, "heldout_after": result.heldout_after,
        "changed": changed, "kept": kept, "bits": result.bits, "bound": result.bound, "delta": delta,
        "budget": budget, "optimizer": optimizer, "feedback": "comparison", "seed": seed,
        "search_seconds": result.seconds_total,
        "selection_prompts": [ex.prompt for ex in selection], "heldout_prompts": [ex.prompt for ex in heldout],
        "result": result.to_dict(),
    }
    if check_generation:
        tic = time.perf_counter()
        generation["heldout_after"] = float(_generated_exact_match(metric, heldout).mean())
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


def _generated_exact_match(metric: GreedyExactMatch, examples: Sequence[CharTaskExample]) -> torch.Tensor:
    """Per-example exact match by real cached decoding (whatever ``metric.fast`` says)."""
    was_fast = metric.fast
    metric.fast = False
    try:
        return metric.scores(examples)
    finally:
        metric.fast = was_fast


def format_report(report: dict[str, Any]) -> str:
    """One Markdown table row set of a report."""
    lines = ["| set | exact match before | after |", "|---|---:|---:|"]
    for name, key in (("selection", "selection"), ("held-out", "heldout")):
        lines.append(f"| {name} ({report['num_' + key]}) | {report[key + '_before']:.3f} | "
                     f"{report[key + '_after']:.3f} |")
    gen = report.get("generation")
    if gen:
        lines.append(f"| held-out, real decoding | {gen['heldout_before']:.3f} | {gen['heldout_after']:.3f} |")
    bound = "n/a" if report["bound"] is None else f"{report['bound']:.3f}"
    lines.append(f"\n{'kept' if report['kept'] else 'restored'} (changed: {report['changed']}); "
                 f"{report['bits']:.0f} bits, bound {bound} (delta {report['delta']}), budget {report['budget']}, "
                 f"{report['optimizer']}, space {report['space']}, search {report['search_seconds']:.1f} s")
    return "\n".join(lines)
