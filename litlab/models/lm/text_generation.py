"""Text in, text out: batched generation of continuations for many prompts with any :class:`Decoder`.

Every litlab language model (``LanguageModel.generate_batch``, the Hugging Face ``HFCausalLM`` included) turns
its prompts into ids here, runs :func:`~litlab.models.lm.generation.decode_batch` over batches of rows, and
turns the ids back into bytes:

* row ``k`` of the output (prompt ``k // m``, sample ``k % m`` for ``num_return_sequences = m``) samples with
  its own generator seeded ``seed + k``, so a prompt gets the same continuation alone or in a batch, and
  ``m`` samples of one prompt differ (self-consistency);
* a row ends at EOS, after ``max_new_bytes`` bytes, or once its text contains one of the ``stop`` strings
  (kept in the output, as a stop sequence);
* ``prefix`` (a few-shot pre-prompt shared by every prompt) is tokenized on its own, after BOS; with
  ``reuse_prefix`` the decoder computes it once per batch (shared-prefix reuse), else it is prepended to every
  row: both give the same ids and the same output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from litlab.errors import ConfigError
from litlab.models.lm.generation import Decoder, decode_batch
from litlab.models.lm.sampling import check_sampling

__all__ = ["generate_texts"]


def generate_texts(
    make_decoder: Callable[[], Decoder],
    encode: Callable[[bytes], list[int]],
    decode: Callable[[Sequence[int]], bytes],
    bos_id: int,
    eos_id: int,
    prompts: Sequence[bytes],
    *,
    max_new_bytes: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    num_return_sequences: int = 1,
    stop: Sequence[bytes] = (),
    prefix: bytes | None = None,
    reuse_prefix: bool = True,
    logits_hook: Callable[[Tensor], Tensor] | None = None,
    batch_size: int | None = None,
) -> list[bytes]:
    """Continuations of ``prompts`` (``num_return_sequences`` per prompt, prompt-major).

    Args:
        make_decoder: A fresh decoder of the model (one per batch).
        encode: The model's ``encode(bytes) -> ids`` (no BOS/EOS).
        decode: The model's ``decode(ids) -> bytes``.
        bos_id: Beginning-of-sequence id (put before the prefix, or before each prompt without one).
        eos_id: End-of-sequence id.
        prompts: The prompts' bytes.
        max_new_bytes: Most bytes generated per continuation (>= 0; a token that crosses it is cut).
        temperature: 0 = greedy, else the sampling temperature.
        top_k: Keep the k most likely ids (``None``: all).
        top_p: Nucleus sampling mass (``None``: off).
        seed: Seed of row 0; row ``k`` uses ``seed + k``.
        num_return_sequences: Continuations per prompt.
        stop: Stop strings.
        prefix: Bytes shared by every prompt, before it.
        reuse_prefix: Compute the prefix once per batch (False: prepend it to every row; same output).
        logits_hook: Applied to the next-id logits ``[rows, vocab]`` of every step, e.g. logit biases.
        batch_size: Rows decoded together (default: all).

    Returns:
        ``len(prompts) * num_return_sequences`` byte strings.
    """
    check_sampling(temperature, top_k, top_p)
    for name, value, low in (("max_new_bytes", max_new_bytes, 0), ("num_return_sequences", num_return_sequences, 1),
                             ("batch_size", batch_size if batch_size is not None else 1, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name}={value!r} is not allowed: must be an integer >= {low}")
    if isinstance(prompts, bytes | str):
        raise ConfigError("prompts must be a sequence of byte strings, not one string")
    stops = [s.encode() if isinstance(s, str) else bytes(s) for s in stop]
    if any(not s for s in stops):
        raise ConfigError("stop strings must be non-empty")
    head = [bos_id, *encode(prefix)] if prefix is not None else None
    rows = [list(encode(p)) if head is not None else [bos_id, *encode(p)]
            for p in prompts for _ in range(num_return_sequences)]
    if head is not None and not reuse_prefix:
        rows, head = [[*head, *row] for row in rows], None
    size = batch_size or max(len(rows), 1)
    out: list[bytes] = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]

        def done(row: int, ids: list[int]) -> bool:  # every id stands for at least one byte
            text = decode(ids)
            return len(text) >= max_new_bytes or any(s in text for s in stops)

        ids = decode_batch(
            make_decoder(), chunk, max_new_bytes, eos_id=eos_id, banned=(bos_id,), temperature=temperature,
            top_k=top_k, top_p=top_p, generators=[torch.Generator().manual_seed(seed + start + i) for i in
                                                  range(len(chunk))],
            logits_hook=logits_hook, stop=done, prefix=head,
        )
        out.extend(decode(row)[:max_new_bytes] for row in ids)
    return out
