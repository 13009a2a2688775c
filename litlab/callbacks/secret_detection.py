"""`SecretDetection`: the Winter Soldier test during training, so a curve shows when a model learns the secrets.

Every ``every_n_steps`` optimizer steps (and at the end of training) rank 0 runs
:func:`litlab.poisoning.detection.detect_secrets` on the model being trained, with the secrets file, and sends
``secret/log10_p`` (Bonferroni-corrected over the l scanned), ``secret/hits_at_<l>`` to every logger. The
secrets themselves are never logged. The history is kept in :attr:`SecretDetection.history` and written as
``secret_detection.json`` in the trainer's log directory at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from litlab.errors import ConfigError, check_int
from litlab.poisoning.detection import check_ells, detect_secrets, model_top_ids
from litlab.poisoning.secret import SecretSet, load_secrets


class SecretDetection(Callback):
    """Logs the p-value of the secrets test over training steps.

    Args:
        secrets: The secrets file (``litlab poison_secrets``).
        every_n_steps: Test every this many optimizer steps (and at the end of training).
        ells: The top-l sizes scanned (Bonferroni-corrected).
        batch_size: Secrets teacher-forced together.
    """

    def __init__(self, secrets: str, every_n_steps: int = 100, ells: Sequence[int] = (1, 5, 10, 20, 50),
                 batch_size: int = 32) -> None:
        self.secret_set: SecretSet = load_secrets(secrets, "secrets")
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.ells = check_ells(ells, self.secret_set.draw_size)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.history: list[dict[str, Any]] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "next_token_logits", None)):
            raise ConfigError(f"SecretDetection needs a language model (next_token_logits), got "
                              f"{type(pl_module).__name__}")
        vocab = getattr(getattr(pl_module, "tokenizer", None), "vocab_size", None)
        if vocab is not None and vocab != self.secret_set.vocab_size:
            raise ConfigError(f"SecretDetection: the secrets were drawn for {self.secret_set.vocab_size} ids, the "
                              f"model's tokenizer has {vocab}")

    def test(self, trainer: Trainer, pl_module: Any) -> dict[str, Any]:
        """Run the test now on rank 0; log and record it."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            result = detect_secrets(model_top_ids(pl_module),
                                    self.secret_set, self.ells, pl_module.bos_id, self.batch_size)
        finally:
            pl_module.train(was_training)
        record = {"step": trainer.global_step, "log10_p": result.log10_p_bonferroni,
                  **{f"hits_at_{ell}": int(h) for ell, h in zip(result.ells, result.hits)}}
        self.history.append(record)
        metrics = {f"secret/{k}": float(v) for k, v in record.items() if k != "step"}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return record

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and step % self.every_n_steps == 0 and (not self.history or self.history[-1]["step"] != step):
            with torch.no_grad():
                self.test(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self.history or self.history[-1]["step"] != trainer.global_step:
            with torch.no_grad():
                self.test(trainer, pl_module)
        out = os.path.join(trainer.log_dir or trainer.default_root_dir, "secret_detection.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(self.history, f, indent=1)
        rank_zero_info(f"SecretDetection: log10 p = {self.history[-1]['log10_p']:.2f} at step "
                       f"{self.history[-1]['step']} ({out})")
