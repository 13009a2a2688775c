"""``litlab generate``: sample text from a trained language-model checkpoint (AUNetLM or TransformerLM)."""

from __future__ import annotations

import sys

from litlab.errors import ConfigError
from litlab.lightning_modules.loading import load_language_model


def generate_text(
    ckpt_path: str,
    prompt: str = "",
    max_new_bytes: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> str:
    """Continue a prompt with a trained AU-Net or Transformer language model and print the result.

    Args:
        ckpt_path: Checkpoint of ``litlab fit`` with an AUNetLM or TransformerLM.
        prompt: Text to continue (BOS is prepended).
        max_new_bytes: Most bytes generated (stops earlier at EOS).
        temperature: 0 = greedy decoding, else the sampling temperature.
        top_k: Sample among the k most likely ids (``null``: all).
        top_p: Nucleus sampling mass (``null``: off).
        seed: Seed of sampling.
        use_cache: KV-cached decoding (False: a full forward pass per step; same output, slower).

    Returns:
        The generated text (invalid UTF-8 shown with replacement characters).
    """
    if max_new_bytes < 0:
        raise ConfigError(f"max_new_bytes={max_new_bytes!r} is not allowed: must be >= 0")
    model = load_language_model(ckpt_path)
    out = model.generate(prompt.encode(), max_new_bytes, temperature, top_k, top_p, seed, use_cache)
    text = out.decode("utf-8", errors="replace")
    sys.stdout.write(prompt + text + "\n")
    return text
