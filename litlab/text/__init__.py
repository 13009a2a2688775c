"""Text utilities shared by the text datamodules and the byte-level models (pure Python + numpy).

* :mod:`litlab.text.byte_vocab`: the 258-symbol byte vocabulary (256 bytes, BOS, EOS).
* :mod:`litlab.text.splitting`: AU-Net's splitting rule, per-byte pooling levels.
"""

from __future__ import annotations

from litlab.text.byte_vocab import BOS, BYTE_VOCAB_SIZE, EOS, decode_bytes, encode_bytes
from litlab.text.splitting import StreamingSplitter, split_levels, split_token_levels

__all__ = [
    "BOS",
    "BYTE_VOCAB_SIZE",
    "EOS",
    "StreamingSplitter",
    "decode_bytes",
    "encode_bytes",
    "split_levels",
    "split_token_levels",
]
