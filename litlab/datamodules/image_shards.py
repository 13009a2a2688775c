"""Images in webdataset tar shards (ImageNet layout: ``<key>.jpg``/``.png``/``.jpeg`` + ``<key>.cls``).

Shard arguments take a brace pattern (``data/train-{000000..000009}.tar``), a glob (``data/train-*.tar``),
a directory (every ``*.tar`` in it), or several of those joined by ``::``. They are resolved to a sorted
list of local, uncompressed ``.tar`` files in the constructor; a missing file is a DataError naming it.

Metadata: when the shards' directory holds the ``meta.json`` written by
:func:`~litlab.datamodules.shard_writer.write_image_shards`, it gives ``class_names``, ``num_classes``
and the number of samples of each shard (hence ``train_samples``, and a check that no shard was
truncated). Explicit ``num_classes``/``train_samples`` arguments override it. Without metadata
``num_classes`` is required and the train shards' tar headers are counted in ``setup`` (fast: no image
is read).

How the splits are read, and why every DDP rank runs the same number of batches:

* **train** streams with webdataset: ``ResampledShards`` (shards drawn with replacement, so no node or
  worker splitting is needed and uneven shard counts cannot make ranks stop at different steps; the
  draw is seeded by ``seed``, the epoch, the rank and the worker), tar expansion, a shuffle buffer
  (``shuffle_buffer`` samples), PIL decoding, the timm transform and batching happen in the workers; the
  ``WebLoader`` is cut by ``.with_epoch(train_samples // (world_size * batch_size))`` batches per rank.
  The epoch is read from the Trainer, so each epoch draws different shards.
* **val/test** are indexed in ``setup``: the tar headers give each record's byte range, the map-style
  dataset reads and decodes records on demand, and Lightning's DistributedSampler gives each rank an
  equal share (padded by repeating a few records, as for any map-style dataset). So evaluation sees every
  record once on one device and the usual DistributedSampler duplicates under DDP, and the index
  detects truncated shards (a record running past the end of the file, a missing end-of-archive marker,
  or a sample count different from ``meta.json``) before training starts.

Errors name the shard (and the record key when known): a truncated or unreadable shard, a record without
an image or a ``.cls``, a label that is not an integer in ``[0, num_classes)``, an image that does not
decode. With ``skip_corrupt=True``, bad records (and the unreadable tail of a truncated shard) are skipped,
logged, and counted in ``num_skipped`` instead; labels out of range still raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist
import webdataset as wds
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import IterableDataset
from webdataset.tariterators import group_by_keys, tar_file_expander
from webdataset.utils import make_seed, pytorch_worker_info

from litlab.datamodules.image_base import (
    DecodedImageDataset,
    ImageDataModuleBase,
    ImageRecord,
    decode_image,
)
from litlab.datamodules.image_transforms import (
    build_image_transform,
    pil_mode,
    resolve_mean_std,
)
from litlab.datamodules.shard_index import (
    IMAGE_EXTENSIONS,
    error_text,
    index_shard,
    parse_label,
    read_member,
    resolve_shards,
    shard_meta,
)
from litlab.errors import ConfigError, DataError, check_int

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------- train: streaming
class ShardStream(IterableDataset):
    """Endless stream of training batches from tar shards (resampled), decoded and transformed in workers.

    Args:
        shards: Shard paths.
        transform: PIL image -> float tensor.
        mode: PIL mode ("L" or "RGB").
        batch_size: Samples per batch.
        num_classes: Labels must lie in ``[0, num_classes)``.
        shuffle_buffer: Samples held by the shuffle buffer (0 or 1: no shuffling).
        seed: Base seed of the shard draw and the shuffle buffer.
        skip_corrupt: Skip (and count) bad records and truncated shard tails instead of raising.
        expected_counts: Samples of each shard per ``meta.json`` (to detect truncation), or None.
        num_workers: Loader workers (sizes the shared skip counter).
    """

    def __init__(
        self,
        shards: list[str],
        transform: Callable,
        mode: str,
        batch_size: int,
        num_classes: int,
        shuffle_buffer: int,
        seed: int,
        skip_corrupt: bool,
        expected_counts: dict[str, int] | None,
        num_workers: int,
    ):
        super().__init__()
        self.shards = shards
        self.transform = transform
        self.mode = mode
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.skip_corrupt = skip_corrupt
        self.expected_counts = expected_counts or {}
        self.epoch = 0
        # slot 0: main process, slot w + 1: loader worker w; shared so that the main process sees counts
        self.skipped = torch.zeros(num_workers + 1, dtype=torch.int64).share_memory_()

    def _skip(self, count: int, message: str) -> None:
        worker = torch.utils.data.get_worker_info()
        self.skipped[0 if worker is None else worker.id + 1] += count
        log.warning("skipping (skip_corrupt=True): %s", message)

    def samples(self, urls):
        """Pipeline stage: shard urls -> raw samples ``{"__key__", "__url__", "jpg", "cls", ...}``."""
        empty_in_a_row = 0
        for item in urls:
            url = item["url"]
            expected = self.expected_counts.get(url)
            n = 0
            problem = None
            try:
                with open(url, "rb") as stream:
                    for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                        n += 1
                        yield sample
            except Exception as exc:  # tarfile.ReadError, OSError, ... from a truncated or corrupt tar
                problem = f"shard {url} is unreadable after {n} samples (truncated or corrupt?): {error_text(exc)}"
                lost = max(1, expected - n) if expected is not None else 1
                if not self.skip_corrupt:
                    raise DataError(problem) from exc
            else:
                if expected is not None and n != expected:
                    problem = f"shard {url} has {n} samples but meta.json says {expected} (truncated or rewritten?)"
                    lost = max(0, expected - n)
                    if not self.skip_corrupt:
                        raise DataError(problem)
            if problem is not None:
                self._skip(lost, problem)
            empty_in_a_row = 0 if n else empty_in_a_row + 1
            if empty_in_a_row > 10 * len(self.shards) + 10:
                raise DataError(f"no readable samples in {empty_in_a_row} shards drawn in a row from {self.shards[:3]}...")

    def decode(self, samples):
        """Pipeline stage: raw samples -> ``(image tensor, label)``."""
        for sample in samples:
            name = f"shard {sample.get('__url__')}, key {sample.get('__key__')}"
            try:
                ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
                if ext is None:
                    members = sorted(k for k in sample if not k.startswith("__"))
                    raise DataError(f"{name}: no image member ({'/'.join(IMAGE_EXTENSIONS[:3])}...), has {members}")
                if "cls" not in sample:
                    raise DataError(f"{name}: no .cls member (label)")
                label = parse_label(sample["cls"], name)
                image = decode_image(sample[ext], self.mode, name)
            except DataError as exc:
                if not self.skip_corrupt:
                    raise
                self._skip(1, str(exc))
                continue
            if not 0 <= label < self.num_classes:
                raise DataError(f"{name}: label {label} is outside [0, num_classes={self.num_classes})")
            yield self.transform(image), label

    @staticmethod
    def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*batch)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def __iter__(self):
        rank, _, worker, _ = pytorch_worker_info()
        stages: list = [
            # seeded by (seed, epoch) here and by rank * 1000 + worker inside ResampledShards
            wds.ResampledShards(self.shards, seed=make_seed(self.seed, self.epoch), deterministic=True),
            self.samples,
        ]
        if self.shuffle_buffer > 1:
            stages.append(
                wds.shuffle(
                    self.shuffle_buffer,
                    initial=min(100, self.shuffle_buffer),
                    seed=make_seed(self.seed, self.epoch, rank, worker),
                )
            )
        stages += [self.decode, wds.batched(self.batch_size, collation_fn=self.collate, partial=False)]
        return iter(wds.DataPipeline(*stages))


class EpochWebLoader(wds.WebLoader):
    """``WebLoader`` over a :class:`ShardStream` cut to ``num_batches`` per epoch, with ``len()``.

    When an epoch's first batch is requested it sets the stream's epoch (from ``epoch_fn``, the Trainer's
    ``current_epoch``, else by counting epochs), so that worker processes, which receive a fresh copy of the
    stream each epoch, draw new shards, and a resumed run draws what an uninterrupted one would.
    """

    def __init__(
        self,
        stream: ShardStream,
        num_batches: int,
        num_workers: int = 0,
        epoch_fn: Callable[[], int | None] | None = None,
    ):
        super().__init__(
            stream,
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            persistent_workers=False,  # a persistent worker would keep the first epoch's stream
            pin_memory=torch.cuda.is_available(),
        )
        self.stream = stream
        self.num_batches = num_batches
        self.epoch_fn = epoch_fn
        self.epochs_started = 0
        self.with_epoch(num_batches)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        return self._epoch_iter()

    def _epoch_iter(self):
        # read at the first next(): Lightning creates the first iterator of a resumed run before it has
        # restored the epoch counter
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        self.stream.epoch = self.epochs_started if epoch is None else epoch
        self.epochs_started += 1
        yield from super().__iter__()


# ------------------------------------------------------------------------------------ datamodule
class WebDatasetImageDataModule(ImageDataModuleBase):
    """Image classification from webdataset tar shards (``<key>.jpg|png`` + ``<key>.cls``).

    Args:
        train_shards: Train shards: a path, brace pattern (``data/train-{000000..000009}.tar``), glob,
            directory, or several joined by ``::``.
        val_shards: Validation shards (same forms).
        test_shards: Test (and predict) shards; ``None`` uses the validation shards.
        num_classes: Number of classes; ``None`` reads it from the ``meta.json`` written by
            ``write_image_shards`` next to the train shards (an explicit value overrides it).
        img_size: Side of the square images in the batches.
        in_chans: 1 (images converted to greyscale "L") or 3 (converted to "RGB").
        train_samples: Training samples per epoch (all ranks together); ``None`` takes the sum over the
            train shards from ``meta.json``, else counts the records in ``setup``. Each rank runs
            ``train_samples // (world_size * batch_size)`` batches per epoch.
        augment: Light training augmentation (random resized crop, scale 0.25-1, and horizontal flip).
        mean: Normalisation mean (1 or in_chans values); ``None`` for ImageNet's.
        std: Normalisation std (1 or in_chans values); ``None`` for ImageNet's.
        skip_corrupt: Skip (log and count in ``num_skipped``) records that do not decode and the unreadable
            tails of truncated shards instead of raising DataError.
        shuffle_buffer: Size of the training sample shuffle buffer (per worker); 0 disables it.
        batch_size: Samples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        seed: Seed of the shard draw, the shuffle buffer and the sampler.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str,
        test_shards: str | None = None,
        num_classes: int | None = None,
        img_size: int = 224,
        in_chans: int = 3,
        train_samples: int | None = None,
        augment: bool = True,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        skip_corrupt: bool = False,
        shuffle_buffer: int = 1000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.img_size = check_int("img_size", img_size, 1)
        pil_mode(in_chans)
        self.in_chans = in_chans
        self.mean, self.std = resolve_mean_std(in_chans, mean, std)
        self.shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer, 0)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        if train_samples is not None:
            check_int("train_samples", train_samples, 1)
        self.augment = augment
        self.skip_corrupt = skip_corrupt
        self.shards = {
            "train": resolve_shards(train_shards, "train_shards"),
            "val": resolve_shards(val_shards, "val_shards"),
        }
        self.shards["test"] = self.shards["val"] if test_shards is None else resolve_shards(test_shards, "test_shards")
        classes, self.train_counts = shard_meta(self.shards["train"])
        if num_classes is None:
            if classes is None:
                raise ConfigError(
                    "num_classes=None is not allowed here: no meta.json (from write_image_shards) next to "
                    f"{self.shards['train'][0]}; pass num_classes"
                )
            num_classes = len(classes)
        elif classes is not None and len(classes) != num_classes:
            rank_zero_warn(f"num_classes={num_classes} overrides the {len(classes)} classes of meta.json")
        self.num_classes = num_classes
        self.save_hyperparameters()
        self.save_resolved_hparams("num_classes")
        self.class_names = list(classes) if classes and len(classes) == num_classes else [str(i) for i in range(num_classes)]
        if train_samples is None and self.train_counts is not None:
            train_samples = sum(self.train_counts.values())
        self.train_samples = train_samples
        self.index_skipped = 0
        self.train_stream: ShardStream | None = None

    # -- setup ------------------------------------------------------------------------------------
    def _index(self, split: str) -> DecodedImageDataset:
        shards = self.shards[split]
        _, counts = shard_meta(shards)
        records: list[ImageRecord] = []
        for shard in shards:
            groups = index_shard(shard)
            expected = counts.get(shard) if counts else None
            if expected is not None and expected != len(groups):
                msg = f"shard {shard} has {len(groups)} samples but meta.json says {expected} (truncated or rewritten?)"
                if not self.skip_corrupt:
                    raise DataError(msg)
                self.index_skipped += max(0, expected - len(groups))
                log.warning("skipping (skip_corrupt=True): %s", msg)
            with open(shard, "rb") as f:
                for key, members in groups:
                    name = f"shard {shard}, key {key}"
                    try:
                        ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
                        if ext is None:
                            raise DataError(f"{name}: no image member, has {sorted(members)}")
                        if "cls" not in members:
                            raise DataError(f"{name}: no .cls member (label)")
                        label = parse_label(read_member(f, members["cls"]), name)
                    except DataError as exc:
                        if not self.skip_corrupt:
                            raise
                        self.index_skipped += 1
                        log.warning("skipping (skip_corrupt=True): %s", exc)
                        continue
                    if not 0 <= label < self.num_classes:
                        raise DataError(f"{name}: label {label} is outside [0, num_classes={self.num_classes})")
                    m = members[ext]
                    records.append(ImageRecord(shard, label, name, offset=m.offset_data, size=m.size))
        if not records:
            raise DataError(f"{split} shards {shards[:3]}... hold no readable records")
        transform = build_image_transform(self.img_size, self.in_chans, False, self.mean, self.std)
        return DecodedImageDataset(records, transform, pil_mode(self.in_chans), skip_corrupt=self.skip_corrupt)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_stream is None:
            if self.train_samples is None:
                rank_zero_info(
                    f"counting the records of {len(self.shards['train'])} train shards "
                    "(pass train_samples, or write shards with write_image_shards, to skip this)"
                )
                self.train_samples = sum(len(index_shard(s)) for s in self.shards["train"])
            transform = build_image_transform(self.img_size, self.in_chans, self.augment, self.mean, self.std)
            self.train_stream = ShardStream(
                self.shards["train"],
                transform,
                pil_mode(self.in_chans),
                batch_size=self.batch_size,
                num_classes=self.num_classes,
                shuffle_buffer=self.shuffle_buffer,
                seed=self.seed,
                skip_corrupt=self.skip_corrupt,
                expected_counts=self.train_counts,
                num_workers=self.num_workers,
            )
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._index("val")
        if stage in (None, "test", "predict") and self.test_dataset is None:
            if self.shards["test"] == self.shards["val"] and self.val_dataset is not None:
                self.test_dataset = self.val_dataset
            else:
                self.test_dataset = self._index("test")

    # -- loaders ----------------------------------------------------------------------------------
    def _world_size(self) -> int:
        if self.trainer is not None:
            return self.trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1

    def train_dataloader(self) -> EpochWebLoader:
        """Resampled stream cut to ``train_samples // (world_size * batch_size)`` batches on every rank."""
        if self.train_stream is None:
            raise RuntimeError(f"{type(self).__name__}: call setup('fit') before train_dataloader()")
        world_size = self._world_size()
        num_batches = self.train_samples // (world_size * self.batch_size)
        if num_batches == 0:
            rank_zero_warn(
                f"train_samples={self.train_samples} < world_size {world_size} x batch_size {self.batch_size}: "
                "running 1 batch per rank per epoch"
            )
            num_batches = 1
        return EpochWebLoader(self.train_stream, num_batches, self.num_workers, epoch_fn=self.current_epoch)

    @property
    def num_skipped(self) -> int:
        """Records skipped so far with ``skip_corrupt=True`` (index, loaders and their workers, this rank)."""
        stream = int(self.train_stream.skipped.sum()) if self.train_stream is not None else 0
        return super().num_skipped + self.index_skipped + stream
