"""The tokenizers of litlab's language models behind one small interface: bytes in, ids out, and back.

* :class:`ByteTokenizer`: the 258-id byte vocabulary (256 bytes, BOS, EOS);
* :class:`BPETokenizer`: a byte-level BPE JSON written by ``litlab train_bpe`` (:mod:`litlab.text.bpe`);
* :class:`HFTokenizer`: the tokenizer of a Hugging Face model directory (``AutoTokenizer``, local files only).

``encode`` adds no special ids; ``decode`` drops them. Text that is not valid UTF-8 is decoded with
replacement characters before a BPE sees it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Protocol

from litlab.errors import ConfigError, DataError
from litlab.text.byte_vocab import BOS, BYTE_VOCAB_SIZE, EOS, decode_bytes

__all__ = ["BPETokenizer", "ByteTokenizer", "HFTokenizer", "TextTokenizer"]

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class TextTokenizer(Protocol):
    """What a language model's tokenizer offers."""

    bos_id: int
    eos_id: int

    def encode(self, data: bytes) -> list[int]:
        """Ids of ``data`` (no special ids)."""
        ...

    def decode(self, ids: Sequence[int]) -> bytes:
        """Bytes of ``ids`` (special ids dropped)."""
        ...


class ByteTokenizer:
    """One id per byte, plus BOS and EOS."""

    bos_id, eos_id, vocab_size = BOS, EOS, BYTE_VOCAB_SIZE

    def encode(self, data: bytes) -> list[int]:
        return list(data)

    def decode(self, ids: Sequence[int]) -> bytes:
        return decode_bytes(ids)


class BPETokenizer:
    """A byte-level BPE from a ``tokenizers`` JSON file with ``<bos>`` and ``<eos>``.

    Args:
        path: The JSON file.
        argument: Argument name used in error messages.
    """

    def __init__(self, path: str, argument: str = "tokenizer_path") -> None:
        from litlab.text.bpe import load_bpe, special_ids

        self.tokenizer = load_bpe(path, argument)
        self.bos_id, self.eos_id = special_ids(self.tokenizer)
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, data: bytes) -> list[int]:
        return self.tokenizer.encode(data.decode("utf-8", errors="replace"), add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> bytes:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).encode("utf-8")


class HFTokenizer:
    """The tokenizer of a local Hugging Face model directory (``AutoTokenizer.from_pretrained``, offline).

    BOS is the tokenizer's ``bos_token_id``; a tokenizer without one (Qwen, GPT-2 style) starts sequences with
    its EOS token, the usual document separator of such models.

    Args:
        path: The directory (with ``tokenizer.json`` or ``tokenizer_config.json``).
        argument: Argument name used in error messages.
    """

    def __init__(self, path: str, argument: str = "tokenizer_path") -> None:
        if not os.path.isdir(path):
            raise DataError(f"{argument}={path!r}: no such directory")
        if not any(os.path.isfile(os.path.join(path, name)) for name in HF_TOKENIZER_FILES):
            raise DataError(f"{argument}={path!r} has no tokenizer: missing {' or '.join(HF_TOKENIZER_FILES)}")
        from transformers import AutoTokenizer

        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as err:  # transformers raises many types for unreadable files
            raise DataError(f"{argument}={path!r}: cannot load its tokenizer: {err}") from err
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ConfigError(f"{argument}={path!r}: the tokenizer has no eos token")
        self.eos_id = int(eos)
        bos = self.tokenizer.bos_token_id
        self.bos_id = self.eos_id if bos is None else int(bos)

    @cached_property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, data: bytes) -> list[int]:
        return list(self.tokenizer(data.decode("utf-8", errors="replace"), add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> bytes:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).encode("utf-8")
