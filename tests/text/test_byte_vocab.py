from __future__ import annotations

import numpy as np
import pytest

from litlab.errors import DataError
from litlab.text.byte_vocab import BOS, BYTE_VOCAB_SIZE, EOS, decode_bytes, encode_bytes


def test_constants():
    assert (BOS, EOS, BYTE_VOCAB_SIZE) == (256, 257, 258)


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("eos", [True, False])
def test_encode_layout(bos, eos):
    ids = encode_bytes("hé", bos=bos, eos=eos)
    assert ids.dtype == np.int32
    expected = [BOS] * bos + [0x68, 0xC3, 0xA9] + [EOS] * eos
    assert ids.tolist() == expected


def test_roundtrip_text_and_raw_bytes():
    text = "Zoë 中文 😀\n\t"
    assert decode_bytes(encode_bytes(text)) == text.encode("utf-8")
    raw = bytes(range(256))  # not valid UTF-8: taken as is
    assert decode_bytes(encode_bytes(raw)) == raw
    assert encode_bytes(raw, bos=False, eos=False).tolist() == list(range(256))


def test_decode_drops_specials_anywhere_and_accepts_lists():
    assert decode_bytes([BOS, 97, EOS, BOS, 98, EOS]) == b"ab"
    assert decode_bytes([]) == b""
    assert decode_bytes(np.array([EOS], dtype=np.int64)) == b""


@pytest.mark.parametrize("ids", [[97, 258], [-1], [[97]], [1.5]])
def test_decode_rejects_bad_ids(ids):
    with pytest.raises(DataError, match="ids"):
        decode_bytes(ids)
