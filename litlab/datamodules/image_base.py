"""What the image datamodules share: the base class and a decoding dataset.

Every image datamodule sets ``num_classes``, ``img_size``, ``in_chans`` and ``class_names`` in its
constructor (the CLI links them into the model before ``setup`` runs) and yields batches
``(images float32 [B, in_chans, img_size, img_size], labels int64 [B])``; ``predict_dataloader`` is the
test split.

:class:`DecodedImageDataset` turns records (a file path, or a byte range inside a tar shard) into
tensors. A record that does not decode raises :class:`~litlab.errors.DataError` naming its file (and
shard/key); with ``skip_corrupt=True`` it is marked bad, replaced by the next good record (so batch
sizes, and the number of batches per DDP rank, do not change) and counted. The marks live in a
shared-memory tensor, so counts made inside DataLoader workers are seen by the main process.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from litlab.datamodules.loaders import map_loader
from litlab.errors import DataError, check_int

log = logging.getLogger(__name__)


class ImageDataModuleBase(L.LightningDataModule):
    """Base class of the image datamodules (not used directly).

    Args:
        batch_size: Samples per batch (per device under DDP).
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: Seed of the split (where there is one), of shuffling and of augmentation.
    """

    num_classes: int
    img_size: int
    in_chans: int
    class_names: list[str]

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def save_resolved_hparams(self, *names: str) -> None:
        """Replace the hparams ``names`` (saved as given, e.g. ``None``) by the attributes' resolved values.

        The CLI links ``num_classes``/``img_size``/``in_chans`` into the model, so both hparams hold them;
        Lightning refuses to log a model and a datamodule whose shared hparams differ. (Under LightningCLI,
        ``save_hyperparameters`` records the config as given, whatever the constructor does.)
        """
        self.save_hyperparameters({name: getattr(self, name) for name in names})

    # -- loaders -----------------------------------------------------------------------------------
    def current_epoch(self) -> int | None:
        """The Trainer's epoch when a Trainer drives this datamodule (None otherwise)."""
        return self.trainer.current_epoch if self.trainer is not None else None

    def _map_loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        """A DataLoader over a map-style dataset; under DDP Lightning adds a DistributedSampler."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before {split}_dataloader()")
        return map_loader(dataset, self.batch_size, self.num_workers, self.seed, shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._map_loader(self.train_dataset, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._map_loader(self.val_dataset, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._map_loader(self.test_dataset, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order."""
        return self.test_dataloader()

    # -- skipped samples ---------------------------------------------------------------------------
    @property
    def num_skipped(self) -> int:
        """Corrupt samples skipped so far (only with ``skip_corrupt=True``; on this process and its workers)."""
        datasets = {id(ds): ds for ds in (self.train_dataset, self.val_dataset, self.test_dataset)}
        return sum(ds.num_skipped for ds in datasets.values() if isinstance(ds, DecodedImageDataset))

    def teardown(self, stage: str) -> None:
        if self.num_skipped:
            rank_zero_warn(f"{type(self).__name__}: skipped {self.num_skipped} corrupt sample(s) on this rank")


@dataclass(frozen=True)
class ImageRecord:
    """Where one image lives: a file (``offset``/``size`` None) or a byte range of a tar shard.

    ``name`` is what error messages show (the file path, or ``shard key``).
    """

    path: str
    label: int
    name: str
    offset: int | None = None
    size: int | None = None

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset is None:
                return f.read()
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise DataError(f"{self.name}: expected {self.size} bytes at offset {self.offset}, got {len(data)}")
        return data


def decode_image(data: bytes, mode: str, name: str) -> Image.Image:
    """Fully decode image bytes with PIL and convert to ``mode``; DataError naming ``name`` if that fails."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert(mode)  # convert() forces the full decode, so truncated files fail here
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        raise DataError(f"cannot decode image {name}: {type(exc).__name__}: {exc}") from exc


class DecodedImageDataset(Dataset):
    """Map-style dataset of :class:`ImageRecord` decoded with PIL and transformed.

    Args:
        records: The samples, in order.
        transform: PIL image -> float tensor.
        mode: PIL mode to convert to ("L" or "RGB").
        skip_corrupt: Replace undecodable records by the next good one (and count them) instead of raising.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], torch.Tensor],
        mode: str,
        skip_corrupt: bool = False,
    ):
        self.records = list(records)
        self.transform = transform
        self.mode = mode
        self.skip_corrupt = skip_corrupt
        # one flag per record, in shared memory so that marks made in loader workers are seen here
        self.bad = torch.zeros(len(self.records), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def num_skipped(self) -> int:
        return int(self.bad.sum())

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        try:
            data = record.read()
        except OSError as exc:
            raise DataError(f"cannot read {record.name}: {exc}") from exc
        return self.transform(decode_image(data, self.mode, record.name)), record.label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not self.skip_corrupt:
            return self.load(index)
        n = len(self.records)
        for step in range(n):
            j = (index + step) % n
            if self.bad[j]:
                continue
            try:
                return self.load(j)
            except DataError as exc:
                self.bad[j] = True
                log.warning("skipping corrupt sample (skip_corrupt=True; pid %d): %s", os.getpid(), exc)
        raise DataError(f"every one of the {n} images is corrupt (first: {self.records[0].name})")
