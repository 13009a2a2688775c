"""Webdataset tar shards of text documents: the format, and the reader used by text sources (the writer,
``litlab write_text_shards``, is :mod:`litlab.datamodules.text_shard_writer`).

Each document is one tar member ``<index>.txt`` (the document's bytes exactly; ``index`` is its 9-digit
position in the source, so keys hold no dots), written in source order into shards
``<prefix>-000000.tar``, ``<prefix>-000001.tar``, ... of at most ``max_docs_per_shard`` documents each.
Reading the shards in name order gives the documents back in the same order, so a text datamodule whose
``source`` is the shard directory (or a brace pattern / glob of the shards) splits and packs exactly the
windows of the original source. The shards are ordinary webdataset shards (``wds.WebDataset`` yields one
sample ``{"__key__", "txt"}`` per document).

Next to the shards, ``meta.json`` records the documents and bytes per shard::

    {"format": "litlab-text-shards", "version": 1,
     "prefixes": {"docs": {"source": "embedded", "num_shards": 1, "num_documents": 442, "num_bytes": 2087365}},
     "shards": {"docs-000000.tar": {"first": 0, "num_documents": 442, "num_bytes": 2087365}}}

The reader checks each shard's document count against it (detecting truncated or rewritten shards). Shards
are written under a temporary name and renamed when complete, with ``mtime=0`` members, so the same source
gives byte-identical shards; shards of an earlier write with the same prefix that are not overwritten are
removed; several prefixes may share a directory (each is described under ``prefixes``).
"""

from __future__ import annotations

import os

from litlab.datamodules.shard_index import index_shard, read_member
from litlab.datamodules.shard_writer import load_meta_json
from litlab.errors import DataError

META_FORMAT = "litlab-text-shards"


def read_text_meta(directory: str) -> dict | None:
    """The ``meta.json`` of a text shard directory; None when there is none or it describes other shards."""
    meta = load_meta_json(directory)
    return meta if isinstance(meta, dict) and meta.get("format") == META_FORMAT else None


def read_text_shard(path: str) -> list[bytes]:
    """The documents (``.txt`` members) of one tar shard, in order; DataError naming the shard and key."""
    groups = index_shard(path)  # DataError on truncation / unreadable tar
    meta = read_text_meta(os.path.dirname(os.path.abspath(path)))
    entry = (meta or {}).get("shards", {}).get(os.path.basename(path))
    if entry is not None and int(entry["num_documents"]) != len(groups):
        raise DataError(
            f"shard {path} has {len(groups)} documents but meta.json says {entry['num_documents']} "
            "(truncated or rewritten?)"
        )
    docs = []
    with open(path, "rb") as f:
        for key, members in groups:
            if "txt" not in members:
                raise DataError(f"shard {path}, key {key}: no .txt member (has {sorted(members)})")
            docs.append(read_member(f, members["txt"]))
    return docs
