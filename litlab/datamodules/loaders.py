"""The DataLoaders of litlab's map-style datamodules: a training shuffle that is a function of ``(seed, epoch)``
only (so a resumed run sees the same batches), and the loader every datamodule builds for a split."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> 1)


class EpochRandomSampler(RandomSampler):
    """A RandomSampler with ``set_epoch`` (Lightning calls it before each training epoch)."""

    def __init__(self, data_source: Dataset, generator: torch.Generator):
        super().__init__(data_source, generator=generator)
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class EpochSeededDataLoader(DataLoader):
    """A shuffling DataLoader whose randomness is a function of ``(seed, epoch)``, not of earlier draws.

    When the first batch of an epoch is requested, it reseeds its generator (which draws the permutation
    and the loader workers' seeds) from ``(seed, epoch)`` and calls ``dataset.set_epoch(epoch)`` when the
    dataset has it. The epoch is the sampler's (Lightning calls ``set_epoch`` on it before each epoch; under
    DDP Lightning swaps in a DistributedSampler, itself seeded by epoch), else the number of epochs
    iterated so far. So a run resumed from an end-of-epoch checkpoint sees the same batches as an
    uninterrupted one (with ``num_workers=0``; with workers Lightning starts the first resumed epoch's
    workers before it sets the epoch).

    Args:
        dataset: Map-style dataset.
        seed: Base seed.
        **kwargs: DataLoader arguments other than ``shuffle``, ``sampler`` and ``generator``.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, sampler=None, generator=None, **kwargs):
        generator = torch.Generator() if generator is None else generator
        sampler = EpochRandomSampler(dataset, generator) if sampler is None else sampler
        super().__init__(dataset, sampler=sampler, generator=generator, **kwargs)
        self.seed = seed
        self.epochs_started = 0

    def __iter__(self):
        return self._epoch_iter()

    def _epoch_iter(self):
        epoch = getattr(self.sampler, "epoch", None)  # read at the first next(), after Lightning's set_epoch
        epoch = self.epochs_started if epoch is None else epoch
        self.epochs_started += 1
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        yield from super().__iter__()


def map_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int, shuffle: bool) -> DataLoader:
    """The DataLoader litlab's datamodules use for a map-style dataset (under DDP Lightning adds its sampler).

    Args:
        dataset: Map-style dataset.
        batch_size: Items per batch.
        num_workers: Loader worker processes (kept alive between epochs when > 0).
        seed: Seed of the training shuffle (a function of ``(seed, epoch)`` only, see ``EpochSeededDataLoader``).
        shuffle: Shuffle (training) or keep the order (evaluation).
    """
    kwargs = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
        "drop_last": False,
    }
    if shuffle:
        return EpochSeededDataLoader(dataset, seed=seed, **kwargs)
    return DataLoader(dataset, shuffle=False, **kwargs)
