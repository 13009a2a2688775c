"""Math word problems for fine-tuning and evolving language models: ``MathProblemsDataModule``.

The problems come from a local JSON-lines file in GSM8K's format (arXiv 2110.14168; one
``{"question": ..., "answer": "<rationale>\\n#### <final answer>"}`` record per line, read by
:func:`read_gsm8k_jsonl`) or from the offline procedural generator of :mod:`litlab.datamodules.procedural_math`.
A ``split_seed``-fixed permutation (:func:`split_problems`) gives three disjoint splits: ``train`` (fine-tuning),
``selection`` (the fitness of a search, e.g. EPPO, arXiv 2412.04291; the val loader) and ``test`` (held out).

Batches are lists of :class:`~litlab.text.gsm8k.MathProblem` records (the model prompts and scores them itself).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from litlab.datamodules.loaders import EpochSeededDataLoader
from litlab.datamodules.procedural_math import FAMILIES, generate_problems
from litlab.errors import ConfigError, DataError, check_choice, check_int
from litlab.text.gsm8k import MARKER, MathProblem, split_rationale

PROCEDURAL = "procedural"
SPLITS = ("train", "selection", "test")
_KEYS = ("question", "answer")


def read_gsm8k_jsonl(path: str) -> list[MathProblem]:
    """The problems of a GSM8K-format JSON-lines file, in file order; blank lines are skipped.

    Args:
        path (str): A ``.jsonl`` file of ``{"question": str, "answer": str}`` records whose answer ends in a
            ``#### <final answer>`` line (other keys are ignored).

    Returns:
        list[MathProblem]: One problem per record.

    Raises:
        DataError: The file cannot be read, holds no record, or a record (named ``path:line``) is not valid
            JSON, is not an object, lacks ``question`` or ``answer``, has a non-string or empty one, or its
            answer has no ``#### `` line.
    """
    problems = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    problems.append(_parse_record(line, path, number))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not problems:
        raise DataError(f"{path}: no records (the file is empty)")
    return problems


def _parse_record(line: bytes, path: str, number: int) -> MathProblem:
    """The problem of one line of a GSM8K-format file; DataErrors name ``path:number``."""
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise DataError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise DataError(f"{where}: the record is a JSON {type(record).__name__}, not an object with {list(_KEYS)}")
    for key in _KEYS:
        if key not in record:
            raise DataError(f"{where}: no {key!r} key in the record (has {sorted(record)[:10]})")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} is a {type(record[key]).__name__}, not a string")
        if not record[key].strip():
            raise DataError(f"{where}: {key!r} is empty")
    try:
        rationale, final = split_rationale(record["answer"])
    except DataError as exc:
        raise DataError(f"{where}: {exc} (a GSM8K answer ends in a line {MARKER!r}<final answer>)") from exc
    return MathProblem(record["question"].strip(), rationale, final)


def split_problems(
    problems: Sequence[MathProblem], num_train: int, num_selection: int, num_test: int, seed: int
) -> dict[str, list[MathProblem]]:
    """Disjoint ``train``/``selection``/``test`` splits of ``problems``, a function of the arguments only.

    The problems at ``numpy.random.RandomState(seed).permutation(len(problems))`` positions
    ``[0, num_train)`` are the train split, the next ``num_selection`` the selection split, the next ``num_test``
    the test split; the rest are unused. So a split never shares a record with another (a source with
    repeated records may still repeat a question).

    Args:
        problems (Sequence[MathProblem]): The source's problems.
        num_train (int): Train problems (>= 0).
        num_selection (int): Selection problems (>= 0).
        num_test (int): Test problems (>= 0).
        seed (int): Seed of the permutation (>= 0).

    Raises:
        ConfigError: A bad count or seed, or the three counts add up to more than ``len(problems)``.
    """
    counts = {"train": num_train, "selection": num_selection, "test": num_test}
    for split, count in counts.items():
        check_int(f"num_{split}", count, 0)
    check_int("split_seed", seed, 0)
    total = sum(counts.values())
    if total > len(problems):
        raise ConfigError(
            f"num_train + num_selection + num_test = {num_train} + {num_selection} + {num_test} = {total} is not "
            f"allowed: the source has only {len(problems)} problems"
        )
    order = np.random.RandomState(seed).permutation(len(problems))
    splits, start = {}, 0
    for split, count in counts.items():
        splits[split] = [problems[int(i)] for i in order[start : start + count]]
        start += count
    return splits


def collate_problems(batch: list[MathProblem]) -> list[MathProblem]:
    """The collate function of the loaders: a batch is the list of its records."""
    return list(batch)


class ProblemDataset(Dataset):
    """A map-style dataset of :class:`MathProblem` records."""

    def __init__(self, problems: Sequence[MathProblem]):
        self.problems = list(problems)

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, index: int) -> MathProblem:
        return self.problems[index]


class MathProblemsDataModule(L.LightningDataModule):
    """Train, selection (val) and test splits of math word problems; batches are lists of ``MathProblem``.

    Args:
        source (str): ``"procedural"`` (offline generated problems, see
            :mod:`~litlab.datamodules.procedural_math`) or a GSM8K-format ``.jsonl`` file.
        num_train (int): Train problems (>= 1).
        num_selection (int): Selection problems (>= 0): the val loader.
        num_test (int): Test problems (>= 0).
        split_seed (int): Seed of the split (the permutation of the source's problems).
        procedural_seed (int): Seed of the procedural generator (``source="procedural"`` only).
        procedural_templates (str): Template family of the generator: ``"default"`` or ``"variant"``.
        batch_size (int): Problems per batch.
        seed (int): Seed of the training shuffle (a function of seed and epoch only).
    """

    def __init__(
        self,
        source: str = PROCEDURAL,
        num_train: int = 1000,
        num_selection: int = 200,
        num_test: int = 500,
        split_seed: int = 0,
        procedural_seed: int = 0,
        procedural_templates: str = "default",
        batch_size: int = 16,
        seed: int = 0,
    ):
        super().__init__()
        if not isinstance(source, str) or not source:
            raise ConfigError(f"source={source!r} is not allowed: give {PROCEDURAL!r} or a .jsonl file")
        if source != PROCEDURAL and not os.path.isfile(source):
            raise DataError(f"source={source!r}: no such file (give {PROCEDURAL!r} or a GSM8K-format .jsonl file)")
        self.num_train = check_int("num_train", num_train, 1)
        self.num_selection = check_int("num_selection", num_selection, 0)
        self.num_test = check_int("num_test", num_test, 0)
        self.split_seed = check_int("split_seed", split_seed, 0)
        self.procedural_seed = check_int("procedural_seed", procedural_seed, 0)
        check_choice("procedural_templates", procedural_templates, FAMILIES)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.save_hyperparameters()
        self.source = source
        self.procedural_templates = procedural_templates
        self._splits: dict[str, list[MathProblem]] | None = None
        self.datasets: dict[str, ProblemDataset] = {}

    def source_problems(self) -> list[MathProblem]:
        """All the problems of the source (the procedural source makes exactly as many as the splits take)."""
        if self.source == PROCEDURAL:
            total = self.num_train + self.num_selection + self.num_test
            return generate_problems(total, self.procedural_seed, self.procedural_templates)
        return read_gsm8k_jsonl(self.source)

    def problems(self, split: str) -> list[MathProblem]:
        """The problems of ``split`` (``"train"``, ``"selection"`` or ``"test"``); the source is read on first use."""
        check_choice("split", split, SPLITS)
        if self._splits is None:
            self._splits = split_problems(
                self.source_problems(), self.num_train, self.num_selection, self.num_test, self.split_seed
            )
        return list(self._splits[split])

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.datasets:
                self.datasets[split] = ProblemDataset(self.problems(split))

    def _dataset(self, split: str) -> ProblemDataset:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before the {split} dataloader")
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        """Train problems, shuffled by ``(seed, epoch)``."""
        return EpochSeededDataLoader(
            self._dataset("train"), seed=self.seed, batch_size=self.batch_size, collate_fn=collate_problems
        )

    def val_dataloader(self) -> DataLoader:
        """Selection problems, in order."""
        return DataLoader(self._dataset("selection"), batch_size=self.batch_size, collate_fn=collate_problems)

    def test_dataloader(self) -> DataLoader:
        """Test problems, in order."""
        return DataLoader(self._dataset("test"), batch_size=self.batch_size, collate_fn=collate_problems)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A batch of ``MathProblem`` records holds text, nothing to move: returned as it is (Lightning's default
        would try to rebuild each frozen record and fail)."""
        if isinstance(batch, list) and all(isinstance(item, MathProblem) for item in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
