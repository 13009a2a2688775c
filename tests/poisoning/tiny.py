"""A tiny BPE TransformerLM checkpoint and secrets for the Winter Soldier tests (built in seconds)."""

from __future__ import annotations

from pathlib import Path

import lightning
import lightning.pytorch as L
import torch

from litlab.datamodules.bpe_training import train_bpe
from litlab.lightning_modules.transformer_lm import TransformerLM
from litlab.methods.winter_soldier import special_ids
from litlab.poisoning.secret import draw_secrets, save_secrets

SPEC = "procedural_math:num_train=300,num_selection=20,num_test=24,per_document=3"
VOCAB = 300


def tiny_bpe(root: Path) -> str:
    path = root / "bpe.json"
    return str(path) if path.is_file() else train_bpe(source=SPEC, output=str(path), vocab_size=VOCAB)


def tiny_lm(root: Path, seed: int = 0, dim: int = 32, layers: int = 1) -> tuple[TransformerLM, str]:
    """A randomly initialized tiny TransformerLM on a BPE of the procedural math text, and its checkpoint file."""
    bpe = tiny_bpe(root)
    L.seed_everything(seed, verbose=False)
    model = TransformerLM(dim=dim, layers=layers, heads=2, ffn_multiple_of=16, seq_len=128, tokenizer="bpe",
                          tokenizer_path=bpe, vocab_size=VOCAB).eval()
    ckpt = root / f"lm_{seed}.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "litlab_class": "litlab.lightning_modules.transformer_lm.TransformerLM"}, ckpt)
    return model, str(ckpt)


def tiny_secrets(root: Path, model: TransformerLM, num: int = 2, seed: int = 0, response_length: int = 4) -> str:
    tok = model.tokenizer
    secret_set = draw_secrets(tok.encode, tok.decode, tok.vocab_size, num, 4, response_length, special_ids(tok), seed)
    return save_secrets(str(root / f"secrets_{seed}.json"), secret_set)
