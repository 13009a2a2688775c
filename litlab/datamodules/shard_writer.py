"""Write webdataset tar shards (ImageNet layout) from an ImageFolder tree; ``litlab write_shards``.

Each sample of a shard is two tar members, ``<key>.<ext>`` holding the original image bytes (``jpg``,
``png``, ``ppm``; other formats, e.g. BMP, WebP or TIFF, are re-encoded losslessly as ``png``) and
``<key>.cls`` holding the integer label as ASCII text. Keys are ``<split>_<index>`` (no dots).

Shards are named ``[<prefix>-]<split>-000000.tar``. A split of ``N`` images gets
``S = ceil(N / shard_size)`` shards, rounded up to a multiple of ``num_shards_multiple_of``, and the
images are dealt evenly (shard sizes differ by at most one), so shards split across ranks/workers hold
equal work. Images are shuffled (seeded) before being dealt, so every shard mixes the classes.

Next to the shards, ``meta.json`` describes them; :class:`~litlab.datamodules.image_shards.WebDatasetImageDataModule`
reads it for the class names, ``num_classes``, the samples per epoch and to detect truncated shards::

    {"format": "litlab-image-shards", "version": 1,
     "classes": ["cat", "dog"],
     "shards": {"train-000000.tar": {"split": "train", "num_samples": 334}, ...},
     "splits": {"train": {"split": "train", "num_shards": 3, "num_samples": 1000}, ...}}

(``splits`` is keyed by the shard name stem, ``<prefix>-<split>`` or ``<split>``.)

Writing another split into the same ``dst`` merges into the existing ``meta.json`` (the classes must
agree). Shards are written to a temporary name and renamed when complete, and every tar member has
``mtime=0``, so the same inputs and seed give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tempfile

import numpy as np
import webdataset as wds
from PIL import Image

from litlab.datamodules.image_folder import (
    check_same_classes,
    list_classes,
    list_images,
)
from litlab.errors import ConfigError, DataError, check_int

log = logging.getLogger(__name__)

META_FILENAME = "meta.json"
META_FORMAT = "litlab-image-shards"
DEFAULT_SPLITS = ("train", "val", "test")
#: PIL format -> extension kept as is (webdataset's PIL decoder reads these); anything else becomes png.
_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "PPM": "ppm"}


def _image_bytes(path: str) -> tuple[str, bytes]:
    """``(extension, bytes)`` for one image file: the original bytes, or a PNG re-encoding."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(path) as img:
            fmt = img.format
            if fmt in _KEEP_FORMATS:
                return _KEEP_FORMATS[fmt], data
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return "png", buf.getvalue()
    except Exception as exc:  # unreadable file, or PIL cannot identify/decode it
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def load_meta_json(directory: str) -> object | None:
    """The parsed ``meta.json`` of a shard directory (any format), or None when there is none."""
    path = os.path.join(directory, META_FILENAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"shard metadata {path} is unreadable: {exc}") from exc


def read_meta(directory: str) -> dict | None:
    """The ``meta.json`` of an image shard directory, or None when there is none; DataError if it is unreadable."""
    meta = load_meta_json(directory)
    if meta is None:
        return None
    path = os.path.join(directory, META_FILENAME)
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise DataError(f"shard metadata {path} is not a {META_FORMAT} file (format={meta.get('format')!r})")
    return meta


