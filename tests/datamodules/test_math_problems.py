"""Math word problems: reading GSM8K-format JSON lines, the seeded split, the datamodule's loaders."""

from __future__ import annotations

import json

import pytest

from litlab.datamodules.math_problems import MathProblemsDataModule, read_gsm8k_jsonl, split_problems
from litlab.datamodules.procedural_math import generate_problems
from litlab.errors import ConfigError, DataError
from litlab.text.gsm8k import MathProblem


def record(i: int) -> dict[str, str]:
    return {
        "question": f"Question {i}: what is {i} + 1?",
        "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}",
    }


def write_jsonl(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture
def gsm_file(tmp_path) -> str:
    lines = [json.dumps(record(i)) for i in range(30)]
    lines.insert(3, "   ")  # blank lines are skipped
    return write_jsonl(tmp_path / "problems.jsonl", lines)


def test_read_gsm8k_jsonl(gsm_file):
    problems = read_gsm8k_jsonl(gsm_file)
    assert len(problems) == 30
    assert problems[0] == MathProblem("Question 0: what is 0 + 1?", "0 + 1 = <<0+1=1>>1", "1")
    assert problems[29].answer == "30"
    assert problems[5].to_record() == record(5)


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"question": "q", "answer": "1\\n#### 1"', "not valid JSON"),
        ('["q", "a"]', "not an object"),
        ('{"answer": "1\\n#### 1"}', "no 'question' key"),
        ('{"question": "q"}', "no 'answer' key"),
        ('{"question": 3, "answer": "1\\n#### 1"}', "'question' is a int, not a string"),
        ('{"question": "q", "answer": 1}', "'answer' is a int, not a string"),
        ('{"question": "q", "answer": "1 + 1 = 2"}', "final-answer line"),
        ('{"question": "q", "answer": "1 + 1 = 2\\n#### "}', "is empty"),
        ('{"question": " ", "answer": "#### 2"}', "'question' is empty"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(record(0)), "", bad, json.dumps(record(1))])
    with pytest.raises(DataError, match=message) as info:
        read_gsm8k_jsonl(path)
    assert f"{path}:3:" in str(info.value)


def test_empty_and_missing_files_raise(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        read_gsm8k_jsonl(empty)
    with pytest.raises(DataError, match="cannot read .*missing.jsonl"):
        read_gsm8k_jsonl(str(tmp_path / "missing.jsonl"))


def test_split_problems_is_disjoint_seeded_and_deterministic():
    problems = generate_problems(50, seed=3)
    splits = split_problems(problems, 20, 10, 15, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "selection": 10, "test": 15}
    questions = [p.question for split in splits.values() for p in split]
    assert len(set(questions)) == 45  # disjoint
    assert split_problems(problems, 20, 10, 15, seed=1) == splits  # deterministic
    other = split_problems(problems, 20, 10, 15, seed=2)
    assert other["train"] != splits["train"]
    # a larger test split extends, and does not reshuffle, the others
    bigger = split_problems(problems, 20, 10, 20, seed=1)
    assert bigger["train"] == splits["train"] and bigger["test"][:15] == splits["test"]
    assert split_problems(problems, 0, 0, 0, seed=0) == {"train": [], "selection": [], "test": []}


def test_split_problems_too_few_problems_raises_naming_the_counts():
    problems = generate_problems(10, seed=0)
    with pytest.raises(ConfigError, match=r"6 \+ 3 \+ 2 = 11 .* only 10 problems"):
        split_problems(problems, 6, 3, 2, seed=0)
    with pytest.raises(ConfigError, match="num_selection=-1"):
        split_problems(problems, 1, -1, 0, seed=0)


def test_datamodule_from_a_jsonl_file(gsm_file):
    dm = MathProblemsDataModule(source=gsm_file, num_train=12, num_selection=5, num_test=7, split_seed=4, batch_size=5)
    dm.setup("fit")
    sizes = {split: len(dm.problems(split)) for split in ("train", "selection", "test")}
    assert sizes == {"train": 12, "selection": 5, "test": 7}
    assert dm.problems("test") == split_problems(read_gsm8k_jsonl(gsm_file), 12, 5, 7, seed=4)["test"]

    val = list(dm.val_dataloader())
    assert [len(b) for b in val] == [5]
    assert all(isinstance(p, MathProblem) for p in val[0])
    assert [p for batch in val for p in batch] == dm.problems("selection")
    assert [p for batch in dm.test_dataloader() for p in batch] == dm.problems("test")

    epoch0 = [p for batch in dm.train_dataloader() for p in batch]
    assert sorted(epoch0, key=lambda p: p.question) == sorted(dm.problems("train"), key=lambda p: p.question)
    assert [len(b) for b in dm.train_dataloader()] == [5, 5, 2]


def test_datamodule_procedural_source():
    kwargs = dict(num_train=8, num_selection=4, num_test=4, procedural_seed=7, batch_size=4)
    dm = MathProblemsDataModule(**kwargs)
    again = MathProblemsDataModule(**kwargs)
    assert dm.problems("train") == again.problems("train")
    assert set(dm.problems("train")) | set(dm.problems("selection")) | set(dm.problems("test")) == set(
        generate_problems(16, seed=7)
    )
    variant = MathProblemsDataModule(**kwargs, procedural_templates="variant")
    assert set(variant.problems("test")).isdisjoint(dm.problems("test"))
    assert dm.hparams["procedural_seed"] == 7


def test_datamodule_too_small_source_raises_naming_the_counts(gsm_file):
    dm = MathProblemsDataModule(source=gsm_file, num_train=20, num_selection=10, num_test=5)
    with pytest.raises(ConfigError, match=r"20 \+ 10 \+ 5 = 35 .* only 30 problems"):
        dm.setup("fit")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_train": 0}, ConfigError, "num_train=0"),
        ({"num_selection": -1}, ConfigError, "num_selection=-1"),
        ({"num_test": 1.5}, ConfigError, "num_test=1.5"),
        ({"batch_size": 0}, ConfigError, "batch_size=0"),
        ({"split_seed": -1}, ConfigError, "split_seed=-1"),
        ({"procedural_seed": "0"}, ConfigError, "procedural_seed='0'"),
        ({"procedural_templates": "gsm8k"}, ConfigError, "procedural_templates='gsm8k'"),
        ({"source": ""}, ConfigError, "source=''"),
        ({"source": "/no/such/file.jsonl"}, DataError, "no such file"),
    ],
)
def test_datamodule_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        MathProblemsDataModule(**kwargs)


def test_loaders_before_setup_raise():
    with pytest.raises(RuntimeError, match="setup"):
        MathProblemsDataModule(num_train=2, num_selection=1, num_test=1).train_dataloader()


def test_a_module_fits_on_math_problem_batches():
    """Batches are lists of frozen MathProblem records; moving them to the device must not try to rebuild them."""
    import lightning.pytorch as L
    import torch

    seen = []

    class Counter(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen.append(batch)
            return (self.w * len(batch)).sum() ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = MathProblemsDataModule(num_train=12, num_selection=4, num_test=4, batch_size=4)
    L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(Counter(), dm)
    assert len(seen) == 2 and all(isinstance(p, MathProblem) for batch in seen for p in batch)
