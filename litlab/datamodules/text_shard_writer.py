"""``litlab write_text_shards``: write the documents of any text source as webdataset tar shards (the format is
described in :mod:`litlab.datamodules.text_shards`)."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile

import webdataset as wds

from litlab.datamodules.shard_writer import META_FILENAME
from litlab.datamodules.text_corpus import read_documents
from litlab.datamodules.text_shards import META_FORMAT, read_text_meta
from litlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def write_text_shards(
    source: str,
    output: str,
    max_docs_per_shard: int = 10000,
    prefix: str = "docs",
    text_key: str = "text",
    max_bytes: int | None = None,
    cache_dir: str | None = None,
) -> list[str]:
    """Write the documents of a text source as webdataset tar shards (one ``.txt`` member per document).

    Args:
        source: ``"embedded"``, a ``.txt``/``.jsonl``/``.tar`` file, a directory, brace pattern or glob
            (as ``TextDataModule.source``).
        output: Output directory (created if needed); ``meta.json`` is written next to the shards.
        max_docs_per_shard: Maximum number of documents per shard.
        prefix: Shard file name prefix: ``<prefix>-000000.tar``.
        text_key: Key of the text in ``.jsonl`` records.
        max_bytes: Write only the leading documents up to this many bytes.
        cache_dir: Cache directory of the embedded corpus.

    Returns:
        The paths of the shards written, in order.
    """
    if isinstance(max_docs_per_shard, bool) or not isinstance(max_docs_per_shard, int) or max_docs_per_shard < 1:
        raise ConfigError(f"max_docs_per_shard={max_docs_per_shard!r} is not allowed: it must be an integer >= 1")
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ConfigError(f"prefix={prefix!r} is not allowed: use letters, digits, '_' and '-' only")
    if not isinstance(output, str) or not output or os.path.isfile(output):
        raise ConfigError(f"output={output!r} is not allowed: give a directory to write the shards into")
    existing = os.path.join(output, META_FILENAME)
    if os.path.isfile(existing) and read_text_meta(output) is None:
        raise DataError(f"output={output!r} holds a {META_FILENAME} of other (not text) shards: write into another directory")
    docs = read_documents(source, text_key=text_key, max_bytes=max_bytes, cache_dir=cache_dir)
    os.makedirs(output, exist_ok=True)
    shards: dict[str, dict] = {}
    written = []
    for number, first in enumerate(range(0, len(docs), max_docs_per_shard)):
        chunk = docs[first : first + max_docs_per_shard]
        name = f"{prefix}-{number:06d}.tar"
        path = os.path.join(output, name)
        tmp = path + ".tmp"
        try:
            with wds.TarWriter(tmp, encoder=False, mtime=0.0) as sink:
                for i, doc in enumerate(chunk, start=first):
                    sink.write({"__key__": f"{i:09d}", "txt": doc})
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        os.replace(tmp, path)
        shards[name] = {"first": first, "num_documents": len(chunk), "num_bytes": sum(len(d) for d in chunk)}
        written.append(path)
    stale = re.compile(re.escape(prefix) + r"-\d{6}\.tar")
    for name in sorted(os.listdir(output)):
        if stale.fullmatch(name) and name not in shards:
            log.warning("removing stale shard %s (an earlier write into %s had more shards)", name, output)
            os.remove(os.path.join(output, name))
    meta = read_text_meta(output) or {"format": META_FORMAT, "version": 1, "prefixes": {}, "shards": {}}
    meta.setdefault("prefixes", {})
    meta["shards"] = {**{k: v for k, v in meta.get("shards", {}).items() if not stale.fullmatch(k)}, **shards}
    meta["prefixes"][prefix] = {
        "source": source,
        "num_shards": len(shards),
        "num_documents": len(docs),
        "num_bytes": sum(len(d) for d in docs),
    }
    fd, tmp = tempfile.mkstemp(dir=output, prefix=".meta-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(output, META_FILENAME))
    log.info("wrote %d documents of %s into %d shards %s-*.tar", len(docs), source, len(written), prefix)
    return written
