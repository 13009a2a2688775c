"""Text sources: the embedded CPython corpus, .txt/.jsonl files and folders, byte caps, the document split."""

import json
import os
import sysconfig

import numpy as np
import pytest

from litlab.datamodules import text_corpus
from litlab.datamodules.text import TextDataModule
from litlab.datamodules.text_corpus import (
    EXCLUDED_DIRS,
    build_embedded_corpus,
    cap_bytes,
    embedded_cache_path,
    embedded_corpus,
    module_document,
    read_documents,
    split_corpus,
    split_documents,
    stdlib_files,
)
from litlab.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """``(cache_dir, documents)``: the embedded corpus built (twice: fresh and through the cache) once here."""
    cache_dir = str(tmp_path_factory.mktemp("cache"))
    fresh = build_embedded_corpus()
    cached = embedded_corpus(cache_dir)
    return cache_dir, fresh, cached


def test_embedded_corpus_is_deterministic_and_cached(embedded):
    cache_dir, fresh, cached = embedded
    assert cached == fresh  # two independent builds give the same bytes
    path = embedded_cache_path(cache_dir)
    assert os.path.isfile(path) and sysconfig.get_python_version() in os.path.basename(path)
    text_corpus._embedded.cache_clear()
    assert embedded_corpus(cache_dir) == fresh  # read back from the cache file


def test_embedded_corpus_is_real_documentation(embedded):
    _, docs, _ = embedded
    from pydoc_data.topics import topics

    assert docs[: len(topics)] == [topics[k].encode() for k in sorted(topics)]
    n_bytes = sum(len(d) for d in docs)
    assert len(docs) > 300 and n_bytes > 1_000_000
    assert all(len(d) >= text_corpus.MIN_MODULE_DOC_CHARS for d in docs[len(topics) :])
    joined = b"\n".join(docs)
    assert b"JSON (JavaScript Object Notation)" in joined  # json's module docstring
    for d in docs:
        d.decode("utf-8")  # valid UTF-8 throughout


def test_stdlib_files_are_sorted_and_skip_tests_and_packages():
    files = stdlib_files()
    stdlib = sysconfig.get_paths()["stdlib"]
    rel = [os.path.relpath(f, stdlib).split(os.sep) for f in files]
    assert rel == sorted(rel)
    assert ["json", "__init__.py"] in rel and ["argparse.py"] in rel
    for parts in rel:
        assert not set(parts[:-1]) & EXCLUDED_DIRS, parts
        assert not parts[0].startswith("config-")


def test_module_document_joins_docstrings_in_source_order(tmp_path, monkeypatch):
    source = '''# -*- coding: latin-1 -*-
"""Module doc, caf\xe9."""

def first():
    """First function."""
    def inner():
        """Inner function."""

class Second:
    """Second, a class."""

    async def method(self):
        """Its method."""
        x = "not a docstring"
'''
    path = tmp_path / "mod.py"
    path.write_bytes(source.encode("latin-1"))
    assert module_document(str(path)) is None  # fewer than 200 characters of docstrings
    monkeypatch.setattr(text_corpus, "MIN_MODULE_DOC_CHARS", 10)
    doc = module_document(str(path))
    assert doc == "Module doc, caf\xe9.\n\nFirst function.\n\nInner function.\n\nSecond, a class.\n\nIts method."
    (tmp_path / "bad.py").write_text("def broken(:\n")
    assert module_document(str(tmp_path / "bad.py")) is None


