"""Images on disk in torchvision's ImageFolder layout.

::

    root/train/<class>/<image>.jpg     required
    root/val/<class>/<image>.png       required
    root/test/<class>/...              optional; when absent, the test (and predict) split is val

Classes are the sub-folder names of ``root/train`` in sorted order (label = index); ``val`` and ``test``
must have the same class folders. Files with torchvision's image extensions are used, in sub-folders too.

Checks, each a :class:`~litlab.errors.DataError` naming the path: a missing root or split folder, a split
without class folders, a class folder without images, class folders that differ between splits. Class
folders are checked in the constructor, images are listed in ``setup``. An image that does not decode
raises a DataError naming the file when it is loaded; with ``skip_corrupt=True`` it is replaced by the next
good image of the split instead, logged, and counted in ``num_skipped`` (see
:class:`~litlab.datamodules.image_base.DecodedImageDataset`). Batches keep their size, so DDP ranks keep
equal batch counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from litlab.datamodules.image_base import (
    DecodedImageDataset,
    ImageDataModuleBase,
    ImageRecord,
)
from litlab.datamodules.image_transforms import (
    build_image_transform,
    pil_mode,
    resolve_mean_std,
)
from litlab.errors import DataError, check_int

log = logging.getLogger(__name__)


def list_classes(split_dir: str) -> list[str]:
    """Sorted class folder names of an ImageFolder split; DataError if the folder is missing or has none."""
    if not os.path.isdir(split_dir):
        raise DataError(f"image folder split {split_dir} does not exist (or is not a directory)")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"image folder split {split_dir} has no class folders (expected {split_dir}/<class>/<image>)")
    return classes


def check_same_classes(reference_dir: str, reference: Sequence[str], other_dir: str, other: Sequence[str]) -> None:
    """DataError listing the class folders that are in one split but not in the other."""
    if list(reference) != list(other):
        only_ref = sorted(set(reference) - set(other))
        only_other = sorted(set(other) - set(reference))
        raise DataError(
            f"class folders differ between {reference_dir} and {other_dir}: "
            f"only in {reference_dir}: {only_ref}; only in {other_dir}: {only_other}"
        )


def list_images(split_dir: str, classes: Sequence[str]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image of a split, sorted; DataError naming class folders without images."""
    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples = make_dataset(split_dir, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    found = {label for _, label in samples}
    empty = [os.path.join(split_dir, c) for c in classes if class_to_idx[c] not in found]
    if empty:
        raise DataError(f"class folder(s) without images ({', '.join(IMG_EXTENSIONS)}): {', '.join(empty)}")
    return samples


class ImageFolderDataModule(ImageDataModuleBase):
    """Image classification from ``root/{train,val[,test]}/<class>/<image>`` folders, with timm transforms.

    Args:
        root: Folder holding ``train/`` and ``val/`` (and optionally ``test/``) in ImageFolder layout.
        img_size: Side of the square images in the batches.
        in_chans: 1 (images converted to greyscale "L") or 3 (converted to "RGB").
        augment: Light training augmentation (random resized crop, scale 0.25-1, and horizontal flip);
            otherwise training uses the eval transform (resize + centre crop).
        mean: Normalisation mean (1 or in_chans values); ``None`` for ImageNet's.
        std: Normalisation std (1 or in_chans values); ``None`` for ImageNet's.
        skip_corrupt: Replace images that do not decode by the next good one (logged, counted in
            ``num_skipped``) instead of raising DataError.
        batch_size: Samples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        seed: Seed of the shuffling.
    """

    def __init__(
        self,
        root: str,
        img_size: int = 224,
        in_chans: int = 3,
        augment: bool = True,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        skip_corrupt: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.img_size = check_int("img_size", img_size, 1)
        pil_mode(in_chans)  # ConfigError unless 1 or 3
        self.in_chans = in_chans
        self.mean, self.std = resolve_mean_std(in_chans, mean, std)
        self.save_hyperparameters()
        self.root = os.fspath(root)
        self.augment = augment
        self.skip_corrupt = skip_corrupt
        if not os.path.isdir(self.root):
            raise DataError(f"image folder root {self.root} does not exist (or is not a directory)")
        self.split_dirs = {s: os.path.join(self.root, s) for s in ("train", "val", "test")}
        if not os.path.isdir(self.split_dirs["test"]):
            log.info("%s has no test/ folder: the test and predict splits are val", self.root)
            self.split_dirs["test"] = self.split_dirs["val"]
        self.class_names = list_classes(self.split_dirs["train"])
        for split in ("val", "test"):
            other = list_classes(self.split_dirs[split])
            check_same_classes(self.split_dirs["train"], self.class_names, self.split_dirs[split], other)
        self.num_classes = len(self.class_names)

    def _dataset(self, split: str, training: bool) -> DecodedImageDataset:
        samples = list_images(self.split_dirs[split], self.class_names)
        records = [ImageRecord(path=p, label=y, name=p) for p, y in samples]
        transform = build_image_transform(self.img_size, self.in_chans, training and self.augment, self.mean, self.std)
        return DecodedImageDataset(records, transform, pil_mode(self.in_chans), skip_corrupt=self.skip_corrupt)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset("train", training=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._dataset("val", training=False)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            if self.split_dirs["test"] == self.split_dirs["val"] and self.val_dataset is not None:
                self.test_dataset = self.val_dataset
            else:
                self.test_dataset = self._dataset("test", training=False)
