"""A real 2-process DDP run (gloo, CPU) of TextDataModule through Lightning's Trainer."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from litlab.datamodules.text import TextDataModule

from .test_text_datamodule import write_text_corpus

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import lightning.pytorch as L
    from litlab.datamodules.text import TextDataModule

    corpus, out = sys.argv[1], sys.argv[2]

    class Recorder(L.LightningModule):
        # a bigram model that records, per epoch, the train and val windows of its rank

        def __init__(self, vocab_size):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab_size, vocab_size)
            self.seen = {"train": [], "val": []}

        def on_train_epoch_start(self):
            self.seen["train"].append([])

        def on_validation_epoch_start(self):
            self.seen["val"].append([])

        def training_step(self, batch, batch_idx):
            assert set(batch) == {"input_ids", "targets", "levels", "target_bytes"}
            self.seen["train"][-1].extend(batch["input_ids"][:, :4].tolist())
            logits = self.emb(batch["input_ids"])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())

        def validation_step(self, batch, batch_idx):
            self.seen["val"][-1].extend(batch["input_ids"][:, :4].tolist())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = TextDataModule(source=corpus, seq_len=16, batch_size=4, val_fraction=0.25, test_fraction=0.1)
    model = Recorder(dm.vocab_size)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump({"seen": model.seen, "world_size": trainer.world_size,
                   "loader": type(trainer.train_dataloader).__name__}, f)
    """
)


@pytest.mark.slow
def test_ddp_ranks_run_equal_batches_over_all_windows(tmp_path):
    corpus = write_text_corpus(tmp_path / "corpus", n_docs=12)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script), corpus, str(out)],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["loader"] == "EpochSeededDataLoader"

    dm = TextDataModule(source=corpus, seq_len=16, batch_size=4, val_fraction=0.25, test_fraction=0.1)
    dm.setup()
    for split in ("train", "val"):
        windows = sorted(dm.datasets[split][i]["input_ids"][:4].tolist() for i in range(len(dm.datasets[split])))
        per_rank = (len(windows) + 1) // 2  # DistributedSampler pads to an even count
        for epoch in range(2):
            seen = [r["seen"][split][epoch] for r in ranks]
            assert len(seen[0]) == len(seen[1]) == per_rank
            assert sorted(set(map(tuple, seen[0] + seen[1]))) == sorted(set(map(tuple, windows)))
    train = [r["seen"]["train"] for r in ranks]
    assert train[0][0] != train[0][1]  # reshuffled every epoch
