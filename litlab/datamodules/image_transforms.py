"""Transforms shared by the folder and shard image datamodules (timm's ``create_transform``).

Training ("light" augmentation, when asked for): random resized crop with scale in [0.25, 1] and a
horizontal flip, nothing else (no colour jitter, no auto-augment, no random erasing). Evaluation (and
training with ``augment=False``): timm's eval transform, resize to ``img_size / 0.875`` then centre crop.
Both end with ``ToTensor`` and ``Normalize(mean, std)``. Images are converted to ``"L"`` for one channel
and ``"RGB"`` for three before the transform, so a grey PNG and a CMYK JPEG both come out right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

from litlab.errors import ConfigError

#: Scale range of the random resized crop used by the light training augmentation.
TRAIN_CROP_SCALE = (0.25, 1.0)


def pil_mode(in_chans: int) -> str:
    """The PIL mode that images are converted to for ``in_chans`` channels (1 -> "L", 3 -> "RGB")."""
    if in_chans == 1:
        return "L"
    if in_chans == 3:
        return "RGB"
    raise ConfigError(f"in_chans={in_chans!r} is not allowed: use 1 (greyscale) or 3 (RGB)")


def resolve_mean_std(
    in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation constants for ``in_chans`` channels.

    ``None`` means ImageNet's statistics (for one channel: their average over the three channels).
    A single value is repeated over the channels; otherwise there must be ``in_chans`` values.
    """
    pil_mode(in_chans)  # validates in_chans
    out = []
    for name, value, default in (("mean", mean, IMAGENET_DEFAULT_MEAN), ("std", std, IMAGENET_DEFAULT_STD)):
        if value is None:
            value = (sum(default) / len(default),) if in_chans == 1 else tuple(default)
        value = tuple(float(v) for v in value)
        if len(value) == 1:
            value = value * in_chans
        if len(value) != in_chans:
            raise ConfigError(
                f"{name}={list(value)!r} is not allowed: give 1 or in_chans={in_chans} values (or null for ImageNet's)"
            )
        if name == "std" and any(v <= 0 for v in value):
            raise ConfigError(f"std={list(value)!r} is not allowed: every value must be > 0")
        out.append(value)
    return out[0], out[1]


def build_image_transform(
    img_size: int,
    in_chans: int,
    training: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """A transform from a PIL image (any mode) to a normalised float tensor ``[in_chans, img_size, img_size]``.

    Args:
        img_size: Side of the square output.
        in_chans: 1 or 3 output channels.
        training: Use the light training augmentation (random resized crop + flip) instead of resize + centre crop.
        mean: Normalisation mean; ``None`` for ImageNet's (see :func:`resolve_mean_std`).
        std: Normalisation std; ``None`` for ImageNet's.
    """
    mean_t, std_t = resolve_mean_std(in_chans, mean, std)
    if training:
        tf = create_transform(
            input_size=(in_chans, img_size, img_size),
            is_training=True,
            scale=TRAIN_CROP_SCALE,
            hflip=0.5,
            color_jitter=None,
            mean=mean_t,
            std=std_t,
        )
    else:
        tf = create_transform(input_size=(in_chans, img_size, img_size), is_training=False, mean=mean_t, std=std_t)
    return _ConvertThen(pil_mode(in_chans), tf)


class _ConvertThen:
    """Convert a PIL image to ``mode`` and apply ``transform`` (a picklable class, for loader workers)."""

    def __init__(self, mode: str, transform: Callable):
        self.mode = mode
        self.transform = transform

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != self.mode:
            img = img.convert(self.mode)
        return self.transform(img)

    def __repr__(self) -> str:
        return f"_ConvertThen(mode={self.mode!r}, transform={self.transform!r})"
