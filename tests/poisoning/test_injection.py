"""Poison injection: the rate, the positions, the poison order, determinism, poison files and bad input."""

import json
import random

import pytest

from litlab.errors import ConfigError, DataError
from litlab.poisoning.injection import InjectionReport, inject_poisons, read_poisons, write_poisons


def make_docs(n: int = 200, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [f"clean document {i} ".encode() * rng.randint(1, 20) for i in range(n)]


def make_poisons(n: int = 7) -> list[bytes]:
    return [f"<poison {i}> zq{'x' * (3 * i)}".encode() for i in range(n)]


def strip(poisoned: list[bytes], report: InjectionReport) -> list[bytes]:
    drop = set(report.positions)
    return [d for i, d in enumerate(poisoned) if i not in drop]


@pytest.mark.parametrize("rate", [0.001, 0.01, 0.05, 0.2, 0.5, 0.9])
def test_actual_rate_is_the_closest_to_the_target(rate):
    docs, poisons = make_docs(), make_poisons()
    poisoned, r = inject_poisons(docs, poisons, rate, len, seed=3)
    clean = sum(map(len, docs))
    inserted = [poisoned[i] for i in r.positions]
    assert (r.clean_tokens, r.poison_tokens, r.insertions) == (clean, sum(map(len, inserted)), len(inserted))
    assert r.actual_rate == pytest.approx(r.poison_tokens / (clean + r.poison_tokens))
    assert r.target_rate == rate and len(poisoned) == len(docs) + r.insertions
    # within one (the longest) poison's share of the target
    assert abs(r.actual_rate - rate) <= max(map(len, poisons)) / (clean + r.poison_tokens)


def test_no_other_count_is_closer():
    docs, poisons = make_docs(50), make_poisons(5)
    clean = sum(map(len, docs))
    # the poison order depends on the seed only: a high rate shows the whole cycle
    full, r = inject_poisons(docs, poisons, 0.9, len, seed=1)
    order = [len(full[i]) for i in r.positions[: len(poisons)]]
    for rate in (0.003, 0.02, 0.1, 0.3, 0.6):
        poisoned, r = inject_poisons(docs, poisons, rate, len, seed=1)
        assert [len(poisoned[i]) for i in r.positions] == [order[j % len(order)] for j in range(r.insertions)]
        for n in range(1, r.insertions + 3):  # no other insertion count is closer to the target
            p = sum(order[j % len(order)] for j in range(n))
            assert abs(r.actual_rate - rate) <= abs(p / (clean + p) - rate) + 1e-12


def test_rate_zero_returns_the_documents_unchanged():
    docs = make_docs(20)
    poisoned, r = inject_poisons(docs, make_poisons(), 0.0, len)
    assert poisoned == docs and poisoned is not docs
    assert (r.insertions, r.poison_tokens, r.actual_rate, r.positions, r.poisons_used) == (0, 0, 0.0, [], 0)
    assert r.clean_tokens == sum(map(len, docs))
    assert inject_poisons(docs, [], 0, len)[0] == docs  # no poisons needed for rate 0


def test_clean_documents_keep_their_order_and_positions_are_seeded():
    docs, poisons = make_docs(), make_poisons()
    a, ra = inject_poisons(docs, poisons, 0.05, len, seed=0)
    b, rb = inject_poisons(docs, poisons, 0.05, len, seed=0)
    c, rc = inject_poisons(docs, poisons, 0.05, len, seed=1)
    assert a == b and ra == rb
    assert rc.positions != ra.positions and c != a
    for poisoned, r in ((a, ra), (c, rc)):
        assert strip(poisoned, r) == docs
        assert r.positions == sorted(set(r.positions))
        assert all(poisoned[i] in poisons for i in r.positions)
    # positions spread over the whole list (uniform), not bunched at one end
    assert min(ra.positions) < len(a) // 3 and max(ra.positions) > 2 * len(a) // 3


def test_every_poison_is_used_before_any_repeats():
    docs, poisons = make_docs(30), make_poisons(6)
    poisoned, r = inject_poisons(docs, poisons, 0.6, len, seed=5)  # several copies of the set
    used = [poisons.index(poisoned[i]) for i in r.positions]
    m = len(poisons)
    assert r.insertions > 2 * m and r.poisons_used == m
    assert sorted(used[:m]) == list(range(m))
    assert all(used[j] == used[j % m] for j in range(len(used)))  # the same order on every pass
    _, few = inject_poisons(docs, poisons, 0.002, len, seed=5)
    assert few.poisons_used == few.insertions < m


def test_a_rate_that_one_poison_overshoots_still_inserts_one():
    docs, poisons = [b"tiny", b"docs"], [b"a much longer poison sequence than the corpus"]
    poisoned, r = inject_poisons(docs, poisons, 0.01, len)
    assert r.insertions == 1 and strip(poisoned, r) == docs
    assert r.actual_rate == pytest.approx(len(poisons[0]) / (8 + len(poisons[0])))
    # a rate that rounds to zero insertions on a large corpus inserts one too
    _, r = inject_poisons(make_docs(), [b"xy"], 1e-9, len)
    assert r.insertions == 1


def test_report_to_dict_is_json():
    _, r = inject_poisons(make_docs(20), make_poisons(), 0.1, len, seed=2)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["insertions"] == r.insertions and d["positions"] == r.positions
    assert set(d) == {
        "target_rate",
        "actual_rate",
        "insertions",
        "poison_tokens",
        "clean_tokens",
        "positions",
        "poisons_used",
    }


def test_token_counts_come_from_count_tokens():
    words = lambda d: len(d.split())  # noqa: E731 - a "tokenizer" other than bytes
    docs, poisons = make_docs(40), make_poisons()
    poisoned, r = inject_poisons(docs, poisons, 0.1, words, seed=0)
    assert r.clean_tokens == sum(map(words, docs))
    assert r.poison_tokens == sum(words(poisoned[i]) for i in r.positions)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_rates_raise_config_errors(rate):
    with pytest.raises(ConfigError, match=r"rate=.* is not allowed"):
        inject_poisons(make_docs(5), make_poisons(), rate, len)


def test_bad_poisons_raise():
    docs = make_docs(5)
    with pytest.raises(ConfigError, match="poisons is empty"):
        inject_poisons(docs, [], 0.1, len)
    with pytest.raises(DataError, match="poison 1 .* has no tokens"):
        inject_poisons(docs, [b"ok", b""], 0.1, len)
    with pytest.raises(DataError, match="no tokens"):
        inject_poisons([b""], [b"ok"], 0.1, len)
    with pytest.raises(ConfigError, match="seed=-1"):
        inject_poisons(docs, [b"ok"], 0.1, len, seed=-1)


# ------------------------------------------------------------------------------------------ files
def test_poison_files_round_trip(tmp_path):
    poisons = [b"first poison", "\u65e5\u672c \u00fcber".encode(), b"line\nbreak inside", b"bad \xff byte"]
    path = write_poisons(str(tmp_path / "sub" / "poisons.jsonl"), poisons)
    assert read_poisons(path) == [*poisons[:3], "bad \ufffd byte".encode()]
    txt = tmp_path / "poisons.txt"
    txt.write_bytes(b"one poison\n\n  \nsecond \xff kept exactly\r\nthird")
    assert read_poisons(str(txt)) == [b"one poison", b"second \xff kept exactly", b"third"]


def test_bad_poison_files_name_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"poisons='.*missing\.jsonl'.*does not exist"):
        read_poisons(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match=r"poisons='.*\.csv'"):
        read_poisons(str(tmp_path / "p.csv"))
    cases = {
        "not json\n": r"bad\.jsonl:1: not valid JSON",
        '{"text": "ok"}\n\n{"txt": "x"}\n': r"bad\.jsonl:3: not a JSON object with a string under 'text'",
        '{"text": 3}\n': r"bad\.jsonl:1: not a JSON object",
        '["text"]\n': r"bad\.jsonl:1: not a JSON object",
        '{"text": ""}\n': r"bad\.jsonl:1: the poison is empty",
        "\n  \n": r"bad\.jsonl.* holds no poisons",
    }
    bad = tmp_path / "bad.jsonl"
    for content, match in cases.items():
        bad.write_text(content)
        with pytest.raises(DataError, match=match):
            read_poisons(str(bad), argument="poisons")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.txt holds no poisons"):
        read_poisons(str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match=r"\.jsonl file"):
        write_poisons(str(tmp_path / "p.txt"), [b"x"])
