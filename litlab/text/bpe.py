"""Byte-level BPE tokenizers (Hugging Face ``tokenizers``), trained locally by ``litlab train_bpe``.

The BPE baseline of the AU-Net paper is a byte-level BPE: text is UTF-8 encoded, every byte is first mapped
to one printable character (GPT-2's byte-to-unicode table, :func:`bytes_to_unicode`), the ``ByteLevel``
pre-tokenizer splits words with GPT-2's regular expression, and merges are learned over those characters.
So every text is encodable (the 256 byte characters are all in the vocabulary) and decoding gives the text
back exactly. The two special tokens ``<bos>`` and ``<eos>`` are added by the packing code, never found in
text: a document that contains the string ``"<bos>"`` is encoded as ordinary characters.

:func:`litlab.datamodules.bpe_training.train_bpe` learns the merges on the *train split* of a text source, so
validation and test text is never seen by the tokenizer. Nothing is downloaded. Documents that are not valid UTF-8 are decoded with ``errors="replace"`` (each bad byte becomes
U+FFFD, which is three bytes long).
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from litlab.errors import ConfigError, DataError

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


def load_bpe(path: str, argument: str = "tokenizer_path") -> Tokenizer:
    """Load a byte-level BPE tokenizer JSON written by ``litlab train_bpe`` (or compatible).

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
