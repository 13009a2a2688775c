"""`EPPO` in process, on a stand-in model whose accuracy depends on the pre-prompt (:mod:`.oracle_lm`): the search
improves the fitness, the report's numbers equal an independent count, the baselines and files are there, no
weights are written; after ``fit`` with the datamodule's problems; k searched; resume to the identical result;
bad input named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from litlab.callbacks.eppo import EPPO
from litlab.datamodules.math_corpus import parse_math_spec
from litlab.datamodules.math_problems import MathProblemsDataModule
from litlab.errors import ConfigError, DataError
from litlab.evolution import generalization_gap

from .oracle_lm import OracleLM

SPEC = "procedural_math:num_train=60,num_selection=40,num_test=50"
QUIET = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
         "enable_model_summary": False, "enable_progress_bar": False}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def splits(spec: str = SPEC) -> dict[str, list]:
    data, _ = parse_math_spec(spec)
    return {split: data.problems(split) for split in ("train", "selection", "test")}


def oracle(spec: str = SPEC) -> OracleLM:
    return OracleLM([p for problems in splits(spec).values() for p in problems])


def expected_accuracy(pool, indices, problems) -> float:
    """The oracle's accuracy, counted independently of the callback: answers whose last digit a demo covers."""
    digits = {pool[i].answer[-1] for i in indices}
    return sum(p.answer[-1] in digits for p in problems) / len(problems)


def run(tmp_path: Path, lm: OracleLM | None = None, **kwargs) -> tuple[EPPO, dict]:
    args = {"data": SPEC, "shots": 2, "num_fitness": 24, "budget": 30, "random_draws": 10, "sc_samples": 3,
            "checkpoint_every": 5, "output_dir": str(tmp_path), "progress_bar": False, **kwargs}
    callback = EPPO(**args)
    callback.run(Trainer(default_root_dir=tmp_path, **QUIET), lm or oracle())
    return callback, json.loads((tmp_path / "report.json").read_text())


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(tmp_path_factory.mktemp("eppo"))
    finally:
        torch.set_num_threads(threads)


def test_the_search_improves_and_the_report_counts_right(searched):
    callback, report = searched
    result, e, data = callback.result, report["eppo"], splits()
    pool, fitness, heldout = data["train"], data["selection"][:24], data["test"]
    assert result.selection_after > result.selection_before
    assert e["chosen"]["indices"] == list(callback.indices) and callback.indices != callback.space.start
    for name in ("chosen", "start", "zero_shot", "random_search"):
        m = e[name]
        assert m["selection"] == pytest.approx(expected_accuracy(pool, m["indices"], fitness)) if m["indices"] else \
            m["selection"] == 0.0
        assert m["heldout"] == pytest.approx(expected_accuracy(pool, m["indices"], heldout)) if m["indices"] else \
            m["heldout"] == 0.0
        assert m["heldout_se"] == pytest.approx(math.sqrt(m["heldout"] * (1 - m["heldout"]) / 50))
    assert e["chosen"]["selection"] == result.selection_after == report["selection_after"]
    assert (report["heldout_before"], report["heldout_after"]) == (e["start"]["heldout"], e["chosen"]["heldout"])
    draws = e["random"]["draws"]
    assert len(draws) == 10 and all(len(set(d["indices"])) == 2 for d in draws)
    assert e["random"]["heldout_mean"] == pytest.approx(sum(d["heldout"] for d in draws) / 10)
    assert e["random_search"]["budget"] == 30 and e["random_search"]["bits"] == pytest.approx(math.log2(30))
    assert 0 <= e["chosen"]["heldout_sc"] <= 1 and "heldout_sc" in e["start"] and "heldout_sc" not in draws[0]
    gain = e["heldout_gain"]["over_random"]
    assert gain["gain"] == pytest.approx(e["chosen"]["heldout"] - e["random"]["heldout_mean"]) and gain["se"] > 0


def test_budget_bits_bound_files_and_no_weights(searched):
    callback, report = searched
    e, out = report["eppo"], Path(callback.output_dir)
    assert (e["budget"], e["bits"], e["num_fitness"], e["num_heldout"]) == (30, 29, 24, 50)
    assert e["generalization_gap"] == pytest.approx(generalization_gap(29, 24, 0.05))
    assert (out / "preprompt.txt").read_text() == callback.preprompt == callback.scorer.prefix(callback.indices)
    record = json.loads((out / "preprompt.json").read_text())
    assert record["indices"] == list(callback.indices) and len(record["questions"]) == len(callback.indices)
    assert (out / "fitness.png").stat().st_size > 1000 and (out / "random_search_state.pt").exists()
    assert "weights" not in callback.paths and "weights" not in report and not list(out.glob("*.ckpt"))
    assert e["cache_hits"] > 0 and e["fitness_computations"] < 2 * 30 + 10 * 2 + 6  # repeats were not recomputed


