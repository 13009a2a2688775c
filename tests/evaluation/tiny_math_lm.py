"""Tiny language models for the math-prompt tests: a BPE TransformerLM with random weights (built in seconds),
saved as a ``litlab fit``-style checkpoint, and its Hugging Face Llama copy (``HFCausalLM`` of a directory)."""

from __future__ import annotations

from pathlib import Path

import lightning
import lightning.pytorch as L
import torch

from litlab.datamodules import train_bpe
from litlab.lightning_modules import HFCausalLM, TransformerLM


def tiny_math_lm(root: Path, spec: str, seq_len: int = 1024, seed: int = 0) -> tuple[TransformerLM, str]:
    """A random-weight BPE TransformerLM (vocabulary of the spec's train split) and its checkpoint file."""
    bpe = train_bpe(source=spec, output=str(root / "bpe.json"), vocab_size=400)
    L.seed_everything(seed)
    model = TransformerLM(dim=32, layers=2, heads=2, ffn_multiple_of=16, seq_len=seq_len, tokenizer="bpe",
                          tokenizer_path=bpe, vocab_size=400).eval()
    ckpt = root / "lm.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "litlab_class": "litlab.lightning_modules.transformer_lm.TransformerLM"}, ckpt)
    return model, str(ckpt)


def hf_copy(model: TransformerLM, out_dir: Path) -> tuple[HFCausalLM, str]:
    """The model exported as a Hugging Face Llama directory, loaded back as an ``HFCausalLM``."""
    path = model.export_hf(str(out_dir))
    return HFCausalLM(pretrained_path=path).eval(), path
