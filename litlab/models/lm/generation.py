"""Byte generation with KV caches for AU-Net and the flat Transformer.

Cached decoding of an AU-Net (:class:`Stepper` with ``use_cache=True``): the prompt is *prefilled* with one
forward pass that fills the KV caches of every stack; then, for each new byte,

* its split level comes from :class:`litlab.text.splitting.StreamingSplitter` (O(1) per byte, and equal to
  ``split_token_levels(ids, causal=True)`` over the whole stream);
* the byte stage's encoder runs on it; pooling stage s runs only when the byte is a boundary of stage s
  (level > s-1, and the stage s-1 ran): it pools the new vector and runs its encoder — or the trunk — one
  position with its cache;
* the decoders run top-down, one position each, for the stages that ran; a decoder reads the latest output
  of the stage below it (cached between the steps where that stage runs) through multi-linear upsampling at
  offset ``(j - p_k) mod P``, a counter reset when that stage runs and incremented otherwise.

The logits equal those of a full forward pass over the same window (``tests/models/test_generation.py``
checks every step to 1e-5 in float32, for 1 to 4 stages).

Per-stage max lengths. The model's static lengths apply in generation exactly as in training: a pooling stage
that already holds ``max_lengths[s]`` vectors takes no more (the byte is treated as a non-boundary from that
stage down, which is what the full forward's truncation does), so cached and full computations agree. When
the byte window ``max_lengths[0]`` is full, ``on_full="slide"`` (default) keeps the last ``keep`` bytes
(half the window by default) as a new window — its first byte becomes a top-level boundary, as at the start
of every training window — and refills the caches with one prefill; ``on_full="stop"`` ends generation. The
uncached path (``use_cache=False``, a full forward per byte) uses the same windows, so both paths produce the
same bytes.

A :class:`Stepper` is one stream (which AU-Net stages run depends on that stream's bytes); a batch of them is
a :class:`StepperDecoder`. :func:`decode_batch` is the decoding loop of every litlab language model, over any
:class:`Decoder`: this stepper batch, :class:`~litlab.models.lm.ragged.RaggedDecoder` (a flat Transformer's
ragged batch in one KV cache) or :class:`~litlab.models.lm.hf_model.HFDecoder` (a Hugging Face model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from litlab.errors import ConfigError
from litlab.models.lm.aunet import AUNet, AUNetCache
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.kv_cache import StackCache
from litlab.models.lm.sampling import check_sampling, sample_tokens
from litlab.text.byte_vocab import BOS, BYTE_VOCAB_SIZE, EOS, encode_bytes
from litlab.text.splitting import StreamingSplitter

__all__ = ["Decoder", "Stepper", "StepperDecoder", "WindowFull", "decode_batch", "generate"]

ON_FULL = ("slide", "stop")


class WindowFull(RuntimeError):
    """Raised by :meth:`Stepper.step` when the byte window is full and ``on_full="stop"``."""


class Stepper:
    """Feed ids one at a time to a language model and get the next-id logits, with or without KV caches.

    Args:
        model: An :class:`~litlab.models.lm.aunet.AUNet` or a :class:`~litlab.models.lm.flat_transformer.FlatTransformer`.
        use_cache: Cached decoding; False recomputes a full forward over the window at every step.
        word_groups: Splitting word groups for the AU-Net levels (the data's, default ``(1, 2, 4)``).
        on_full: What to do when the window (``max_lengths[0]`` / ``max_length``) is full: ``"slide"`` or ``"stop"``.
        keep: Ids kept when sliding (default: half the window).
    """

    def __init__(
        self,
        model: AUNet | FlatTransformer,
        use_cache: bool = True,
        word_groups: Sequence[int] = (1, 2, 4),
        on_full: str = "slide",
        keep: int | None = None,
    ) -> None:
        if not isinstance(model, (AUNet, FlatTransformer)):
            raise ConfigError(f"model must be an AUNet or a FlatTransformer, got {type(model).__name__}")
        if on_full not in ON_FULL:
            raise ConfigError(f"on_full={on_full!r} is not allowed: expected one of {ON_FULL}")
        self.model, self.use_cache, self.on_full = model, use_cache, on_full
        self.is_aunet = isinstance(model, AUNet)
        self.window = model.max_lengths[0] if isinstance(model, AUNet) else model.max_length
        self.keep = self.window // 2 if keep is None else keep
        if not 1 <= self.keep <= self.window:
            raise ConfigError(f"keep={keep!r} is not allowed: expected 1..{self.window} (the model's window)")
        self.splitter = StreamingSplitter(word_groups) if self.is_aunet else None
        self.device = next(model.parameters()).device
        self.ids: list[int] = []
        self.levels: list[int] = []
        self.start = 0  # first id of the current window
        self._cache: AUNetCache | StackCache | None = None
        self._counts: list[int] = []  # real positions per stage in the window
        self._coarse: list[Tensor | None] = []  # latest output of each stage (used by the stage above it)
        self._offsets: list[int] = []  # offset of the latest fine position of stage s-1 from stage s's boundary

    # ------------------------------------------------------------------------------------------ public
    @torch.no_grad()
    def prefill(self, ids: Sequence[int]) -> Tensor:
        """Start a stream with ``ids`` (usually BOS + prompt bytes); returns the logits ``[vocab]`` of the next id.

        A prompt longer than the window keeps its last ``window`` ids.
        """
        if len(ids) == 0:
            raise ConfigError("ids is empty: give at least one id (BOS) to prefill")
        self.ids, self.levels = [], []
        if self.splitter is not None:
            self.splitter.reset()
        for i in ids:
            self._push(int(i))
        self.start = max(0, len(self.ids) - self.window)
        return self._refill()

    @torch.no_grad()
    def step(self, next_id: int) -> Tensor:
        """Append ``next_id``; returns the logits ``[vocab]`` of the id after it."""
        if len(self.ids) - self.start == self.window:
            if self.on_full == "stop":
                raise WindowFull(f"the window of {self.window} ids is full")
            self._push(int(next_id))
            self.start = len(self.ids) - self.keep
            return self._refill()
        level = self._push(int(next_id))
        if not self.use_cache:
            return self._full_forward()
        if self.is_aunet:
            return self._aunet_step(int(next_id), level)
        assert isinstance(self._cache, StackCache) and isinstance(self.model, FlatTransformer)
        x = torch.tensor([[next_id]], device=self.device)
        return self.model(x, self._cache)[0, -1]

    @property
    def window_ids(self) -> list[int]:
        """The ids of the current window."""
        return self.ids[self.start :]

    # ------------------------------------------------------------------------------------------ internals
    def _push(self, token: int) -> int:
        self.ids.append(token)
        level = self.splitter.push(token) if self.splitter is not None else 0
        self.levels.append(level)
        return level

    def _inputs(self) -> tuple[Tensor, Tensor]:
        ids = torch.tensor([self.ids[self.start :]], device=self.device)
        levels = torch.tensor([self.levels[self.start :]], device=self.device)
        return ids, levels

    def _full_forward(self) -> Tensor:
        ids, levels = self._inputs()
        logits = self.model(ids, levels) if isinstance(self.model, AUNet) else self.model(ids)
        return logits[0, -1]

    def _refill(self) -> Tensor:
        """Prefill the caches on the current window (or, uncached, just run it)."""
        if not self.use_cache:
            return self._full_forward()
        ids, levels = self._inputs()
        if isinstance(self.model, FlatTransformer):
            self._cache = self.model.new_cache()
            return self.model(ids, self._cache)[0, -1]
        model, cache = self.model, self.model.new_cache()
        logits = model(ids, levels, cache)
        assert cache.plan is not None
        n = ids.shape[1]
        self._counts = [n, *cache.plan.counts[:, 0].tolist()]
        for s in range(model.num_stages - 1):
            cache.encoders[s].truncate(self._counts[s])  # pooled stages were run over padded sequences
            cache.decoders[s].truncate(self._counts[s])
        cache.trunk.truncate(self._counts[-1])
        self._coarse = [None] + [
            out[:, count - 1 : count] for out, count in zip(cache.stage_outputs[1:], self._counts[1:], strict=True)
        ]
        self._offsets = [0] + [
            int(offset[0, count - 1]) for offset, count in zip(cache.plan.offset, self._counts[:-1], strict=True)
        ]
        cache.stage_outputs, cache.plan = [], None  # release the prefill activations
        self._cache = cache
        return logits[0, -1]

    def _aunet_step(self, token: int, level: int) -> Tensor:
        model, cache = self.model, self._cache
        assert isinstance(model, AUNet) and isinstance(cache, AUNetCache)
        last = model.num_stages - 1
        depth = 0  # deepest stage this byte reaches (as the full forward's nesting and truncation decide)
        while depth < last and level > depth and self._counts[depth + 1] < model.max_lengths[depth + 1]:
            depth += 1
        x = model.embedding(torch.tensor([[token]], device=self.device))
        skips: list[Tensor] = []
        for s in range(depth + 1):
            if s == last:
                x = model.trunk(x, cache.trunk)
                self._coarse[s] = x
            else:
                x = model.encoders[s](x, cache.encoders[s])
                skips.append(x)
                if s < depth:
                    x = model.poolings[s](x)
            self._counts[s] += 1
        for s in reversed(range(min(depth, last - 1) + 1)):
            offset = 0 if depth > s else (self._offsets[s + 1] + 1) % model.upsample_positions
            self._offsets[s + 1] = offset
            coarse = self._coarse[s + 1]
            assert coarse is not None
            up = model.upsamplings[s].step(coarse, offset)
            x = model.decoders[s](skips[s] + up if model.residual_skips else up, cache.decoders[s])
            self._coarse[s] = x
        out = self._coarse[0]
        assert out is not None
        return model.output(model.norm(out))[0, -1]


def generate(
    model: AUNet | FlatTransformer,
    prompt: bytes | str,
    max_new_bytes: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    word_groups: Sequence[int] = (1, 2, 4),
    on_full: str = "slide",
) -> bytes:
    """Continue ``prompt`` (BOS is prepended) with a byte-level model; stops at EOS or ``max_new_bytes``.

    Args:
        model: A byte-vocabulary (258 ids) AU-Net or flat Transformer.
        prompt: Text (UTF-8 encoded) or raw bytes.
        max_new_bytes: Most bytes generated.
        temperature: 0 = greedy; else sampling temperature.
        top_k: Top-k filtering (None = off).
        top_p: Nucleus filtering (None = off).
        seed: Seed of the sampling generator.
        use_cache: Cached decoding (False: a full forward per byte; same bytes, slower).
        word_groups: Splitting word groups (must match the training data's).
        on_full: ``"slide"`` or ``"stop"`` when the byte window is full (see the module docstring).

    Returns:
        The generated bytes (without the prompt and without EOS).
    """
    if model.vocab_size != BYTE_VOCAB_SIZE:
        raise ConfigError(f"generate needs a byte model (vocab_size={BYTE_VOCAB_SIZE}), got {model.vocab_size}")
    if max_new_bytes < 0:
        raise ConfigError(f"max_new_bytes={max_new_bytes!r} is not allowed: expected ≥ 0")
    check_sampling(temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    try:
        decoder = StepperDecoder(model, use_cache=use_cache, word_groups=word_groups, on_full=on_full)
        out = decode_batch(decoder, [encode_bytes(prompt, bos=True, eos=False).tolist()], max_new_bytes, eos_id=EOS,
                           banned=(BOS,), temperature=temperature, top_k=top_k, top_p=top_p,
                           generators=[torch.Generator().manual_seed(seed)])
        return bytes(out[0])
    finally:
        model.train(was_training)


class Decoder(Protocol):
    """What :func:`decode_batch` drives: next-id logits for a batch of sequences, one id more per step.

    Implementations: :class:`StepperDecoder` (one :class:`Stepper` per sequence: AU-Net, or any model without
    ragged batching), :class:`~litlab.models.lm.ragged.RaggedDecoder` (a flat Transformer, the whole batch in
    one KV cache with per-row positions and padding masks) and the Hugging Face decoder of ``HFCausalLM``.
    """

    def prefill(self, rows: Sequence[Sequence[int]], prefix: Sequence[int] | None = None) -> Tensor:
        """Start one sequence per row (``prefix + row``); returns the next-id logits ``[len(rows), vocab]``."""
        ...

    def step(self, tokens: Tensor) -> Tensor:
        """Append ``tokens [N]`` (one id per sequence); returns the next-id logits ``[N, vocab]``."""
        ...

    def room(self) -> int | None:
        """Steps left before a sequence's window is full and cannot slide (``None``: no limit)."""
        ...


class StepperDecoder:
    """One :class:`Stepper` per sequence (batch of streams decoded side by side, each with its own cache).

    Args:
        model: An :class:`~litlab.models.lm.aunet.AUNet` or a :class:`~litlab.models.lm.flat_transformer.FlatTransformer`.
        use_cache: Cached decoding (False: a full forward over the window at every step).
        word_groups: Splitting word groups of the AU-Net levels.
        on_full: ``"slide"`` or ``"stop"`` when a window is full (see :class:`Stepper`).
    """

    def __init__(self, model: AUNet | FlatTransformer, use_cache: bool = True,
                 word_groups: Sequence[int] = (1, 2, 4), on_full: str = "slide") -> None:
        self.model, self.use_cache, self.word_groups, self.on_full = model, use_cache, word_groups, on_full
        self.steppers: list[Stepper] = []

    def prefill(self, rows: Sequence[Sequence[int]], prefix: Sequence[int] | None = None) -> Tensor:
        self.steppers = [Stepper(self.model, self.use_cache, self.word_groups, self.on_full) for _ in rows]
        head = list(prefix or [])
        return torch.stack([s.prefill([*head, *row]) for s, row in zip(self.steppers, rows, strict=True)])

    def step(self, tokens: Tensor) -> Tensor:
        return torch.stack([s.step(int(t)) for s, t in zip(self.steppers, tokens.tolist(), strict=True)])

    def room(self) -> int | None:
        if self.on_full == "slide" or not self.steppers:
            return None
        return min(s.window - len(s.window_ids) for s in self.steppers)


def decode_batch(
    decoder: Decoder,
    rows: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    eos_id: int,
    banned: Sequence[int] = (),
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    logits_hook: Callable[[Tensor], Tensor] | None = None,
    stop: Callable[[int, list[int]], bool] | None = None,
    prefix: Sequence[int] | None = None,
) -> list[list[int]]:
    """The decoding loop of every litlab language model: prefill, then pick one id per sequence and step.

    A sequence ends at ``eos_id`` (not returned), after ``max_new_tokens`` ids, or when ``stop(row, ids)`` is true
    after an id was appended; the loop ends when every sequence has ended or the decoder has no room left.

    Args:
        decoder: The model's :class:`Decoder`.
        rows: The prompt ids of each sequence (after ``prefix``).
        max_new_tokens: Most ids generated per sequence.
        eos_id: The end-of-sequence id.
        banned: Ids never produced (e.g. BOS).
        temperature: 0 = greedy, else the sampling temperature.
        top_k: Keep the k most likely ids (``None``: all).
        top_p: Nucleus sampling mass (``None``: off).
        generators: One random generator per sequence (:func:`~litlab.models.lm.sampling.sample_tokens`).
        logits_hook: Applied to each step's next-id logits ``[N, vocab]`` (float32, the model's device) before
            picking, e.g. logit biases.
        stop: ``stop(row, ids generated so far) -> bool``, checked after each new id (e.g. stop strings).
        prefix: Ids shared by every sequence before its row (BOS first), computed once where the decoder can.

    Returns:
        The generated ids of each sequence.
    """
    check_sampling(temperature, top_k, top_p)
    if not rows:
        return []
    logits = decoder.prefill(rows, prefix)
    out: list[list[int]] = [[] for _ in rows]
    done = [max_new_tokens <= 0] * len(rows)
    while not all(done):
        step = logits.float()
        if logits_hook is not None:
            step = logits_hook(step)
        tokens = sample_tokens(step, temperature, top_k, top_p, generators, banned)
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            if token == eos_id:
                done[row] = True
                continue
            out[row].append(token)
            done[row] = len(out[row]) >= max_new_tokens or (stop is not None and stop(row, out[row]))
        if all(done) or decoder.room() == 0:
            break
        logits = decoder.step(tokens)
    return out
