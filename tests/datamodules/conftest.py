"""Fixtures of the datamodule tests: tiny ImageFolder trees written with PIL."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

CLASSES = ("cat", "dog", "eel")


def write_image_folder(
    root: str | os.PathLike,
    counts: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    size: int = 16,
    seed: int = 0,
) -> str:
    """``root/<split>/<class>/<i>.{jpg,png}``: ``counts[split]`` images per class, alternating JPEG/PNG.

    Each image is a flat colour that encodes its class (red = 60 * label), plus mild noise, so that a
    label can be checked from the pixels.
    """
    counts = {"train": 4, "val": 2} if counts is None else counts
    rng = np.random.RandomState(seed)
    for split, n in counts.items():
        for label, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                pixels = np.full((size, size, 3), 60 * label + 20, dtype=np.int16)
                pixels += rng.randint(-5, 6, pixels.shape)
                img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                img.save(os.path.join(folder, f"{split}{i}.{'jpg' if i % 2 == 0 else 'png'}"))
    return str(root)


@pytest.fixture
def make_folder(tmp_path) -> Callable[..., str]:
    """Factory: ``make_folder(counts=..., name="data")`` writes a tiny ImageFolder under tmp_path."""

    def make(name: str = "data", **kwargs) -> str:
        return write_image_folder(tmp_path / name, **kwargs)

    return make
