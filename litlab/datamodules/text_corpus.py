"""Text corpora as lists of documents (raw UTF-8 ``bytes``): the embedded default corpus, files, folders, shards.

A ``source`` is one of

* ``"embedded"``: documentation that ships with every CPython, so it works offline (see below);
* a ``.txt`` file (one document: the file's bytes, kept exactly, even when they are not valid UTF-8);
* a ``.jsonl`` file (one document per non-blank line: the string under ``text_key``; a line that is not a
  JSON object with a string under ``text_key`` is a DataError naming the file and line);
* a ``.tar`` webdataset shard written by :func:`~litlab.datamodules.text_shard_writer.write_text_shards`
  (one ``<key>.txt`` member per document);
* a directory: every ``.txt``, ``.jsonl`` and ``.tar`` file under it (recursively, hidden entries skipped),
  in sorted path order;
* a brace pattern or glob (``shards/docs-{000000..000003}.tar``, ``data/*.jsonl``), or several of any of
  these joined by ``::``.

Empty documents are dropped (and counted in the log); a source without any non-empty document is a
DataError naming it.

**The embedded corpus** is CPython's ``pydoc_data.topics.topics`` (the language reference topics that
``help()`` shows; one document per topic, in key order) followed by the standard library's docstrings:
the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` are parsed with :mod:`ast` (never imported), in
sorted path order, skipping test suites, IDLE, lib2to3, turtledemo, installed packages and build files
(:data:`EXCLUDED_DIRS`); each module is one document, its module, class and function docstrings (cleaned
by :func:`inspect.cleandoc`) joined by blank lines in source order; modules with fewer than
:data:`MIN_MODULE_DOC_CHARS` characters of docstrings are skipped. It is built once per Python version and
cached in ``<cache_dir>/embedded-<python>-v<N>-<hash>.npz`` (``cache_dir`` defaults to
``$LITLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/litlab``, else ``~/.cache/litlab``). For CPython 3.11.7
it holds 442 documents (79 topics + 363 modules), 2.09 MB, built in about 3.5 s (then loaded from the cache
in a few milliseconds); the default split (5% val, 5% test, ``split_seed=0``) gives train/val/test 398/22/22
documents of 1.96 MB / 81 KB / 48 KB.

:func:`split_documents` is the train/val/test split by document used by the text datamodule and by
:func:`~litlab.text.bpe.train_bpe`.
"""

from __future__ import annotations

import ast
import functools
import glob
import hashlib
import json
import logging
import os
import platform
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator, Sequence

import braceexpand
import numpy as np

from litlab.datamodules.math_corpus import is_math_spec, math_documents
from litlab.datamodules.text_shards import read_text_shard
from litlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
#: File types read as documents (by extension).
DOCUMENT_EXTENSIONS = (".txt", ".jsonl", ".tar")
#: Directory names under the standard library that the embedded corpus skips.
EXCLUDED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "__phello__",
        "ensurepip",
        "lib-dynload",
    }
)
#: Modules whose docstrings total fewer characters are left out of the embedded corpus.
MIN_MODULE_DOC_CHARS = 200
#: Bump when the embedded corpus's definition changes (invalidates caches).
EMBEDDED_VERSION = 1


# ------------------------------------------------------------------------------- embedded corpus
def default_cache_dir() -> str:
    """``$LITLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/litlab``, else ``~/.cache/litlab``."""
    if os.environ.get("LITLAB_CACHE_DIR"):
        return os.path.expanduser(os.environ["LITLAB_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "litlab")


def _excluded(dirname: str) -> bool:
    return dirname in EXCLUDED_DIRS or dirname.startswith((".", "config-"))


def stdlib_files(stdlib: str | None = None) -> list[str]:
    """The ``.py`` files of the standard library the embedded corpus reads, in sorted relative-path order."""
    stdlib = sysconfig.get_paths()["stdlib"] if stdlib is None else stdlib
    found = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if not _excluded(d)]
        found.extend(os.path.relpath(os.path.join(root, f), stdlib) for f in files if f.endswith(".py"))
    return [os.path.join(stdlib, rel) for rel in sorted(found, key=lambda p: p.split(os.sep))]


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of ``node`` and of the classes/functions nested in it, in source order (depth first)."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        yield from _docstrings(child)


def module_document(path: str) -> str | None:
    """The docstrings of one Python file joined by blank lines; None if it does not parse or has too few."""
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)  # bytes: the parser honours encoding declarations
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return None
    docs = list(_docstrings(tree))
    if sum(len(d) for d in docs) < MIN_MODULE_DOC_CHARS:
        return None
    return "\n\n".join(docs)