def test_after_fit_with_the_datamodule_problems_and_k_searched(tmp_path):
    datamodule = MathProblemsDataModule(num_train=60, num_selection=40, num_test=50, batch_size=8)
    callback = EPPO(shots=2, shots_range=(2, 5), num_fitness=24, budget=40, random_draws=2, sc_samples=0,
                    random_search=False, output_dir=str(tmp_path / "fit"), progress_bar=False)
    trainer = Trainer(max_steps=1, limit_val_batches=0, callbacks=[callback], default_root_dir=tmp_path, **QUIET)
    trainer.fit(oracle(), datamodule=datamodule)
    report = json.loads((tmp_path / "fit" / "report.json").read_text())
    assert report["eppo"]["source"] == "MathProblemsDataModule" and "random_search" not in report["eppo"]
    assert 2 <= len(callback.indices) <= 5 and report["eppo"]["shots_range"] == [2, 5]
    assert callback.result.selection_after > callback.result.selection_before
    smoke = EPPO(data=SPEC, num_fitness=24, budget=30, output_dir=str(tmp_path / "smoke"), progress_bar=False)
    Trainer(fast_dev_run=2, callbacks=[smoke], default_root_dir=tmp_path, **QUIET).fit(oracle(), datamodule=datamodule)
    assert smoke.result.num_evaluations == 2 and smoke.indices is not None and not (tmp_path / "smoke").exists()


@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.95])
def test_an_interrupted_run_resumes_to_the_identical_result(tmp_path, searched, fraction):
    """Interrupted in the search, in the random search or in the baselines; run again with the same output_dir."""
    reference, report = searched
    lm = oracle()
    run(tmp_path / "count", lm)
    interrupted = oracle()
    interrupted.fail_at = int(fraction * lm.calls)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(tmp_path / "run", interrupted)
    callback, resumed = run(tmp_path / "run")
    assert resumed["history"] == report["history"] and callback.indices == reference.indices
    strip = ("fitness_computations", "cache_hits")
    assert {k: v for k, v in resumed["eppo"].items() if k not in strip} == \
        {k: v for k, v in report["eppo"].items() if k not in strip}
    if fraction == 0.3:
        assert 0 < resumed["resumed_at_evaluation"] < 30


def test_a_finished_search_in_a_checkpoint_restores_its_pre_prompt(searched):
    callback, _ = searched
    state = callback.state_dict()
    assert state["applied"] and state["indices"] == list(callback.indices)
    again = EPPO(data=SPEC, shots=2, num_fitness=24, budget=30)
    again.load_state_dict(state)
    assert again.indices == callback.indices and again.preprompt == callback.preprompt


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_bad_input_is_named(tmp_path):
    good = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(12)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [*good[:2], {"question": "No marker?", "answer": "It is 3."}, *good])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: .*has no final-answer line"):
        run(tmp_path / "a", data=f"{bad}:num_train=6,num_selection=4,num_test=2", num_fitness=4)
    fine = write_jsonl(tmp_path / "good.jsonl", good)
    with pytest.raises(DataError, match=r"bad\.jsonl:3"):
        run(tmp_path / "b", data=f"{fine}:num_train=6,num_selection=4,num_test=2", num_fitness=4, test_data=bad)
    with pytest.raises(ConfigError, match="shots=5 is not allowed: it exceeds the pool of 3"):
        run(tmp_path / "c", shots=5, pool_size=3)
    with pytest.raises(ConfigError, match="num_fitness=41 is not allowed: .* has 40 selection problems"):
        run(tmp_path / "d", num_fitness=41)

    class Empty:
        def problems(self, split):
            return []

    trainer = Trainer(default_root_dir=tmp_path, **QUIET)
    trainer.datamodule = Empty()  # what the trainer holds after fit(datamodule=...)
    with pytest.raises(ConfigError, match="demonstration pool is empty"):
        EPPO(num_fitness=4).run(trainer, oracle())
    with pytest.raises(ConfigError, match="EPPO needs math word problems"):
        EPPO(num_fitness=4).run(Trainer(default_root_dir=tmp_path, **QUIET), oracle())
    with pytest.raises(ConfigError, match="generate_batch"):
        EPPO(data=SPEC).run(trainer, torch.nn.Linear(1, 1))


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"optimizer": "CMA"}, "optimizer='CMA' is not allowed"),
    ({"shots": 0}, "shots=0"),
    ({"shots": 4, "shots_range": (5, 8)}, "shots_range"),
    ({"shots": 2, "start": [3, 3]}, "start=\\[3, 3\\]"),
    ({"sc_temperature": 0.0}, "sc_temperature=0.0"),
    ({"random_draws": -1}, "random_draws=-1"),
    ({"budget": 0}, "budget=0"),
])
def test_bad_arguments_are_named(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        EPPO(**kwargs)


def test_the_callback_is_configured_from_flags_as_in_a_config_file():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(EPPO, "eppo")
    config = parser.parse_args(["--eppo.data", SPEC, "--eppo.shots", "3", "--eppo.shots_range", "[2, 8]",
                                "--eppo.start", "[4, 0, 9]", "--eppo.optimizer", "PortfolioDiscreteOnePlusOne",
                                "--eppo.budget", "7"])
    callback = parser.instantiate_classes(config).eppo
    assert isinstance(callback, EPPO) and callback.shots_range == (2, 8) and callback.start == [4, 0, 9]
    assert (callback.optimizer, callback.budget, callback.weights_name) == ("PortfolioDiscreteOnePlusOne", 7, None)
