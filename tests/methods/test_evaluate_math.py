"""``litlab evaluate_math``: batched few-shot scoring equals one problem at a time, self-consistency votes,
the report and its errors; the math corpus spec as a text source (train split only)."""

from __future__ import annotations

import json

import lightning
import lightning.pytorch as L
import pytest
import torch

from litlab.cli import main
from litlab.datamodules import TextDataModule, train_bpe
from litlab.datamodules.math_corpus import math_documents, parse_math_spec
from litlab.errors import ConfigError
from litlab.evaluation.math_answer import is_correct
from litlab.lightning_modules import TransformerLM
from litlab.methods.evaluate_math import draw_demonstrations, math_scores
from litlab.text.gsm8k import format_demonstration

SPEC = "procedural_math:num_train=300,num_selection=20,num_test=24,per_document=3"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> tuple[TransformerLM, str]:
    root = tmp_path_factory.mktemp("math")
    bpe = train_bpe(source=SPEC, output=str(root / "bpe.json"), vocab_size=400)
    L.seed_everything(0)
    model = TransformerLM(dim=32, layers=2, heads=2, ffn_multiple_of=16, seq_len=1024, tokenizer="bpe",
                          tokenizer_path=bpe, vocab_size=400).eval()
    ckpt = root / "lm.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "litlab_class": "litlab.lightning_modules.transformer_lm.TransformerLM"}, ckpt)
    return model, str(ckpt)


def test_the_spec_is_the_train_split_in_the_few_shot_format():
    data, per_document = parse_math_spec(SPEC)
    docs = math_documents(SPEC)
    train, test = data.problems("train"), data.problems("test")
    assert per_document == 3 and len(docs) == 100
    assert docs[0].decode() == "".join(format_demonstration(p) for p in train[:3])
    assert not {p.question for p in train} & {p.question for p in test}
    text = TextDataModule(source=SPEC, max_bytes=50_000)
    assert text.documents("train")[0].startswith(b"Question: ")
    with pytest.raises(ConfigError, match="'shots=3' is not allowed"):
        parse_math_spec("procedural_math:shots=3")
    with pytest.raises(ConfigError, match="num_test='x' is not an integer"):
        TextDataModule(source="procedural_math:num_test=x")


@torch.no_grad()
def test_batched_few_shot_scores_equal_one_problem_at_a_time(lm):
    model, _ = lm
    data, _ = parse_math_spec(SPEC)
    problems = data.problems("test")[:6]
    demos = draw_demonstrations(data.problems("train"), 2, seed=1)
    batched = math_scores(model, problems, demos, max_new_bytes=60, batch_size=4)
    alone = [math_scores(model, [p], demos, max_new_bytes=60)[0] for p in problems]
    assert batched == alone
    prompts_text = model.generate_batch([b"Question: " + problems[0].question.encode() + b"\nAnswer:"],
                                        max_new_bytes=60, stop=[b"\n\n"],
                                        prefix="".join(format_demonstration(d) for d in demos).encode())[0]
    assert float(is_correct(prompts_text.decode(errors="replace"), problems[0].answer)) == batched[0]
    voted = math_scores(model, problems[:3], demos, samples=3, temperature=1.0, max_new_bytes=40)
    assert len(voted) == 3 and set(voted) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="temperature > 0"):
        math_scores(model, problems, demos, samples=2)
    with pytest.raises(ConfigError, match="shots=400 exceeds the 300 train problems"):
        draw_demonstrations(data.problems("train"), 400, seed=0)


def test_the_command_prints_and_writes_the_report(lm, tmp_path, capsys):
    _, ckpt = lm
    out = tmp_path / "report.json"
    main(["evaluate_math", "--model", ckpt, "--data", SPEC, "--shots", "2", "--prompts", "2", "--num_problems", "8",
          "--max_new_bytes", "40", "--output", str(out)])
    printed = capsys.readouterr().out
    assert "2-shot: exact match" in printed and "sd" in printed and "8 test problems" in printed
    report = json.loads(out.read_text())
    assert report["prompts"] == 2 and len(report["draws"]) == 2 and report["num_problems"] == 8
    assert report["draws"][0]["demonstrations"] != report["draws"][1]["demonstrations"]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate_math", "--model", ckpt, "--data", SPEC, "--split", "train"])
    assert exit_info.value.code == 2 and "split='train'" in capsys.readouterr().err