def _utf8(text: str) -> bytes:
    # a docstring may spell a lone surrogate ("\udc80"): keep it visible instead of failing
    return text.encode("utf-8", errors="backslashreplace")


def build_embedded_corpus(stdlib: str | None = None) -> list[bytes]:
    """Build the embedded corpus from this Python (no cache); see the module docstring."""
    from pydoc_data.topics import topics

    docs = [_utf8(topics[key]) for key in sorted(topics)]
    for path in stdlib_files(stdlib):
        doc = module_document(path)
        if doc is not None:
            docs.append(_utf8(doc))
    return [d for d in docs if d]


def embedded_cache_path(cache_dir: str | None = None) -> str:
    """Where the embedded corpus of this Python is cached."""
    stdlib = sysconfig.get_paths()["stdlib"]
    tag = hashlib.sha256(f"{sys.version}\0{stdlib}".encode()).hexdigest()[:10]
    name = f"embedded-{sys.implementation.name}{platform.python_version()}-v{EMBEDDED_VERSION}-{tag}.npz"
    return os.path.join(default_cache_dir() if cache_dir is None else os.path.expanduser(cache_dir), name)


def _save_documents(path: str, docs: Sequence[bytes]) -> None:
    """Write documents as ``data`` (uint8) + ``offsets`` (int64) to ``path`` atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    offsets = np.cumsum([0, *(len(d) for d in docs)], dtype=np.int64)
    data = np.frombuffer(b"".join(docs), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".embedded-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, data=data, offsets=offsets)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load_documents(path: str) -> list[bytes]:
    with np.load(path, allow_pickle=False) as z:
        data, offsets = z["data"].tobytes(), z["offsets"]
    return [data[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


@functools.lru_cache(maxsize=4)
def _embedded(path: str) -> tuple[bytes, ...]:
    if os.path.isfile(path):
        try:
            return tuple(_load_documents(path))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated or foreign
            log.warning("embedded corpus cache %s is unreadable (%s): rebuilding it", path, exc)
    docs = build_embedded_corpus()
    try:
        _save_documents(path, docs)
    except OSError as exc:
        log.warning("cannot cache the embedded corpus at %s (%s): it will be rebuilt next time", path, exc)
    return tuple(docs)


def embedded_corpus(cache_dir: str | None = None) -> list[bytes]:
    """The embedded corpus's documents, built once per Python version and cached (on disk and in memory).

    Args:
        cache_dir: Cache directory; ``None`` uses :func:`default_cache_dir`.
    """
    return list(_embedded(embedded_cache_path(cache_dir)))


def embedded_corpus_size(cache_dir: str | None = None) -> tuple[int, int]:
    """``(documents, bytes)`` of the embedded corpus of this Python."""
    docs = embedded_corpus(cache_dir)
    return len(docs), sum(len(d) for d in docs)


# --------------------------------------------------------------------------------- files, folders
def _is_pattern(part: str) -> bool:
    return any(c in part for c in "{*?[")


def source_files(source: str, argument: str = "source") -> list[str]:
    """The files a (non-embedded) source names, in reading order; DataError naming what is missing."""
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{argument}={source!r} is not allowed: give {EMBEDDED!r}, a file, directory or pattern")
    files: list[str] = []
    for part in source.split("::"):
        part = os.path.expanduser(part)
        paths = braceexpand.braceexpand(part) if "{" in part else [part]
        for path in paths:
            if any(c in path for c in "*?["):
                matches = sorted(glob.glob(path))
                if not matches:
                    raise DataError(f"{argument}={source!r}: no file matches {path}")
            else:
                matches = [path]
            for match in matches:
                if os.path.isdir(match):
                    files.extend(_walk(match, argument))
                elif os.path.isfile(match):
                    if not match.endswith(DOCUMENT_EXTENSIONS):
                        raise DataError(
                            f"{argument}: {match} is not a {'/'.join(DOCUMENT_EXTENSIONS)} file (the kinds read here)"
                        )
                    files.append(match)
                else:
                    raise DataError(f"{argument}={source!r}: {match} does not exist")
    return list(dict.fromkeys(files))


def _walk(directory: str, argument: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, n) for n in names if n.endswith(DOCUMENT_EXTENSIONS) and not n.startswith("."))
    if not found:
        raise DataError(f"{argument}: directory {directory} holds no {'/'.join(DOCUMENT_EXTENSIONS)} files")
    return sorted(found, key=lambda p: os.path.relpath(p, directory).split(os.sep))


def read_txt(path: str) -> bytes:
    """The bytes of a ``.txt`` file, exactly (no decoding)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def read_jsonl(path: str, text_key: str = "text") -> list[bytes]:
    """The strings under ``text_key`` of a ``.jsonl`` file's lines, UTF-8 encoded; blank lines are skipped."""
    docs = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                    raise DataError(f"{path}:{number}: not valid JSON ({exc})") from exc
                if not isinstance(record, dict) or text_key not in record:
                    keys = sorted(record)[:10] if isinstance(record, dict) else type(record).__name__
                    raise DataError(f"{path}:{number}: no {text_key!r} key (text_key) in the record (has {keys})")
                text = record[text_key]
                if not isinstance(text, str):
                    raise DataError(f"{path}:{number}: {text_key!r} is a {type(text).__name__}, not a string")
                docs.append(_utf8(text))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return docs


