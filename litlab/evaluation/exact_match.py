"""Greedy exact match: a non-differentiable metric of a language model (the fitness of ``litlab retrofit_lm``).

The prediction is the model's greedy continuation of an example's few-shot prompt, cut at the first newline
(or EOS, at most ``len(target) + max_extra_bytes`` bytes); the score is exact match with the correct answer.
An optional ``logit_bias(prompt, vocab_size)`` adds a per-example bias to the logits before the argmax, which
changes what greedy decoding emits (:mod:`litlab.methods.afterlearner_lm` searches such biases).

Fast exact match: for a byte-level model, greedy decoding reproduces the target iff the (biased) argmax at
every target position equals the target byte under teacher forcing and the argmax after it is a newline or
EOS (by induction on the generated prefix). One batched forward pass over ``prompt + target`` per example
therefore gives exactly the exact match of greedy generation; other tokenizers decode for real (KV-cached).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.evaluation.char_tasks import CharTaskExample
from litlab.models.lm.padding import right_pad

NEWLINE = b"\n"


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


class GreedyExactMatch:
    """Exact match of (biased) greedy decoding on char-task examples: the fitness and the held-out metric.

    Args:
        model: A :class:`~litlab.lightning_modules.language_model.LanguageModel`.
        logit_bias: ``logit_bias(prompt, vocab_size)`` -> a ``[vocab_size]`` float32 bias added to the next-id
            logits of that example's every step, or ``None`` for no bias; read at every evaluation.
        max_extra_bytes: Bytes generated beyond the target's length (>= 1: room for the newline).
        fast: Teacher-forced exact match (byte-level models; ``None``: whenever the model is byte-level).
        batch_size: Examples per forward pass (fast path) or per generated batch.
        cache_logits: Keep the fast path's teacher-forced logits per batch of examples and reuse them: only for
            searches that leave the model unchanged (decoding biases alone), which then cost one forward pass.
    """

    def __init__(
        self,
        model: Any,
        logit_bias: Callable[[str, int], torch.Tensor | None] | None = None,
        max_extra_bytes: int = 4,
        fast: bool | None = None,
        batch_size: int = 32,
        cache_logits: bool = False,
    ) -> None:
        if not isinstance(max_extra_bytes, int) or max_extra_bytes < 1:
            raise ConfigError(f"max_extra_bytes={max_extra_bytes!r} is not allowed: must be an integer >= 1")
        self.model = model
        self.logit_bias = logit_bias
        self.max_extra_bytes = max_extra_bytes
        self.byte_level = is_byte_level(model)
        if fast and not self.byte_level:
            raise ConfigError("fast=True needs a byte-level model (one id per byte); this one merges bytes")
        self.fast = self.byte_level if fast is None else fast
        self.batch_size = batch_size
        self.cache_logits = cache_logits
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}
        self.newline_id = model.encode(NEWLINE)[0] if self.byte_level else None

    def bias(self, prompt: str, vocab_size: int) -> torch.Tensor | None:
        """The logit bias of one example, or ``None``."""
        return None if self.logit_bias is None else self.logit_bias(prompt, vocab_size)

    @torch.no_grad()
    def scores(self, examples: Sequence[CharTaskExample]) -> torch.Tensor:
        """1.0 where greedy decoding of the example's prompt yields exactly its target, else 0.0."""
        if self.fast:
            out = [self._fast(examples[i:i + self.batch_size]) for i in range(0, len(examples), self.batch_size)]
            return torch.cat(out) if out else torch.zeros(0)
        out = []
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start:start + self.batch_size]
            out += [float(exact_match(g, target_of(ex))) for g, ex in zip(self.generate_many(chunk), chunk, strict=True)]
        return torch.tensor(out)

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
            ids = right_pad(rows, model.eos_id)
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

    def generate(self, example: CharTaskExample) -> bytes:
        """Greedy KV-cached continuation of the example's prompt (with its bias), stopped at a newline."""
        return self.generate_many([example])[0]

    def generate_many(self, examples: Sequence[CharTaskExample]) -> list[bytes]:
        """Greedy continuations of the examples' prompts in one batch (each with its own bias), stopped at a newline.

        The byte limit is the batch's longest target + ``max_extra_bytes``; exact match is the same as with each
        example's own limit (a continuation that runs past its own limit without a newline is wrong either way).
        """
        if not examples:
            return []
        limit = max(len(target_of(ex).encode()) for ex in examples) + self.max_extra_bytes
        bias: list[torch.Tensor | None] = []  # [rows, vocab], computed once from the first step's logits

        def add_bias(logits: torch.Tensor) -> torch.Tensor:
            if not bias:
                rows = [self.bias(ex.prompt, logits.shape[-1]) for ex in examples]
                bias.append(None if all(b is None for b in rows) else torch.stack(
                    [torch.zeros(logits.shape[-1]) if b is None else b for b in rows]).to(logits.device))
            return logits if bias[0] is None else logits + bias[0]

        return self.model.generate_batch([ex.prompt.encode() for ex in examples], max_new_bytes=limit,
                                         stop=(NEWLINE,), logits_hook=add_bias)


def is_byte_level(model: Any) -> bool:
    probe = b'Join "a b": ab\n'
    return len(model.encode(probe)) == len(probe) and model.decode(model.encode(probe)) == probe


def generated_exact_match(metric: GreedyExactMatch, examples: Sequence[CharTaskExample]) -> torch.Tensor:
    """Per-example exact match by real cached decoding (whatever ``metric.fast`` says)."""
    was_fast = metric.fast
    metric.fast = False
    try:
        return metric.scores(examples)
    finally:
        metric.fast = was_fast
