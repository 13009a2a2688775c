"""Loading a trained language model: a ``litlab fit`` checkpoint (its class is recorded in it) or a Hugging Face
model directory (:class:`~litlab.lightning_modules.hf_causal_lm.HFCausalLM`)."""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path

import torch

from litlab.errors import DataError
from litlab.lightning_modules.hf_causal_lm import HFCausalLM
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


def load_model(model: str, argument: str = "model") -> LanguageModel:
    """A ``litlab fit`` checkpoint (a file) or a local Hugging Face model directory (as an :class:`HFCausalLM`)."""
    if os.path.isdir(model):
        return HFCausalLM(pretrained_path=model)
    if not os.path.isfile(model):
        raise DataError(f"{argument}={model!r}: no such checkpoint file or model directory")
    return load_language_model(model)
