"""Each image datamodule drives a real Trainer (single process) next to a model whose hparams share keys."""

import os

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from litlab.datamodules import (
    EmbeddedImageDataModule,
    ImageFolderDataModule,
    WebDatasetImageDataModule,
    write_image_shards,
)

from .conftest import write_image_folder


class Linear(L.LightningModule):
    """The CLI links num_classes/img_size/in_chans from the datamodule; they land in both hparams."""

    def __init__(self, num_classes: int, img_size: int, in_chans: int):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(in_chans * img_size * img_size, num_classes)

    def forward(self, batch):
        return self.layer(batch[0].flatten(1))

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch), batch[1])

    def test_step(self, batch, batch_idx):
        self.log("test_loss", torch.nn.functional.cross_entropy(self(batch), batch[1]))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_datamodule(kind: str, tmp_path):
    if kind == "embedded":
        return EmbeddedImageDataModule(dataset="digits", batch_size=16)  # img_size=None -> 8
    src = write_image_folder(tmp_path / "src", counts={"train": 3, "val": 1}, size=8)
    if kind == "folder":
        return ImageFolderDataModule(src, img_size=8, batch_size=4, num_workers=1)
    write_image_shards(src, str(tmp_path / "shards"))
    shards = os.path.join(str(tmp_path / "shards"), "{}-000000.tar")
    return WebDatasetImageDataModule(shards.format("train"), shards.format("val"), img_size=8, batch_size=4,
                                     num_workers=1)  # num_classes=None -> 3 from meta.json


@pytest.mark.parametrize("kind", ["embedded", "folder", "shards"])
def test_fit_validate_test_predict(kind, tmp_path):
    dm = make_datamodule(kind, tmp_path)
    model = Linear(dm.num_classes, dm.img_size, dm.in_chans)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=2, logger=CSVLogger(tmp_path),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4 and "val_loss" in trainer.callback_metrics
    trainer.test(model, datamodule=dm, verbose=False)
    preds = trainer.predict(model, datamodule=dm)
    assert sum(len(p) for p in preds) == len(dm.test_dataset)