def test_unreadable_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(text_corpus, "build_embedded_corpus", lambda: [b"one", "d\xe9ux".encode()])
    path = embedded_cache_path(str(tmp_path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"not an npz file")
    assert embedded_corpus(str(tmp_path)) == [b"one", "d\xe9ux".encode()]
    text_corpus._embedded.cache_clear()
    monkeypatch.setattr(text_corpus, "build_embedded_corpus", lambda: pytest.fail("should read the cache"))
    assert embedded_corpus(str(tmp_path)) == [b"one", "d\xe9ux".encode()]
    text_corpus._embedded.cache_clear()


def test_cap_bytes_keeps_leading_documents_and_whole_characters():
    docs = [b"abc", "d\xe9f".encode(), b"ghij"]  # 3, 4, 4 bytes
    assert cap_bytes(docs, None) == docs
    assert cap_bytes(docs, 3) == [b"abc"]
    assert cap_bytes(docs, 4) == [b"abc", b"d"]
    assert cap_bytes(docs, 5) == [b"abc", b"d"]  # "\xc3" alone would split the character
    assert cap_bytes(docs, 6) == [b"abc", "d\xe9".encode()]
    assert cap_bytes(docs, 9) == [b"abc", "d\xe9f".encode(), b"gh"]
    assert cap_bytes(docs, 100) == docs


def test_embedded_max_bytes_slice(embedded):
    cache_dir, docs, _ = embedded
    small = read_documents("embedded", max_bytes=5000, cache_dir=cache_dir)
    assert 4996 <= sum(len(d) for d in small) <= 5000
    assert small[:-1] == docs[: len(small) - 1] and docs[len(small) - 1].startswith(small[-1])


def test_datamodule_documents_split_the_embedded_slice(embedded):
    cache_dir, _, _ = embedded
    dm = TextDataModule(max_bytes=60_000, seq_len=64, cache_dir=cache_dir)
    docs = read_documents("embedded", max_bytes=60_000, cache_dir=cache_dir)
    parts = {s: dm.documents(s) for s in ("train", "val", "test")}
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(docs)
    assert all(len(p) >= 1 for p in parts.values())
    dm.setup()
    assert dm.split_sizes["val"]["bytes"] == sum(len(d) for d in parts["val"])


# --------------------------------------------------------------------------------- files and folders
def write(path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_txt_jsonl_and_folders(tmp_path):
    write(tmp_path / "d" / "b.txt", "b \xfcber\n".encode())
    write(tmp_path / "d" / "a.jsonl", b'{"text": "first"}\n\n  \n{"text": "second", "id": 2}\n{"text": ""}\n')
    write(tmp_path / "d" / "sub" / "c.txt", b"\xff\xfe raw bytes")
    write(tmp_path / "d" / "sub" / "empty.txt", b"")
    write(tmp_path / "d" / ".hidden" / "x.txt", b"hidden")
    write(tmp_path / "d" / ".y.txt", b"hidden")
    write(tmp_path / "d" / "notes.md", b"ignored")
    folder = str(tmp_path / "d")
    expected = [b"first", b"second", "b \xfcber\n".encode(), b"\xff\xfe raw bytes"]
    assert read_documents(folder) == expected  # sorted by path: a.jsonl, b.txt, sub/c.txt; empties dropped
    assert read_documents(str(tmp_path / "d" / "sub" / "c.txt")) == [b"\xff\xfe raw bytes"]
    assert read_documents(os.path.join(folder, "{b.txt,a.jsonl}")) == expected[2:3] + expected[:2]
    assert read_documents(os.path.join(folder, "*.txt") + "::" + os.path.join(folder, "a.jsonl")) == [
        expected[2],
        *expected[:2],
    ]
    write(tmp_path / "e.jsonl", json.dumps({"body": "x\u00e9"}).encode() + b"\n")
    assert read_documents(str(tmp_path / "e.jsonl"), text_key="body") == ["x\u00e9".encode()]


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"text": "ok"}\n{"text": broken}\n', r"bad\.jsonl:2: not valid JSON"),
        (b'{"text": "ok"}\n\n{"body": "x"}\n', r"bad\.jsonl:3: no 'text' key"),
        (b'["text"]\n', r"bad\.jsonl:1: no 'text' key"),
        (b'{"text": 3}\n', r"bad\.jsonl:1: 'text' is a int"),
        (b'{"text": "\xff"}\n', r"bad\.jsonl:1: not valid JSON"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, match):
    path = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError, match=match):
        read_documents(path)


def test_missing_and_empty_sources(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="nope.txt does not exist"):
        read_documents(missing)
    with pytest.raises(DataError, match=r"no file matches .*\*\.jsonl"):
        read_documents(str(tmp_path / "*.jsonl"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="empty_dir holds no"):
        read_documents(str(tmp_path / "empty_dir"))
    write(tmp_path / "blank" / "a.txt", b"")
    write(tmp_path / "blank" / "b.jsonl", b'{"text": ""}\n')
    with pytest.raises(DataError, match=r"source=.*blank.* holds no non-empty document"):
        read_documents(str(tmp_path / "blank"))
    other = write(tmp_path / "data.csv", b"a,b")
    with pytest.raises(DataError, match=r"data\.csv is not a"):
        read_documents(other)
    with pytest.raises(ConfigError, match="max_bytes=0"):
        read_documents(other, max_bytes=0)


# ---------------------------------------------------------------------------------------------- split
def test_split_documents_is_seeded_disjoint_and_complete():
    a = split_documents(100, 0.1, 0.2, seed=7)
    assert [len(a[s]) for s in ("train", "val", "test")] == [70, 10, 20]
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    b = split_documents(100, 0.1, 0.2, seed=7)
    c = split_documents(100, 0.1, 0.2, seed=8)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["val"], c["val"])
    tiny = split_documents(3, 0.01, 0.01)
    assert [len(tiny[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(DataError, match="2 document"):
        split_documents(2, 0.1, 0.1)
    docs = [bytes([65 + i]) for i in range(10)]
    parts = split_corpus(docs, 0.2, 0.2, seed=1)
    assert all(p == sorted(p) for p in parts.values())  # corpus order within a split


@pytest.mark.parametrize(
    "val, test, name",
    [(0.0, 0.1, "val_fraction"), (1.0, 0.1, "val_fraction"), (0.1, -0.1, "test_fraction"), (0.5, 0.5, "sum")],
)
def test_split_fractions_are_checked(val, test, name):
    with pytest.raises(ConfigError, match=name):
        split_documents(10, val, test)
