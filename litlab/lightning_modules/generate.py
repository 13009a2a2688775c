"""``litlab generate``: sample text from a trained language-model checkpoint (AUNetLM or TransformerLM)."""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path

import torch

from litlab.errors import ConfigError, DataError
from litlab.lightning_modules.language_model import LanguageModel


def load_language_model(ckpt_path: str, map_location: str = "cpu") -> LanguageModel:
    """Load a checkpoint written while training an :class:`LanguageModel` subclass (its class is recorded in it)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise DataError(f"ckpt_path={ckpt_path!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        class_path = checkpoint["litlab_class"]
    except KeyError as err:
        raise DataError(f"ckpt_path={ckpt_path!r} was not written by a litlab language model (no class recorded)") from err
    except Exception as err:  # unreadable or not a checkpoint at all
        raise DataError(f"ckpt_path={ckpt_path!r} is not a readable checkpoint: {err}") from err
    module, name = class_path.rsplit(".", 1)
    cls = getattr(import_module(module), name)
    if not issubclass(cls, LanguageModel):
        raise DataError(f"ckpt_path={ckpt_path!r} holds a {class_path}, not a language model")
    return cls.load_from_checkpoint(path, map_location=map_location)


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
