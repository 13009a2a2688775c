"""Byte-level BPE tokenizers (Hugging Face ``tokenizers``), trained locally; ``litlab train_bpe``.

The BPE baseline of the AU-Net paper is a byte-level BPE: text is UTF-8 encoded, every byte is first mapped
to one printable character (GPT-2's byte-to-unicode table, :func:`bytes_to_unicode`), the ``ByteLevel``
pre-tokenizer splits words with GPT-2's regular expression, and merges are learned over those characters.
So every text is encodable (the 256 byte characters are all in the vocabulary) and decoding gives the text
back exactly. The two special tokens ``<bos>`` and ``<eos>`` are added by the packing code, never found in
text: a document that contains the string ``"<bos>"`` is encoded as ordinary characters.

:func:`train_bpe` learns the merges on the *train split* documents of a source (the same document split as
:class:`~litlab.datamodules.text.TextDataModule` with the same ``val_fraction``, ``test_fraction``,
``split_seed`` and ``max_bytes``), so validation and test text is never seen by the tokenizer. Nothing is
downloaded. Documents that are not valid UTF-8 are decoded with ``errors="replace"`` (each bad byte becomes
U+FFFD, which is three bytes long).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from litlab.datamodules.text_corpus import EMBEDDED, read_documents, split_corpus
from litlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table used by the ``ByteLevel`` pre-tokenizer and decoder.

    Bytes that are printable Latin-1 characters other than space (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves; the other 68 bytes, in increasing order, get the characters
    U+0100, U+0101, ... (so space, byte 32, is ``Ġ`` = U+0120).
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


def decode_document(doc: bytes) -> str:
    """A document's text for BPE: UTF-8 decoded, invalid bytes replaced by U+FFFD."""
    return doc.decode("utf-8", errors="replace")


def new_bpe_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer (no normalizer, ``ByteLevel`` pre-tokenizer and decoder)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(
    source: str = EMBEDDED,
    output: str = "bpe-tokenizer.json",
    vocab_size: int = 4096,
    min_frequency: int = 2,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    max_bytes: int | None = None,
    text_key: str = "text",
    cache_dir: str | None = None,
) -> str:
    """Train a byte-level BPE tokenizer on the train split of a text source and save it as JSON.

    Args:
        source: ``"embedded"`` (CPython's documentation), a ``.txt``/``.jsonl``/``.tar`` file, a directory,
            brace pattern or glob; as ``TextDataModule.source``.
        output: Path of the tokenizer JSON to write (directories are created).
        vocab_size: Vocabulary size, including the 256 byte tokens and the specials ``<bos>``, ``<eos>``.
        min_frequency: Minimum count of a pair to be merged.
        val_fraction: Fraction of documents held out for validation (as in the datamodule; not trained on).
        test_fraction: Fraction of documents held out for testing (as in the datamodule; not trained on).
        split_seed: Seed of the document split (as in the datamodule).
        max_bytes: Use only the leading documents up to this many bytes (as in the datamodule).
        text_key: Key of the text in ``.jsonl`` records.
        cache_dir: Cache directory of the embedded corpus.

    Returns:
        The path written.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size={vocab_size!r} is not allowed: it must be an integer >= 258 (256 bytes + 2 specials)")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ConfigError(f"min_frequency={min_frequency!r} is not allowed: it must be an integer >= 1")
    if not isinstance(output, str) or not output or os.path.isdir(output):
        raise ConfigError(f"output={output!r} is not allowed: give the path of a JSON file to write")
    docs = read_documents(source, text_key=text_key, max_bytes=max_bytes, cache_dir=cache_dir)
    train = split_corpus(docs, val_fraction, test_fraction, split_seed)["train"]
    tokenizer = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((decode_document(d) for d in train), trainer=trainer, length=len(train))
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bpe-", suffix=".json")
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    log.info(
        "trained a %d-token BPE on %d train documents (%d bytes) of %s: %s",
        tokenizer.get_vocab_size(),
        len(train),
        sum(len(d) for d in train),
        source,
        output,
    )
    return output


def load_bpe(path: str, argument: str = "tokenizer_path") -> Tokenizer:
    """Load a byte-level BPE tokenizer JSON written by :func:`train_bpe` (or compatible).

    Checks that it decodes bytes (``ByteLevel`` decoder) and has ``<bos>`` and ``<eos>``; special tokens
    in document text are encoded as plain text (``encode_special_tokens``).

    Args:
        path: The tokenizer JSON.
        argument: Argument name used in error messages.
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{argument}={path!r} is not allowed: give the path of a tokenizers JSON file")
    if not os.path.isfile(path):
        raise ConfigError(f"{argument}={path!r}: no such file (train one with `litlab train_bpe`)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        spec = json.loads(text)
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # OSError, JSON errors, tokenizers' own exceptions
        raise DataError(f"{argument}={path!r} is not a readable tokenizers JSON file: {exc}") from exc
    decoder = (spec.get("decoder") or {}).get("type")
    if decoder != "ByteLevel":
        raise DataError(f"{argument}={path!r}: decoder is {decoder!r}, not a byte-level BPE ('ByteLevel')")
    for token in SPECIAL_TOKENS:
        if tokenizer.token_to_id(token) is None:
            raise DataError(f"{argument}={path!r}: the tokenizer has no {token} token")
    tokenizer.encode_special_tokens = True
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """``(bos_id, eos_id)`` of a tokenizer from :func:`load_bpe`."""
    return tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """How many UTF-8 bytes each token id stands for (int64, one entry per id); special tokens count 1.

    A byte-level token is a string of characters of :func:`bytes_to_unicode`, one character per byte (so
    ``"Ġthe"`` is 4 bytes, not the 5 bytes of its own UTF-8 spelling). Added tokens that are not special
    stand for their literal text.
    """
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    lengths = np.zeros(vocab_size, dtype=np.int64)
    added = tokenizer.get_added_tokens_decoder()
    table = unicode_to_bytes()
    for i in range(vocab_size):
        if i in added:
            token = added[i]
            lengths[i] = 1 if token.special else len(token.content.encode("utf-8"))
            continue
        token = tokenizer.id_to_token(i)
        if token is None:  # a hole in the ids: never produced by encoding
            continue
        bad = [c for c in token if c not in table]
        if bad:
            raise DataError(f"token {i} ({token!r}) has characters outside the byte-level alphabet: not a byte-level BPE")
        lengths[i] = len(token)
    return lengths
