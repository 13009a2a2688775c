"""Webdataset tar shards on disk: resolving shard arguments, reading the writer's metadata, indexing records.

A shard argument is a brace pattern (``data/train-{000000..000009}.tar``), a glob, a directory (every
``*.tar`` in it) or several of those joined by ``::``; :func:`resolve_shards` turns it into existing local,
uncompressed ``.tar`` files. :func:`index_shard` reads a shard's tar headers (no image data) into records and
detects truncation. Used by :mod:`litlab.datamodules.image_shards`.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile

import braceexpand
from webdataset.tariterators import base_plus_ext

from litlab.datamodules.shard_writer import read_meta
from litlab.errors import ConfigError, DataError

#: Record members read as the image, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm", "webp", "bmp", "tif", "tiff")
_META_NAME = r"__[^/]*__($|/)"


# --------------------------------------------------------------------------------------- shard lists
def resolve_shards(spec: str, argument: str) -> list[str]:
    """Expand a shard spec (brace pattern, glob, directory, ``::``-joined) into existing ``.tar`` files."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{argument}={spec!r} is not allowed: give a shard path, brace pattern, glob or directory")
    found: list[str] = []
    missing: list[str] = []
    for part in spec.split("::"):
        for path in braceexpand.braceexpand(os.path.expanduser(part)):
            if os.path.isdir(path):
                files = sorted(glob.glob(os.path.join(path, "*.tar")))
                if not files:
                    raise DataError(f"{argument}: directory {path} holds no .tar shards")
                found.extend(files)
            elif any(c in path for c in "*?["):
                files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
                (found.extend(files) if files else missing.append(path))
            elif os.path.isfile(path):
                found.append(path)
            else:
                missing.append(path)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DataError(f"{argument}={spec!r}: shard(s) not found: {', '.join(missing[:5])}{more}")
    if not found:
        raise DataError(f"{argument}={spec!r}: no shards found")
    for path in found:
        if not path.endswith(".tar"):
            raise DataError(f"{argument}: {path} is not an uncompressed .tar shard (the only kind read here)")
    return list(dict.fromkeys(found))


def shard_meta(shards: list[str]) -> tuple[list[str] | None, dict[str, int] | None]:
    """Classes and per-shard sample counts from the ``meta.json`` next to the shards (None when unknown)."""
    classes: list[str] | None = None
    counts: dict[str, int] = {}
    complete = True
    for directory in dict.fromkeys(os.path.dirname(os.path.abspath(s)) for s in shards):
        meta = read_meta(directory)
        if meta is None:
            complete = False
            continue
        if classes is not None and meta["classes"] != classes:
            raise DataError(f"{os.path.join(directory, 'meta.json')} lists other classes than the metadata of other shards")
        classes = list(meta["classes"])
        for shard in shards:
            if os.path.dirname(os.path.abspath(shard)) == directory:
                entry = meta["shards"].get(os.path.basename(shard))
                if entry is None:
                    complete = False
                else:
                    counts[shard] = int(entry["num_samples"])
    return classes, (counts if complete else None)


def error_text(exc: BaseException) -> str:
    first = exc.args[0] if exc.args else ""
    return f"{type(exc).__name__}: {first}"


# --------------------------------------------------------------------------------- eval: tar index
def index_shard(path: str) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """``[(key, {extension: member})]`` of one tar shard, from its headers; DataError if it is truncated."""
    size = os.path.getsize(path)
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if m.offset_data + m.size > size:
                    raise DataError(
                        f"shard {path} is truncated: member {m.name} ends at byte {m.offset_data + m.size}, "
                        f"the file has {size}"
                    )
                if not m.isreg() or re.match(_META_NAME, m.name):
                    continue
                key, ext = base_plus_ext(m.name)
                if key is None:
                    continue
                groups.setdefault(key, {})[ext.lower()] = m
            end = tf.offset
    except tarfile.TarError as exc:
        raise DataError(f"shard {path} is not a readable tar file: {exc}") from exc
    with open(path, "rb") as f:
        f.seek(end)
        marker = f.read(1024)
    if len(marker) < 1024 or marker.strip(b"\0"):
        raise DataError(f"shard {path} is truncated: no end-of-archive marker after byte {end} (file has {size})")
    return list(groups.items())


def read_member(f, member: tarfile.TarInfo) -> bytes:
    f.seek(member.offset_data)
    return f.read(member.size)


def parse_label(data: bytes, name: str) -> int:
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{name}: .cls is not an integer label: {data[:20]!r}") from exc
