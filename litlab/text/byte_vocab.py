"""The byte vocabulary of AU-Net and the flat byte Transformer: ids 0..255 are the bytes, then BOS and EOS."""

from __future__ import annotations

import numpy as np

from litlab.errors import ConfigError, DataError

BOS = 256
EOS = 257
BYTE_VOCAB_SIZE = 258


def encode_bytes(text: str | bytes, bos: bool = True, eos: bool = True) -> np.ndarray:
    """Turn a text into byte ids (int32), with BOS in front and EOS at the end when asked.

    Args:
        text: a string (encoded as UTF-8) or raw bytes (taken as they are, valid UTF-8 or not).
        bos: prepend the BOS id (256).
        eos: append the EOS id (257).
    """
    if isinstance(text, str):
        data = text.encode("utf-8")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
    else:
        raise ConfigError(f"text must be str or bytes, got {type(text).__name__}")
    ids = np.empty(len(data) + int(bos) + int(eos), dtype=np.int32)
    start = int(bos)
    ids[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)
    if bos:
        ids[0] = BOS
    if eos:
        ids[-1] = EOS
    return ids


def decode_bytes(ids) -> bytes:
    """Turn byte ids back into bytes, dropping BOS and EOS.

    Args:
        ids: a 1-D sequence (list, numpy array, tensor converted by ``np.asarray``) of ids in ``0..257``.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise DataError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return b""
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"ids must be integers, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= BYTE_VOCAB_SIZE)
    if bad.any():
        raise DataError(f"ids hold {int(arr[bad][0])}, outside the byte vocabulary 0..{BYTE_VOCAB_SIZE - 1}")
    return arr[arr < BOS].astype(np.uint8).tobytes()
