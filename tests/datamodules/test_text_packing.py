"""Packing documents into windows: stream reconstruction, shifted targets, aligned levels, target bytes."""

import json
import random

import numpy as np
import pytest
import torch

from litlab.datamodules.bpe_training import train_bpe
from litlab.datamodules.text_packing import (
    BPEPacker,
    BytePacker,
    PackedText,
    TokenWindows,
    pack_flat,
)
from litlab.errors import DataError
from litlab.text.bpe import special_ids
from litlab.text.byte_vocab import BOS, EOS
from litlab.text.splitting import split_token_levels

DOCS = [
    b"The first document. It has two sentences.\n",
    "Zweites Dokument: \u00fcber gro\u00dfe Stra\u00dfen, 42 km.".encode(),
    "\u65e5\u672c\u8a9e\u306e\u6587\u66f8 \U0001f600 with  double  spaces\tand tabs".encode(),
    b"x",
    b"\xff\xfe invalid \xc3 utf-8 kept as bytes \xe2\x82",
    ("word " * 30).encode(),
]


def windows_of(ds: TokenWindows) -> dict[str, torch.Tensor]:
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def reference_stream(docs, bos=BOS, eos=EOS, encode=lambda d: list(d)) -> list[int]:
    out = []
    for d in docs:
        out += [bos, *encode(d), eos]
    return out


def test_pack_flat_matches_a_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 5, size=20)
    flat = rng.integers(0, 200, size=int(lengths.sum()))
    pieces, start = [], 0
    for n in lengths:
        pieces.append(flat[start : start + n].tolist())
        start += n
    packed = pack_flat(flat, lengths, 500, 501, np.dtype(np.int32))
    assert packed.tolist() == reference_stream(pieces, 500, 501)


@pytest.mark.parametrize("seq_len", [1, 7, 64])
def test_byte_windows_rebuild_the_stream(seq_len):
    packed = BytePacker().pack(DOCS)
    stream = reference_stream(DOCS)
    assert packed.ids.dtype == np.uint16 and packed.levels.dtype == np.int8
    assert packed.ids.tolist() == stream
    assert packed.num_documents == len(DOCS) and packed.num_bytes == sum(map(len, DOCS))
    ds = TokenWindows(packed, seq_len, BytePacker().byte_lengths)
    n = (len(stream) - 1) // seq_len  # the incomplete tail is dropped
    assert len(ds) == n
    w = windows_of(ds)
    assert set(w) == {"input_ids", "targets", "levels", "target_bytes"}
    assert all(t.dtype == torch.int64 and t.shape == (n, seq_len) for t in w.values())
    # every id but the first is a target exactly once, in stream order
    assert [w["input_ids"][0, 0].item(), *w["targets"].flatten().tolist()] == stream[: n * seq_len + 1]
    assert w["input_ids"].flatten().tolist() == stream[: n * seq_len]
    assert torch.equal(w["targets"][:, :-1], w["input_ids"][:, 1:])
    # levels: the splitting rule applied to each document on its own, packed alongside
    ref_levels = np.concatenate(
        [split_token_levels(np.array([BOS, *d, EOS]), (1, 2, 4), causal=True) for d in DOCS]
    )
    assert w["levels"].flatten().tolist() == ref_levels[: n * seq_len].tolist()
    assert (w["target_bytes"] == 1).all()
    assert ds.bytes_per_token == 1.0


def test_levels_follow_word_groups_and_causality():
    doc = b"one two three four five six seven eight nine"
    for groups in [(1,), (1, 3), (2, 4, 8)]:
        for causal in (True, False):
            packed = BytePacker(groups, causal).pack([doc, doc])
            ref = split_token_levels(np.array([BOS, *doc, EOS]), groups, causal)
            assert packed.levels.tolist() == ref.tolist() * 2
            assert packed.levels[0] == len(groups) and packed.levels[len(doc) + 1] == 0  # BOS top, EOS 0


@pytest.fixture(scope="module")
def bpe_packer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bpe")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "été", "日本", "😀", "42", "the", "and", "of"]
    with open(tmp / "c.jsonl", "w") as f:
        f.writelines(json.dumps({"text": " ".join(rng.choice(words) for _ in range(30))}) + "\n" for _ in range(40))
        f.writelines(json.dumps({"text": d.decode("utf-8", "replace")}) + "\n" for d in DOCS)
    return BPEPacker(train_bpe(str(tmp / "c.jsonl"), str(tmp / "bpe.json"), vocab_size=320))


@pytest.mark.parametrize("seq_len", [3, 16])
def test_bpe_windows_and_target_bytes(bpe_packer, seq_len):
    tok = bpe_packer.tokenizer
    bos, eos = special_ids(tok)
    packed = bpe_packer.pack(DOCS)
    assert packed.levels is None and packed.ids.dtype == np.uint16
    texts = [d.decode("utf-8", errors="replace") for d in DOCS]
    stream = reference_stream(texts, bos, eos, lambda t: tok.encode(t, add_special_tokens=False).ids)
    assert packed.ids.tolist() == stream
    ds = TokenWindows(packed, seq_len, bpe_packer.byte_lengths)
    n = (len(stream) - 1) // seq_len
    w = windows_of(ds)
    assert set(w) == {"input_ids", "targets", "target_bytes"} and len(ds) == n
    assert [w["input_ids"][0, 0].item(), *w["targets"].flatten().tolist()] == stream[: n * seq_len + 1]
    # target bytes of each complete document = the UTF-8 length of its decoded text, +1 for its EOS,
    # +1 for the BOS of the next document
    targets = w["targets"].flatten().tolist()
    tb = w["target_bytes"].flatten().tolist()
    doc, pos = 0, 0  # targets start after the first BOS
    while doc < len(texts):
        end = pos + len(tok.encode(texts[doc], add_special_tokens=False).ids)  # index of this doc's EOS
        if end >= len(targets):
            break
        assert targets[end] == eos
        assert sum(tb[pos:end]) == len(tok.decode(targets[pos:end]).encode()) == len(texts[doc].encode())
        assert tb[end] == 1
        if end + 1 < len(targets):
            assert targets[end + 1] == bos and tb[end + 1] == 1
        doc, pos = doc + 1, end + 2
    assert doc >= 3
    # over the whole stream: all document bytes plus one per special
    full = bpe_packer.byte_lengths[packed.ids[1:]].sum()
    assert full == sum(len(t.encode()) for t in texts) + 2 * len(DOCS) - 1
    assert ds.bytes_per_token == pytest.approx(full / (len(stream) - 1))


def test_bpe_replaces_invalid_utf8(bpe_packer):
    packed = bpe_packer.pack([b"ok \xff ok"])
    assert bpe_packer.tokenizer.decode(packed.ids[1:-1].tolist()) == "ok \ufffd ok"


def test_too_small_split_and_index_errors():
    packed = BytePacker().pack([b"abc", b"de"])  # 9 ids with BOS/EOS: one window of 8, none of 9
    assert len(TokenWindows(packed, 8, np.ones(258, np.int64))) == 1
    with pytest.raises(DataError, match=r"val split .*2 document.*5 bytes.*seq_len=9"):
        TokenWindows(packed, 9, np.ones(258, np.int64), split="val")
    ds = TokenWindows(PackedText(np.arange(10, dtype=np.uint16), None, 1, 8), 3, np.ones(258, np.int64))
    assert len(ds) == 3 and ds[-1]["input_ids"].tolist() == [6, 7, 8]
    with pytest.raises(IndexError):
        ds[3]
