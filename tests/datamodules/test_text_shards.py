"""Webdataset text shards: written deterministically, read back as the same documents and the same windows."""

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds

from litlab.datamodules.text import TextDataModule
from litlab.datamodules.text_corpus import read_documents
from litlab.datamodules.text_shard_writer import write_text_shards
from litlab.datamodules.text_shards import read_text_shard
from litlab.errors import ConfigError, DataError

from .test_text_datamodule import write_text_corpus


@pytest.fixture
def corpus(tmp_path) -> str:
    root = write_text_corpus(tmp_path / "corpus", n_docs=12)
    (tmp_path / "corpus" / "zz_raw.txt").write_bytes(b"raw \xff\xfe bytes \xc3")  # 13th document
    return root


def test_shards_hold_the_source_documents_in_order(corpus, tmp_path):
    out = str(tmp_path / "shards")
    paths = write_text_shards(corpus, out, max_docs_per_shard=5)
    assert [os.path.basename(p) for p in paths] == ["docs-000000.tar", "docs-000001.tar", "docs-000002.tar"]
    docs = read_documents(corpus)
    assert len(docs) == 13
    assert [read_text_shard(p) for p in paths] == [docs[:5], docs[5:10], docs[10:]]
    assert read_documents(out) == docs
    assert read_documents(os.path.join(out, "docs-{000000..000002}.tar")) == docs
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    assert meta["format"] == "litlab-text-shards"
    assert meta["prefixes"]["docs"] == {
        "source": corpus,
        "num_shards": 3,
        "num_documents": 13,
        "num_bytes": sum(map(len, docs)),
    }
    assert meta["shards"]["docs-000002.tar"] == {"first": 10, "num_documents": 3, "num_bytes": sum(map(len, docs[10:]))}
    # ordinary webdataset shards: one sample per document, with an explicit node splitter
    dataset = wds.WebDataset(paths, shardshuffle=False, nodesplitter=wds.split_by_node)
    samples = list(dataset)
    assert [s["txt"] for s in samples] == docs
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(13)]


def test_datamodule_on_shards_yields_the_windows_of_the_files(corpus, tmp_path):
    out = str(tmp_path / "shards")
    write_text_shards(corpus, out, max_docs_per_shard=4)
    kwargs = {"seq_len": 16, "batch_size": 4, "val_fraction": 0.2, "test_fraction": 0.2}
    files = TextDataModule(source=corpus, **kwargs)
    for source in (out, os.path.join(out, "docs-{000000..000003}.tar"), os.path.join(out, "*.tar")):
        shards = TextDataModule(source=source, **kwargs)
        for dm in (files, shards):
            dm.setup()
        for split in ("train", "val", "test"):
            assert shards.documents(split) == files.documents(split)
            a, b = files.datasets[split], shards.datasets[split]
            assert len(a) == len(b) > 0
            for i in range(len(a)):
                assert all(torch.equal(a[i][k], b[i][k]) for k in a[i])
        batches = [next(iter(dm.train_dataloader())) for dm in (files, shards)]
        assert all(torch.equal(batches[0][k], batches[1][k]) for k in batches[0])


def test_writing_is_deterministic_and_removes_stale_shards(corpus, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    pa = write_text_shards(corpus, a, max_docs_per_shard=3)
    pb = write_text_shards(corpus, b, max_docs_per_shard=3)
    assert len(pa) == 5
    for x, y in zip(pa, pb):
        with open(x, "rb") as f, open(y, "rb") as g:
            assert f.read() == g.read()
    write_text_shards(corpus, a, max_docs_per_shard=10)
    assert sorted(f for f in os.listdir(a) if f.endswith(".tar")) == ["docs-000000.tar", "docs-000001.tar"]
    write_text_shards(corpus, a, max_docs_per_shard=100, prefix="more", max_bytes=200)
    with open(os.path.join(a, "meta.json")) as f:
        meta = json.load(f)
    assert sorted(meta["shards"]) == ["docs-000000.tar", "docs-000001.tar", "more-000000.tar"]
    assert meta["prefixes"]["more"]["num_bytes"] <= 200
    assert len(read_documents(a)) == 13 + meta["prefixes"]["more"]["num_documents"]


def test_bad_shards_name_the_shard(corpus, tmp_path):
    out = tmp_path / "shards"
    (path,) = write_text_shards(corpus, str(out), max_docs_per_shard=100)
    data = Path(path).read_bytes()
    # truncated in the middle of a member
    (tmp_path / "cut").mkdir()
    cut = tmp_path / "cut" / "docs-000000.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"shard .*cut/docs-000000\.tar (is truncated|is not a readable tar)"):
        read_documents(str(cut))
    # a whole record lost: the count in meta.json no longer matches
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, content in members[:-1]:
            tf.addfile(m, io.BytesIO(content))
    with pytest.raises(DataError, match=r"docs-000000\.tar has 12 documents but meta.json says 13"):
        TextDataModule(source=str(out)).setup()
    # a record without a .txt member
    os.remove(out / "meta.json")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        m, content = members[0]
        m.name = "000000000.json"
        tf.addfile(m, io.BytesIO(content))
    with pytest.raises(DataError, match=r"docs-000000\.tar, key 000000000: no \.txt member"):
        read_documents(str(out))


def test_bad_arguments(corpus, tmp_path):
    with pytest.raises(ConfigError, match="max_docs_per_shard=0"):
        write_text_shards(corpus, str(tmp_path / "o"), max_docs_per_shard=0)
    with pytest.raises(ConfigError, match="prefix='a/b'"):
        write_text_shards(corpus, str(tmp_path / "o"), prefix="a/b")
    with pytest.raises(DataError, match="missing does not exist"):
        write_text_shards(str(tmp_path / "missing"), str(tmp_path / "o"))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "meta.json").write_text(json.dumps({"format": "litlab-image-shards"}))
    with pytest.raises(DataError, match="meta.json of other"):
        write_text_shards(corpus, str(tmp_path / "images"))
