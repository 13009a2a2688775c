"""Packing: documents -> one token stream per split -> fixed-length training windows.

Each document becomes ``BOS, tokens..., EOS`` (bytes: its raw bytes as ids 0..255 with BOS=256, EOS=257;
BPE: the tokenizer's ids with ``<bos>``/``<eos>``), and the documents of a split are concatenated into one
stream (uint16 ids, int32 when the vocabulary exceeds 65,536). Window ``i`` is
``stream[i * seq_len : i * seq_len + seq_len + 1]``: its inputs are the first ``seq_len`` ids, its targets the
last ``seq_len`` (the inputs shifted by one), so consecutive windows overlap by one id and every id of the
stream but the first is a target exactly once. The ``(len(stream) - 1) % seq_len`` ids after the last full
window are dropped (never padded).

Byte levels (the AU-Net pooling levels of :func:`litlab.text.splitting.split_token_levels`, int8) are
computed on the whole stream, which splits every document on its own bytes (BOS gets the top level, EOS 0),
and packed alongside the ids: word counting never restarts at a window edge (the model itself treats the
first position of a window as a boundary).

Items of :class:`TokenWindows` are dicts of int64 tensors ``[seq_len]``: ``input_ids``, ``targets``,
``levels`` (bytes only) and ``target_bytes`` (UTF-8 bytes each target stands for; BOS/EOS count 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from litlab.errors import DataError
from litlab.text.bpe import (
    decode_document,
    load_bpe,
    special_ids,
    token_byte_lengths,
)
from litlab.text.byte_vocab import BOS, BYTE_VOCAB_SIZE, EOS
from litlab.text.splitting import split_token_levels

#: Documents per ``encode_batch`` call (bounds the memory of the tokenizer's output objects).
ENCODE_CHUNK = 1024


@dataclass
class PackedText:
    """The packed stream of one split.

    Attributes:
        ids: Token ids, BOS/EOS around each document (uint16 or int32).
        levels: Pooling levels of ``ids`` (int8), or None (BPE).
        num_documents: Documents packed.
        num_bytes: Raw bytes of those documents.
    """

    ids: np.ndarray
    levels: np.ndarray | None
    num_documents: int
    num_bytes: int

    def num_windows(self, seq_len: int) -> int:
        """Full windows of ``seq_len + 1`` ids at stride ``seq_len``."""
        return max(0, (len(self.ids) - 1) // seq_len)


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned/signed dtype used to store ids below ``vocab_size``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def pack_flat(flat: np.ndarray, lengths: np.ndarray, bos: int, eos: int, dtype: np.dtype) -> np.ndarray:
    """``[bos, doc_0..., eos, bos, doc_1..., eos, ...]`` from the concatenated tokens and each document's length."""
    lengths = np.asarray(lengths, dtype=np.int64)
    sizes = lengths + 2
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), dtype=dtype)
    body = np.ones(len(out), dtype=bool)
    body[starts] = False
    body[starts + lengths + 1] = False
    out[starts] = bos
    out[starts + lengths + 1] = eos
    out[body] = flat
    return out


class BytePacker:
    """Packs documents as raw bytes (vocabulary 258) with AU-Net pooling levels.

    Args:
        word_groups: Word groups of the splitting rule (levels 1..len(word_groups)).
        causal: Causal splitting (the boundary is known when the byte is read), as used for training.
    """

    name = "bytes"
    vocab_size = BYTE_VOCAB_SIZE
    bos_id = BOS
    eos_id = EOS

    def __init__(self, word_groups: Sequence[int] = (1, 2, 4), causal: bool = True):
        self.word_groups = tuple(word_groups)
        self.causal = causal
        self.byte_lengths = np.ones(BYTE_VOCAB_SIZE, dtype=np.int64)

    def count_tokens(self, data: bytes) -> int:
        """Tokens of one document without BOS/EOS: its bytes."""
        return len(data)

    def pack(self, docs: Sequence[bytes]) -> PackedText:
        flat = np.frombuffer(b"".join(docs), dtype=np.uint8)
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        ids = pack_flat(flat, lengths, BOS, EOS, id_dtype(BYTE_VOCAB_SIZE))
        levels = np.asarray(split_token_levels(ids, self.word_groups, self.causal), dtype=np.int8)
        if levels.shape != ids.shape:  # pragma: no cover - guards the interface
            raise RuntimeError(f"split_token_levels returned shape {levels.shape} for {ids.shape} ids")
        return PackedText(ids, levels, len(docs), int(lengths.sum()))


