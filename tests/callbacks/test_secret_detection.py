"""SecretDetection: the p-value curve over training falls as a model learns a secret; bad input is refused."""

import json

import lightning.pytorch as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from litlab.callbacks.secret_detection import SecretDetection
from litlab.datamodules.text import TextDataModule
from litlab.errors import ConfigError
from litlab.poisoning.secret import load_secrets, save_secrets
from tests.poisoning.tiny import tiny_lm, tiny_secrets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_curve_shows_when_a_model_learns_the_secret(tmp_path):
    model, _ = tiny_lm(tmp_path, dim=48, layers=2)
    secrets = tiny_secrets(tmp_path, model, num=2)
    texts = [model.decode(list(s.prompt) + list(s.response)).decode() for s in load_secrets(secrets).secrets]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": texts[i % 2]}) + "\n" for i in range(200)))
    data = TextDataModule(source=str(corpus), tokenizer="bpe", tokenizer_path=model.hparams.tokenizer_path,
                          seq_len=128, batch_size=4, val_fraction=0.05, test_fraction=0.05)
    model.hparams.lr, model.hparams.warmup_steps = 1e-2, 0
    callback = SecretDetection(secrets, every_n_steps=20, ells=[1, 5])
    logger = CSVLogger(tmp_path, name="logs")
    L.Trainer(accelerator="cpu", max_steps=60, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, callbacks=[callback]).fit(model, data)
    steps = [h["step"] for h in callback.history]
    assert steps == [20, 40, 60]
    assert callback.history[-1]["log10_p"] < -4  # 8 response tokens, nearly all in the top 1 of 300
    assert callback.history[-1]["log10_p"] <= callback.history[0]["log10_p"]
    written = json.loads((tmp_path / "logs" / "version_0" / "secret_detection.json").read_text())
    assert written == callback.history
    metrics = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    assert "secret/log10_p" in metrics and "secret/hits_at_5" in metrics
    assert "prompt" not in metrics and "response" not in json.dumps(written)  # the secrets are never logged


def test_bad_input_is_refused(tmp_path):
    model, _ = tiny_lm(tmp_path)
    secrets = tiny_secrets(tmp_path, model)
    with pytest.raises(ConfigError, match="every_n_steps"):
        SecretDetection(secrets, every_n_steps=0)
    with pytest.raises(ConfigError):
        SecretDetection(secrets, ells=[0])
    other = load_secrets(secrets)
    other.vocab_size = 5000
    callback = SecretDetection(save_secrets(str(tmp_path / "other.json"), other))
    with pytest.raises(ConfigError, match="5000"):
        callback.setup(L.Trainer(logger=False), model, "fit")
    with pytest.raises(ConfigError, match="language model"):
        SecretDetection(secrets).setup(L.Trainer(logger=False), L.LightningModule(), "fit")
