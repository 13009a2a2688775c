"""`HFExport`: after fit, the trained TransformerLM is a Hugging Face directory with the same logits."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from litlab.callbacks import HFExport
from litlab.datamodules import TextDataModule, train_bpe
from litlab.errors import ConfigError
from litlab.lightning_modules import AUNetLM, HFCausalLM, TransformerLM


def test_the_fitted_model_is_exported_with_equal_logits(tmp_path):
    bpe = train_bpe(output=str(tmp_path / "bpe.json"), vocab_size=300, max_bytes=60_000)
    data = TextDataModule(tokenizer="bpe", tokenizer_path=bpe, seq_len=32, batch_size=4, max_bytes=60_000)
    L.seed_everything(0)
    model = TransformerLM(dim=32, layers=1, heads=2, ffn_multiple_of=16, seq_len=32, tokenizer="bpe",
                          tokenizer_path=bpe, vocab_size=data.vocab_size, warmup_steps=1)
    callback = HFExport(str(tmp_path / "hf"))
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(model, data)
    assert callback.path == str(tmp_path / "hf")
    loaded = HFCausalLM(pretrained_path=callback.path).eval()
    ids = torch.randint(3, data.vocab_size, (2, 32))
    with torch.no_grad():
        assert (loaded(ids) - model.eval()(ids)).abs().max() <= 1e-5
    assert loaded.encode(b"def main():") == model.encode(b"def main():")


def test_refuses_what_it_cannot_export(tmp_path):
    with pytest.raises(ConfigError, match="dtype='int8'"):
        HFExport(str(tmp_path), dtype="int8")
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, callbacks=[HFExport(str(tmp_path / "x"))],
                        enable_progress_bar=False, enable_model_summary=False)
    model = AUNetLM(dims=[16, 32], layers=[1, 1], heads=[2, 2], windows=[8, None], pooled_lengths=[16], seq_len=32,
                    ffn_multiple_of=16)
    with pytest.raises(ConfigError, match="HFExport needs a module that exports itself .* got AUNetLM"):
        trainer.fit(model, TextDataModule(seq_len=32, batch_size=2, max_bytes=20_000))
