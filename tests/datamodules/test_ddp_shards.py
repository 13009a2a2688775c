"""A real 2-process DDP run (gloo, CPU) of the shard datamodule through Lightning's Trainer."""

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from litlab.datamodules import write_image_shards

from .conftest import write_image_folder

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import lightning.pytorch as L
    from litlab.datamodules import ImageFolderDataModule, WebDatasetImageDataModule

    folder, shards, out = sys.argv[1], sys.argv[2], sys.argv[3]

    class Counter(L.LightningModule):
        # records, per epoch, the number of train batches, the train labels and the val labels of its rank

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3 * 8 * 8, 3)
            self.seen = {"train": [], "val": []}
            self.labels = []

        def on_train_epoch_start(self):
            self.seen["train"].append(0)
            self.labels.append([])

        def on_validation_epoch_start(self):
            self.seen["val"].append([])

        def validation_step(self, batch, batch_idx):
            self.seen["val"][-1].extend(batch[1].tolist())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            assert x.shape[1:] == (3, 8, 8) and y.dtype == torch.int64
            self.seen["train"][-1] += 1
            self.labels[-1].extend(y.tolist())
            return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def fit(dm):
        model = Counter()
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
        trainer.fit(model, datamodule=dm)
        return trainer, {"seen": model.seen, "train_labels": model.labels, "world_size": trainer.world_size,
                         "train_loader": type(trainer.train_dataloader).__name__}

    shard_dm = WebDatasetImageDataModule(
        train_shards=os.path.join(shards, "train-*.tar"), val_shards=os.path.join(shards, "val-*.tar"),
        img_size=8, batch_size=2, num_workers=1, shuffle_buffer=4,
    )
    folder_dm = ImageFolderDataModule(folder, img_size=8, batch_size=2, augment=False)
    trainer, result = fit(shard_dm)
    _, result["folder"] = fit(folder_dm)  # a second Trainer in the same processes
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(result, f)
    """
)


@pytest.mark.slow
def test_every_rank_runs_the_same_number_of_batches(tmp_path):
    # 3 train shards (4 + 4 + 3 images): they do not divide between 2 ranks
    src = write_image_folder(tmp_path / "src", counts={"train": 4, "val": 2}, size=8)
    os.remove(os.path.join(src, "train", "eel", "train3.png"))
    shards = str(tmp_path / "shards")
    paths = write_image_shards(src, shards, shard_size=4)
    assert sum("train-" in p for p in paths) == 3
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script), src, shards, str(out)],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # train: 11 samples // (2 ranks * batch 2) = 2 batches on each rank, every epoch
    assert [r["seen"]["train"] for r in ranks] == [[2, 2], [2, 2]]
    assert ranks[0]["train_loader"] == "EpochWebLoader"
    # val (map-style, DistributedSampler): 6 samples = 3 per rank, every sample seen once per epoch
    for epoch in range(2):
        per_rank = [r["seen"]["val"][epoch] for r in ranks]
        assert [len(v) for v in per_rank] == [3, 3]
        assert sorted(per_rank[0] + per_rank[1]) == [0, 0, 1, 1, 2, 2]
    # the image folder module: Lightning rebuilds its epoch-seeded train loader with a DistributedSampler
    folder = [r["folder"] for r in ranks]
    assert folder[0]["train_loader"] == "EpochSeededDataLoader"
    assert [f["seen"]["train"] for f in folder] == [[3, 3], [3, 3]]  # ceil(11 / 2) = 6 samples per rank
    for epoch in range(2):  # all 11 images, plus one repeated by the DistributedSampler's padding
        labels = folder[0]["train_labels"][epoch] + folder[1]["train_labels"][epoch]
        assert len(labels) == 12 and not Counter({0: 4, 1: 4, 2: 3}) - Counter(labels)
    assert folder[0]["train_labels"][0] != folder[0]["train_labels"][1]  # reshuffled each epoch