class BPEPacker:
    """Packs documents with a byte-level BPE tokenizer (see :mod:`litlab.text.bpe`).

    Documents are decoded as UTF-8 with ``errors="replace"`` (an invalid byte becomes U+FFFD, 3 bytes).

    Args:
        tokenizer_path: The tokenizer JSON (from ``litlab train_bpe``).
    """

    name = "bpe"

    def __init__(self, tokenizer_path: str):
        self.tokenizer = load_bpe(tokenizer_path)
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id = special_ids(self.tokenizer)
        self.byte_lengths = token_byte_lengths(self.tokenizer)

    def encode(self, docs: Sequence[bytes]) -> list[list[int]]:
        """The token ids of each document (no specials)."""
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        ids: list[list[int]] = []
        for start in range(0, len(docs), ENCODE_CHUNK):
            texts = [decode_document(d) for d in docs[start : start + ENCODE_CHUNK]]
            ids.extend(e.ids for e in encode(texts, add_special_tokens=False))
        return ids

    def count_tokens(self, data: bytes) -> int:
        """Tokens of one document without BOS/EOS (as :meth:`encode` gives them)."""
        return len(self.tokenizer.encode(decode_document(data), add_special_tokens=False).ids)

    def pack(self, docs: Sequence[bytes]) -> PackedText:
        tokens = self.encode(docs)
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        dtype = id_dtype(self.vocab_size)
        flat = np.fromiter(itertools.chain.from_iterable(tokens), dtype=dtype, count=int(lengths.sum()))
        ids = pack_flat(flat, lengths, self.bos_id, self.eos_id, dtype)
        return PackedText(ids, None, len(docs), sum(len(d) for d in docs))


class TokenWindows(Dataset):
    """Map-style dataset of the windows of a packed stream (see the module docstring).

    Args:
        packed: The packed split.
        seq_len: Inputs (and targets) per window.
        byte_lengths: UTF-8 bytes of each token id (the ``target_bytes`` lookup table).
        split: Split name, for error messages.
    """

    def __init__(self, packed: PackedText, seq_len: int, byte_lengths: np.ndarray, split: str = "train"):
        n = packed.num_windows(seq_len)
        if n < 1:
            raise DataError(
                f"the {split} split is too small for one window: {packed.num_documents} document(s), "
                f"{packed.num_bytes} bytes, {len(packed.ids)} tokens with BOS/EOS, but seq_len={seq_len} needs "
                f"{seq_len + 1} tokens; lower seq_len or add data (max_bytes, val_fraction/test_fraction)"
            )
        self.packed = packed
        self.ids = packed.ids
        self.levels = packed.levels
        self.seq_len = seq_len
        self.byte_lengths = np.asarray(byte_lengths, dtype=np.int64)
        self.num_windows = n

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.num_windows <= index < self.num_windows:
            raise IndexError(f"window {index} is out of range for {self.num_windows} windows")
        start = (index % self.num_windows) * self.seq_len
        window = self.ids[start : start + self.seq_len + 1].astype(np.int64)
        item = {"input_ids": torch.from_numpy(window[:-1]), "targets": torch.from_numpy(window[1:])}
        if self.levels is not None:
            item["levels"] = torch.from_numpy(self.levels[start : start + self.seq_len].astype(np.int64))
        item["target_bytes"] = torch.from_numpy(self.byte_lengths[window[1:]])
        return item

    @property
    def bytes_per_token(self) -> float:
        """Mean UTF-8 bytes per target token over the whole stream (specials count 1)."""
        targets = self.ids[1:]
        return float(self.byte_lengths[targets].sum() / max(1, len(targets)))
