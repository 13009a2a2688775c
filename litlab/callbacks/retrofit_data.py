"""The two parts of the validation set that AfterLearnER uses: the *selection* set the optimizer is scored on and
the *held-out* set that only reports (and guards) the result.

The split is of the validation dataset's *indices*: a permutation drawn from ``numpy.random.RandomState(seed)``
cut at ``round(size · selection_fraction)``; both parts are sorted, disjoint and cover the set, and they depend
on ``(size, selection_fraction, seed)`` only, never on the number of processes.

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

from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from litlab.errors import ConfigError
from litlab.evolution import shard


def split_indices(size: int, selection_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint selection and held-out indices of a dataset of ``size`` examples.

    Args:
        size: Number of examples of the validation set.
        selection_fraction: Share of them in the selection set, in ``(0, 1]`` (1: no held-out set).
        seed: Seed of the permutation.

    Raises:
        ConfigError: when a part would be empty although it is asked for.
    """
    if not 0.0 < selection_fraction <= 1.0:
        raise ConfigError(f"selection_fraction={selection_fraction!r} is not allowed: it must be in (0, 1]")
    permutation = np.random.RandomState(seed).permutation(size)
    count = round(size * selection_fraction)
    if count < 1 or (selection_fraction < 1.0 and count >= size):
        raise ConfigError(f"selection_fraction={selection_fraction!r} of a validation set of {size} example(s) "
                          f"leaves an empty {'selection' if count < 1 else 'held-out'} set")
    return np.sort(permutation[:count]), np.sort(permutation[count:])


def validation_loader(trainer: Any) -> DataLoader:
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
        raise ConfigError("EvolutionaryRetrofit needs validation data: give the datamodule (or the LightningModule) "
                          f"a val_dataloader() returning a DataLoader; got {type(loader).__name__}")
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ConfigError(f"EvolutionaryRetrofit needs a map-style validation dataset (len and indexing) to split "
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
