"""Byte-level BPE: local training on the train split, exact round trips, token byte lengths, load errors."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, pre_tokenizers

from litlab.datamodules.bpe_training import train_bpe
from litlab.datamodules.text_corpus import split_corpus
from litlab.errors import ConfigError, DataError
from litlab.text.bpe import (
    bytes_to_unicode,
    load_bpe,
    special_ids,
    token_byte_lengths,
)

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e co\u00fbte 3,50 \u20ac.",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068 emoji \U0001f600\U0001f680 and tabs\tand\r\nCRLF",
    "  leading spaces, trailing spaces   ",
    "a literal <bos> and <eos> inside text",
    "\u0000control\u0007chars\u007f and \u00a0nbsp \u2028",
]


def write_corpus(path, docs: list[str]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    return str(path)


def random_docs(n: int = 30, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are"]
    words += ["as", "with", "his", "they", "I", "at", "be", "this", "have", "from"]
    words += ["na\u00efve", "\u00fcber", "\u65e5\u672c", "\U0001f600", "3.14", "x=y+1;"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bpe")
    source = write_corpus(tmp / "corpus.jsonl", random_docs() + SAMPLES)
    return train_bpe(source, str(tmp / "tok" / "bpe.json"), vocab_size=400)


def test_round_trip_is_exact(tokenizer_path):
    tok = load_bpe(tokenizer_path)
    assert 300 < tok.get_vocab_size() <= 400  # fewer when the tiny corpus runs out of frequent pairs
    bos, eos = special_ids(tok)
    for text in [*SAMPLES, *random_docs(5, seed=1), "unseen \u0416\u0417\u0418 \U0001f9ea text"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
        assert bos not in ids and eos not in ids  # "<bos>" in text is plain text
    # BPE merged something: fewer tokens than bytes
    text = " ".join(random_docs(3, seed=2))
    assert len(tok.encode(text).ids) < 0.7 * len(text.encode())


def test_bytes_to_unicode_matches_the_byte_level_pre_tokenizer():
    table = bytes_to_unicode()
    assert sorted(table.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert len(set(table.values())) == 256 and table[32] == "\u0120" and table[ord("a")] == "a"
    # the pre-tokenizer's own mapping, read off single characters of 1..4 UTF-8 bytes
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    seen = {}
    three = [cp for cp in range(0x800, 0x10000, 0x400) if not 0xD800 <= cp < 0xE000]
    for cp in [*range(0x800), *three, *range(0x10000, 0x110000, 0x10000)]:
        mapped = byte_level.pre_tokenize_str(chr(cp))[0][0]
        for b, c in zip(chr(cp).encode(), mapped):
            seen[b] = c
    assert len(seen) == 256 - 13  # all but 0xC0, 0xC1 and 0xF5..0xFF, which never occur in UTF-8
    assert all(table[b] == c for b, c in seen.items())


def test_token_byte_lengths(tokenizer_path):
    tok = load_bpe(tokenizer_path)
    lengths = token_byte_lengths(tok)
    bos, eos = special_ids(tok)
    assert lengths.shape == (tok.get_vocab_size(),) and lengths.dtype == np.int64
    assert lengths[bos] == lengths[eos] == 1
    assert (lengths >= 1).all()
    used = set()
    for text in [*SAMPLES, *random_docs(10, seed=3)]:
        ids = tok.encode(text, add_special_tokens=False).ids
        used.update(ids)
        assert lengths[ids].sum() == len(text.encode("utf-8"))
    # every id used: its length is the UTF-8 length of what it decodes to (where that is whole characters)
    checked = 0
    for i in sorted(used):
        piece = tok.decode([i])
        if "\ufffd" not in piece:
            assert lengths[i] == len(piece.encode("utf-8")), (i, tok.id_to_token(i), piece)
            checked += 1
        else:  # part of a multi-byte character: one byte per byte-level character
            assert lengths[i] == len(tok.id_to_token(i))
    assert checked > 50
    assert any(lengths[i] != len(tok.id_to_token(i).encode()) for i in used)  # "\u0120the": 4 bytes, not 5


def test_training_is_deterministic_and_uses_train_documents_only(tmp_path):
    # each document repeats its own made-up word: BPE learns it as a token only if it trained on that document
    rng = random.Random(0)
    names = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(7)) for _ in range(12)]
    docs = [(f"{w} " * 40).strip() for w in names]
    source = write_corpus(tmp_path / "c.jsonl", docs)
    a = train_bpe(source, str(tmp_path / "a.json"), vocab_size=600, val_fraction=0.2, test_fraction=0.2, split_seed=3)
    b = train_bpe(source, str(tmp_path / "b.json"), vocab_size=600, val_fraction=0.2, test_fraction=0.2, split_seed=3)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    vocab = load_bpe(a).get_vocab()
    parts = split_corpus([d.encode() for d in docs], 0.2, 0.2, seed=3)
    word = {d.encode(): w for d, w in zip(docs, names)}
    assert all("\u0120" + word[d] in vocab for d in parts["train"])
    assert not any("\u0120" + word[d] in vocab or word[d] in vocab for d in parts["val"] + parts["test"])


def test_bad_arguments_and_files(tmp_path):
    source = write_corpus(tmp_path / "c.jsonl", SAMPLES)
    with pytest.raises(ConfigError, match="vocab_size=100"):
        train_bpe(source, str(tmp_path / "t.json"), vocab_size=100)
    with pytest.raises(ConfigError, match="min_frequency=0"):
        train_bpe(source, str(tmp_path / "t.json"), min_frequency=0)
    with pytest.raises(ConfigError, match="output="):
        train_bpe(source, str(tmp_path))
    with pytest.raises(ConfigError, match=r"tokenizer_path=.*missing\.json.*no such file"):
        load_bpe(str(tmp_path / "missing.json"))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(DataError, match=r"tokenizer_path=.*junk\.json.*not a readable"):
        load_bpe(str(tmp_path / "junk.json"))
    # a tokenizers JSON without the specials
    from tokenizers import decoders, models

    plain = Tokenizer(models.BPE())
    plain.decoder = decoders.ByteLevel()
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(DataError, match="no <bos> token"):
        load_bpe(str(tmp_path / "plain.json"))
    plain.decoder = decoders.WordPiece()
    plain.save(str(tmp_path / "wordpiece.json"))
    with pytest.raises(DataError, match="not a byte-level BPE"):
        load_bpe(str(tmp_path / "wordpiece.json"))