def read_file(path: str, text_key: str = "text") -> list[bytes]:
    """The documents of one ``.txt``, ``.jsonl`` or ``.tar`` file."""
    if path.endswith(".jsonl"):
        return read_jsonl(path, text_key)
    if path.endswith(".tar"):
        return read_text_shard(path)
    return [read_txt(path)]


def cap_bytes(docs: Sequence[bytes], max_bytes: int | None) -> list[bytes]:
    """The leading documents holding at most ``max_bytes`` bytes; the document crossing the cap is cut at a
    UTF-8 character boundary (so the result's total is within 3 bytes of ``max_bytes`` when it is reached)."""
    if max_bytes is None:
        return list(docs)
    out, total = [], 0
    for doc in docs:
        if total + len(doc) <= max_bytes:
            out.append(doc)
            total += len(doc)
            continue
        cut = max_bytes - total
        while 0 < cut < len(doc) and (doc[cut] & 0xC0) == 0x80:  # do not split a multi-byte character
            cut -= 1
        if cut > 0:
            out.append(doc[:cut])
        break
    return out


def read_documents(
    source: str, text_key: str = "text", max_bytes: int | None = None, cache_dir: str | None = None
) -> list[bytes]:
    """All non-empty documents of a source (see the module docstring), in order.

    Args:
        source: ``"embedded"``, a file, directory, brace pattern or glob (or several joined by ``::``), or a
            math-problem spec (``procedural_math:...``, :mod:`litlab.datamodules.math_corpus`).
        text_key: Key of the text in ``.jsonl`` records.
        max_bytes: Keep only the leading documents up to this many bytes (see :func:`cap_bytes`).
        cache_dir: Cache directory of the embedded corpus.
    """
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ConfigError(f"max_bytes={max_bytes!r} is not allowed: it must be None or an integer >= 1")
    if source == EMBEDDED:
        docs = embedded_corpus(cache_dir)
    elif is_math_spec(source):
        docs = math_documents(source)
    else:
        docs = [doc for path in source_files(source) for doc in read_file(path, text_key)]
    kept = [d for d in docs if d]
    if len(kept) < len(docs):
        log.info("source %s: dropped %d empty document(s)", source, len(docs) - len(kept))
    if not kept:
        raise DataError(f"source={source!r} holds no non-empty document")
    return cap_bytes(kept, max_bytes)


# ------------------------------------------------------------------------------------------ split
SPLITS = ("train", "val", "test")


def split_documents(
    num_documents: int, val_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0
) -> dict[str, np.ndarray]:
    """Document indices of train/val/test (each sorted): a ``seed``-fixed permutation cut by fractions.

    Val and test get ``max(1, round(n * fraction))`` documents each, train the rest; the split is
    document-level, so no document is in two splits. DataError when fewer than 3 documents are given, or
    when nothing would be left for training.
    """
    check_fractions(val_fraction, test_fraction)
    n_val = max(1, round(num_documents * val_fraction))
    n_test = max(1, round(num_documents * test_fraction))
    if num_documents - n_val - n_test < 1:
        raise DataError(
            f"{num_documents} document(s) cannot be split into train/val/test with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}: every split needs at least one document"
        )
    order = np.random.default_rng(seed).permutation(num_documents)
    parts = (order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test])
    return {name: np.sort(p) for name, p in zip(SPLITS, parts)}


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """ConfigError unless both fractions are numbers in (0, 1) with a sum below 1."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ConfigError(f"{name}={value!r} is not allowed: it must be a number in (0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction={val_fraction!r} + test_fraction={test_fraction!r} is not allowed: the sum must be < 1"
        )


def split_corpus(
    docs: Sequence[bytes], val_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0
) -> dict[str, list[bytes]]:
    """The documents of each split, in corpus order (see :func:`split_documents`)."""
    return {
        name: [docs[i] for i in idx.tolist()]
        for name, idx in split_documents(len(docs), val_fraction, test_fraction, seed).items()
    }
