"""The validation data of evolutionary callbacks: the loader to split, its parts as loaders, and their batches.

The selection/held-out split itself is :mod:`litlab.evolution.split` (of the validation dataset's indices,
independent of the number of processes).

Under DDP each rank takes the strided shard ``indices[rank::world_size]`` of each part (what a
``DistributedSampler`` does, without its padding: padding repeats examples and would change the metric). Shards
may differ by one example; that is fine, because the engine reduces *sums and counts* (or gathers per-batch
outputs) once per evaluation, whatever the number of batches of a rank, so the fitness equals the one-process
value and every rank makes the same collective calls.

The validation dataset is taken from ``trainer.datamodule.val_dataloader()`` (a fresh, unsharded loader), else
from ``trainer.val_dataloaders`` (whose ``.dataset`` is the whole set even when Lightning added a
``DistributedSampler``). It must be map-style (``len`` and indexing): an iterable dataset (webdataset shards)
has no indices to split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from litlab.errors import ConfigError
from litlab.evolution import shard


def validation_loader(trainer: Any, who: str = "the search") -> DataLoader:
    """The unsharded validation loader of the trainer's datamodule, else the trainer's own validation loader."""
    loader: Any = None
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        try:
            loader = datamodule.val_dataloader()
        except NotImplementedError:  # LightningDataModule's default when no val_dataloader is defined
            loader = None
    if loader is None:
        loader = trainer.val_dataloaders
    if isinstance(loader, list | tuple):
        loader = loader[0] if loader else None
    elif isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    if not isinstance(loader, DataLoader):
        raise ConfigError(f"{who} needs validation data: give the datamodule (or the LightningModule) "
                          f"a val_dataloader() returning a DataLoader; got {type(loader).__name__}")
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ConfigError(f"{who} needs a map-style validation dataset (len and indexing) to split "
                          f"into selection and held-out parts; got {type(dataset).__name__}")
    return loader


def subset_loader(loader: DataLoader, indices: np.ndarray, batch_size: int | None = None,
                  distributed: bool = True) -> DataLoader:
    """A loader over ``indices`` of ``loader.dataset`` (this rank's shard of them when ``distributed``), in order.

    Args:
        loader: The validation loader (its dataset, batch size, collate function and workers are reused).
        indices: Indices into ``loader.dataset``.
        batch_size: Batch size; default: the loader's (64 when it has none, e.g. with a batch sampler).
        distributed: Keep only this rank's shard (``indices[rank::world_size]``).
    """
    dataset: Dataset = loader.dataset
    part = shard(indices.tolist()) if distributed else indices.tolist()
    size = batch_size or loader.batch_size or 64
    return DataLoader(Subset(dataset, part), batch_size=size, shuffle=False, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory, drop_last=False)


def device_batches(trainer: Any, loader: DataLoader, limit: int = 0, cache: bool = True) -> Any:
    """The loader's batches on the strategy's device: a list when ``cache`` (or ``limit`` > 0: the first
    ``limit`` batches), else a re-iterable that moves each batch when read."""
    if not (cache or limit):
        return _OnDevice(loader, trainer)
    batches = []
    for index, batch in enumerate(loader):
        if limit and index >= limit:
            break
        batches.append(trainer.strategy.batch_to_device(batch))
    return batches


class _OnDevice:
    """Re-iterable batches of a loader, each moved to the strategy's device when read."""

    def __init__(self, loader: DataLoader, trainer: Any) -> None:
        self.loader = loader
        self.trainer = trainer

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield self.trainer.strategy.batch_to_device(batch)