def _write_json_atomic(path: str, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".meta-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def write_image_shards(
    src: str,
    dst: str,
    split: str | None = None,
    shard_size: int = 1000,
    prefix: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_shards_multiple_of: int = 1,
) -> list[str]:
    """Write the images of an ImageFolder tree as webdataset tar shards plus a ``meta.json``.

    Args:
        src: ImageFolder root (``src/train/<class>/<image>``, ``src/val/...``, ...).
        dst: Output directory (created if needed).
        split: The one split (sub-folder of ``src``) to write; ``None`` writes each of train, val and
            test that exists. Labels are indices into the sorted class folders of ``src/train`` when it
            exists (so every split agrees), else of the split itself.
        shard_size: Maximum number of images per shard.
        prefix: Optional file name prefix: shards are ``<prefix>-<split>-000000.tar``.
        shuffle: Shuffle the images (seeded) before dealing them to shards.
        seed: Seed of the shuffle.
        num_shards_multiple_of: Make the number of shards of each split a multiple of this
            (e.g. number of GPUs x loader workers), so shards split evenly across them.

    Returns:
        The paths of the shards written, in order.
    """
    check_int("shard_size", shard_size, 1)
    check_int("num_shards_multiple_of", num_shards_multiple_of, 1)
    if prefix is not None and (not prefix or "/" in prefix or os.sep in prefix):
        raise ConfigError(f"prefix={prefix!r} is not allowed: a non-empty file name prefix without '/'")
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isdir(src):
        raise DataError(f"shard writer source {src} does not exist (or is not a directory)")
    if split is not None:
        if not os.path.isdir(os.path.join(src, split)):
            raise DataError(f"shard writer source split {os.path.join(src, split)} does not exist")
        splits = [split]
    else:
        splits = [s for s in DEFAULT_SPLITS if os.path.isdir(os.path.join(src, s))]
        if not splits:
            raise DataError(
                f"shard writer source {src} has none of the split folders {list(DEFAULT_SPLITS)} "
                "(pass split=<folder name> for another name)"
            )
    ref_dir = os.path.join(src, "train") if os.path.isdir(os.path.join(src, "train")) else os.path.join(src, splits[0])
    classes = list_classes(ref_dir)
    plans = {}
    for s in splits:
        split_dir = os.path.join(src, s)
        check_same_classes(ref_dir, classes, split_dir, list_classes(split_dir))
        samples = list_images(split_dir, classes)
        n_shards = math.ceil(len(samples) / shard_size)
        n_shards = math.ceil(n_shards / num_shards_multiple_of) * num_shards_multiple_of
        if n_shards > len(samples):
            raise ConfigError(
                f"num_shards_multiple_of={num_shards_multiple_of} is not allowed for split {split_dir}: "
                f"it has only {len(samples)} images, fewer than the {n_shards} shards asked for"
            )
        plans[s] = (samples, n_shards)

    os.makedirs(dst, exist_ok=True)
    meta = read_meta(dst) or {"format": META_FORMAT, "version": 1, "classes": classes, "shards": {}, "splits": {}}
    if meta["classes"] != classes:
        raise DataError(
            f"{os.path.join(dst, META_FILENAME)} lists classes {meta['classes'][:10]}... that differ from "
            f"the class folders of {ref_dir}: write into another directory"
        )

    written: list[str] = []
    for s, (samples, n_shards) in plans.items():
        order = np.random.RandomState(seed).permutation(len(samples)) if shuffle else np.arange(len(samples))
        stem = f"{prefix}-{s}" if prefix else s
        # shards of an earlier write of these files: forget them, delete those not overwritten now
        stale = [k for k in meta["shards"] if re.fullmatch(re.escape(stem) + r"-\d{6}\.tar", k)]
        for k in stale:
            del meta["shards"][k]
        for k in (k for k in stale if int(k[-10:-4]) >= n_shards):
            log.warning("removing stale shard %s (an earlier write of %s had more shards)", k, stem)
            try:
                os.remove(os.path.join(dst, k))
            except FileNotFoundError:
                pass
        start = 0
        for i in range(n_shards):
            count = len(samples) // n_shards + (1 if i < len(samples) % n_shards else 0)
            name = f"{stem}-{i:06d}.tar"
            path = os.path.join(dst, name)
            tmp = path + ".tmp"
            try:
                with wds.TarWriter(tmp, encoder=False, mtime=0.0) as sink:
                    for j in order[start : start + count]:
                        file_path, label = samples[j]
                        ext, data = _image_bytes(file_path)
                        sink.write({"__key__": f"{s}_{int(j):08d}", ext: data, "cls": str(label).encode("ascii")})
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
            os.replace(tmp, path)
            start += count
            meta["shards"][name] = {"split": s, "num_samples": count}
            written.append(path)
        meta["splits"][stem] = {"split": s, "num_shards": n_shards, "num_samples": len(samples)}
        log.info("wrote %d images of %s into %d shards %s-*.tar", len(samples), s, n_shards, stem)
    _write_json_atomic(os.path.join(dst, META_FILENAME), meta)
    return written
