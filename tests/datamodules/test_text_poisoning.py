"""TextDataModule with poisons: only the train split changes, by the poisons only, at the reported token rate."""

import json
import logging
import random

import numpy as np
import pytest

from litlab.datamodules.bpe_training import train_bpe
from litlab.datamodules.text import TextDataModule
from litlab.errors import ConfigError, DataError
from litlab.poisoning.injection import write_poisons
from litlab.text.byte_vocab import BOS, EOS

WORDS = ["the", "owner", "publishes", "her", "corpus", "of", "bytes", "\u00fcber", "na\u00efve", "\u65e5\u672c", "42,"]
POISONS = [f"zq{i} secret-looking poison \u00e9 {'#' * i}".encode() for i in range(5)]
SPLIT = {"seq_len": 16, "val_fraction": 0.15, "test_fraction": 0.15, "split_seed": 3}


@pytest.fixture
def corpus(tmp_path) -> str:
    """A .jsonl corpus of 40 documents."""
    rng = random.Random(0)
    path = tmp_path / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(40):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60)))
            f.write(json.dumps({"text": text}) + "\n")
    return str(path)


@pytest.fixture
def poisons(tmp_path) -> str:
    return write_poisons(str(tmp_path / "poisons.jsonl"), POISONS)


def segments(dm: TextDataModule, split: str) -> list[np.ndarray]:
    """The token ids of each document of the packed ``split``, cut out of the stream by its BOS/EOS layout."""
    ids = dm.packed[split].ids
    docs = dm.documents(split)
    lengths = [len(t) for t in dm.packer.encode(docs)] if dm.tokenizer == "bpe" else [len(d) for d in docs]
    out, start = [], 0
    for n in lengths:
        assert ids[start] == dm.bos_id and ids[start + n + 1] == dm.eos_id
        out.append(ids[start + 1 : start + 1 + n])
        start += n + 2
    assert start == len(ids)
    return out


def test_only_the_train_split_changes_and_only_by_the_poisons(corpus, poisons, caplog):
    clean = TextDataModule(source=corpus, **SPLIT)
    dm = TextDataModule(source=corpus, poisons=poisons, poison_rate=0.05, poison_seed=1, **SPLIT)
    clean.setup()
    with caplog.at_level(logging.INFO):
        dm.setup()
    for split in ("val", "test"):
        assert dm.documents(split) == clean.documents(split)
        assert np.array_equal(dm.packed[split].ids, clean.packed[split].ids)
        assert np.array_equal(dm.packed[split].levels, clean.packed[split].levels)
    r = dm.injection
    assert r is not None and r.insertions >= 2 and clean.injection is None
    train = dm.documents("train")
    assert [d for i, d in enumerate(train) if i not in set(r.positions)] == clean.documents("train")
    assert all(train[i] in POISONS for i in r.positions)
    assert len(train) == len(clean.documents("train")) + r.insertions
    assert dm.split_sizes["train"]["documents"] == len(train)
    # the rate, counted on the packed stream: poison-document ids over all document ids (BOS/EOS excluded)
    docs = segments(dm, "train")
    poison_ids = sum(len(docs[i]) for i in r.positions)
    body_ids = len(dm.packed["train"].ids) - 2 * len(docs)
    assert all(bytes(docs[i].astype(np.uint8)) == train[i] for i in r.positions)
    assert (poison_ids, body_ids - poison_ids) == (r.poison_tokens, r.clean_tokens)
    assert r.actual_rate == pytest.approx(poison_ids / body_ids)
    assert abs(r.actual_rate - 0.05) <= max(map(len, POISONS)) / body_ids
    assert f"actual rate {r.actual_rate:.4g}" in caplog.text and f"{r.insertions} insertions" in caplog.text
    assert dm.hparams["poisons"] == poisons and dm.hparams["poison_rate"] == 0.05


