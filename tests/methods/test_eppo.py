"""``litlab eppo`` and ``litlab eppo_demo`` on real tiny language models: a litlab checkpoint and its Hugging Face
copy (``HFCausalLM``), the flags jsonargparse makes, the printed comparison and files, and bad input named."""

from __future__ import annotations

import json

import pytest
from jsonargparse import CLI

from litlab.errors import ConfigError, DataError
from litlab.methods.eppo import eppo
from litlab.methods.eppo_demo import eppo_demo

from ..evaluation.tiny_math_lm import hf_copy, tiny_math_lm

SPEC = "procedural_math:num_train=120,num_selection=12,num_test=10,per_document=3"
SMALL = ["--shots", "2", "--num_fitness", "6", "--num_heldout", "5", "--budget", "4", "--random_draws", "2",
         "--sc_samples", "2", "--max_new_bytes", "30", "--accelerator", "cpu", "--progress_bar", "false"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eppo_lm")
    lm, ckpt = tiny_math_lm(root, SPEC)
    _, hf_dir = hf_copy(lm, root / "hf")
    return {"ckpt": ckpt, "hf": hf_dir}


@pytest.mark.parametrize("kind", ["ckpt", "hf"])
def test_the_command_runs_on_a_checkpoint_and_on_a_hugging_face_directory(models, kind, tmp_path, capsys):
    out = tmp_path / "eppo"
    report = CLI(eppo, args=["--model", models[kind], "--data", SPEC, *SMALL, "--output", str(out)])
    printed = capsys.readouterr().out
    for needle in ("EPPO (DiscreteLenglerOnePlusOne, comparison feedback, budget 4, k=2", "zero-shot", "random k-shot",
                   "random search (4 draws)", "information: 3 bits", "held-out gain of EPPO"):
        assert needle in printed, needle
    e = report["eppo"]
    assert report["model"] == models[kind] and e["num_fitness"] == 6 and e["num_heldout"] == 5
    assert json.loads((out / "report.json").read_text())["eppo"] == e
    indices = json.loads((out / "preprompt.json").read_text())["indices"]
    assert indices == e["chosen"]["indices"] and len(indices) == 2
    assert (out / "preprompt.txt").read_text().startswith("Question: ") and (out / "fitness.png").exists()


def test_bad_input_through_the_command_names_it(models, tmp_path):
    good = [{"question": f"Ann has {i} pens. How many?", "answer": f"She has {i}.\n#### {i}"} for i in range(10)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in [*good[:4], {"question": "Q?", "answer": "7"}, *good]))
    with pytest.raises(DataError, match=r"bad\.jsonl:5: .*final-answer line"):
        eppo(model=models["ckpt"], data=f"{bad}:num_train=6,num_selection=4,num_test=2", num_fitness=4)
    with pytest.raises(ConfigError, match="shots=9 is not allowed: it exceeds the pool of 8"):
        eppo(model=models["ckpt"], data=SPEC, shots=9, pool_size=8, num_fitness=4)
    with pytest.raises(DataError, match="no such checkpoint file or model directory"):
        eppo(model=str(tmp_path / "missing.ckpt"), data=SPEC)
    _, short = tiny_math_lm(tmp_path, SPEC, seq_len=96)
    with pytest.raises(ConfigError, match="starting pre-prompt \\(shots=3\\) and .* do not fit the model's context "
                                          "of 96 tokens"):
        eppo(model=short, data=SPEC, shots=3, num_fitness=4, output=str(tmp_path / "short"))


def test_a_tiny_demo_writes_its_summary_and_figures(models, tmp_path, capsys):
    out = tmp_path / "demo"
    summary = eppo_demo(model=models["ckpt"], data=SPEC, seeds=2, shots=2, num_fitness=4, num_heldout=4, budget=3,
                        random_draws=2, sc_samples=2, max_new_bytes=30, output=str(out))
    printed = capsys.readouterr().out
    assert "EPPO - random k-shot on held-out" in printed and "random search" in printed
    saved = json.loads((out / "summary.json").read_text())
    runs = saved["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and summary["seeds"] == 2
    eppo_row = summary["prompts"]["eppo"]["heldout"]
    assert eppo_row["mean"] == pytest.approx(sum(r["eppo"]["heldout"] for r in runs) / 2)
    assert summary["prompts"]["random"]["heldout"]["n"] == 2
    assert {"zero_shot", "start", "random", "random_search", "eppo"} == set(summary["prompts"])
    for name in ("fitness_curves.png", "heldout.png"):
        assert (out / name).stat().st_size > 1000
    assert all((out / f"seed{s}" / "preprompt.txt").exists() for s in (0, 1))