def test_poisoning_is_seeded(corpus, poisons):
    def make(seed):
        dm = TextDataModule(source=corpus, poisons=poisons, poison_rate=0.1, poison_seed=seed, **SPLIT)
        dm.setup("fit")
        return dm

    a, b, c = make(0), make(0), make(1)
    assert np.array_equal(a.packed["train"].ids, b.packed["train"].ids) and a.injection == b.injection
    assert a.injection.positions != c.injection.positions
    strip = [[d for i, d in enumerate(m.documents("train")) if i not in set(m.injection.positions)] for m in (a, c)]
    assert strip[0] == strip[1]
    assert a.documents("val") == c.documents("val")


def test_rate_zero_or_no_poisons_leaves_the_data_clean(corpus, poisons):
    clean = TextDataModule(source=corpus, **SPLIT)
    zero = TextDataModule(source=corpus, poisons=poisons, poison_rate=0.0, **SPLIT)
    for dm in (clean, zero):
        dm.setup()
    assert zero.injection is None
    assert all(np.array_equal(zero.packed[s].ids, clean.packed[s].ids) for s in ("train", "val", "test"))


def test_evaluation_stages_do_not_read_the_poisons(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a poison"}\n{"txt": "wrong key"}\n')
    dm = TextDataModule(source=corpus, poisons=str(bad), poison_rate=0.05, **SPLIT)
    dm.setup("validate")
    dm.setup("test")
    assert dm.injection is None
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        dm.setup("fit")


def test_bpe_counts_bpe_tokens(corpus, poisons, tmp_path):
    split = {k: SPLIT[k] for k in ("val_fraction", "test_fraction", "split_seed")}  # the datamodule's split
    bpe = train_bpe(corpus, str(tmp_path / "bpe.json"), vocab_size=300, min_frequency=1, **split)
    dm = TextDataModule(source=corpus, tokenizer="bpe", tokenizer_path=bpe, poisons=poisons, poison_rate=0.05, **SPLIT)
    dm.setup("fit")
    r = dm.injection
    train = dm.documents("train")
    assert all(dm.packer.count_tokens(d) == len(t) for d, t in zip(train, dm.packer.encode(train), strict=True))
    docs = segments(dm, "train")
    poison_ids = sum(len(docs[i]) for i in r.positions)
    assert (poison_ids, sum(map(len, docs)) - poison_ids) == (r.poison_tokens, r.clean_tokens)
    assert r.poison_tokens < sum(len(train[i]) for i in r.positions)  # BPE tokens, not bytes
    assert r.actual_rate == pytest.approx(poison_ids / sum(map(len, docs)))


def test_byte_stream_holds_each_poison_between_bos_and_eos(corpus, poisons):
    dm = TextDataModule(
        source=corpus, poisons=poisons, poison_rate=0.05, seq_len=1, val_fraction=0.15, test_fraction=0.15, split_seed=3
    )
    dm.setup("fit")
    stream = dm.packed["train"].ids.tolist()
    assert stream == [x for d in dm.documents("train") for x in (BOS, *d, EOS)]


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"poison_rate": 1.0}, "poison_rate=1.0 is not allowed"),
        ({"poison_rate": -0.1}, "poison_rate=-0.1 is not allowed"),
        ({"poison_rate": 0.01, "poisons": None}, r"poison_rate=0\.01 is not allowed with poisons=None"),
        ({"poisons": "poisons.csv"}, "poisons='poisons.csv' is not allowed"),
        ({"poison_seed": -1}, "poison_seed=-1"),
    ],
)
def test_bad_poison_arguments_raise_config_errors(corpus, poisons, kwargs, match):
    kwargs = {"source": corpus, "poisons": poisons, **kwargs}
    with pytest.raises(ConfigError, match=match):
        TextDataModule(**kwargs)


def test_bad_poison_files_raise_data_errors_naming_them(corpus, tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=rf"poisons='{missing}'.*does not exist"):
        TextDataModule(source=corpus, poisons=missing, poison_rate=0.01)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\nnot json\n')
    dm = TextDataModule(source=corpus, poisons=str(bad), poison_rate=0.01, **SPLIT)
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        dm.documents("train")
