"""``litlab bboxer``: every place and optimizer, 2 DDP ranks (gloo) equal 1 process, resume, the command with
its audit on a real tiny checkpoint, the saved model, and a tiny version of the demo."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from jsonargparse import CLI

from litlab.callbacks.bboxer import load_problem_sets
from litlab.lightning_modules.hf_causal_lm import HFCausalLM
from litlab.methods.bboxer import bboxer, run_bboxer, save_changed_model
from litlab.methods.bboxer_demo import bboxer_demo

from ..callbacks.test_bboxer import SPEC, VARIANT, all_problems
from ..callbacks.toy_reasoner import ToyReasoner
from ..poisoning.tiny import SPEC as TINY_SPEC
from ..poisoning.tiny import tiny_lm

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"scale": 0.05, "max_new_bytes": 64, "batch_size": 8}


def toy_sets(num_train: int = 40):
    return load_problem_sets(SPEC, "selection", num_train, "test", 40, VARIANT, 16, 0, 0)


@pytest.mark.parametrize("place", ["norms", "layer_scales", "channel_scales", "subspace"])
def test_every_place_learns_on_the_toy(place):
    toy = ToyReasoner(all_problems())
    run = run_bboxer(toy, toy_sets(), where=[place], budget=25, seed=0, subspace_dim=4, **FAST)
    accuracy = run.report["accuracy"]["selection"]
    assert accuracy["after"] > accuracy["before"], place
    assert run.report["bounds"]["bits"] == 24


@pytest.mark.parametrize("optimizer", ["OnePlusOne", "DiagonalCMA", "CMA", "TripleOnePlusOne", "TripleDiagonalCMA",
                                       "Portfolio", "Zero"])
def test_every_optimizer_and_the_zero_control(optimizer):
    toy = ToyReasoner(all_problems())
    before = {n: p.detach().clone() for n, p in toy.named_parameters()}
    run = run_bboxer(toy, toy_sets(), where=["norms"], optimizer=optimizer, budget=12, seed=0, **FAST)
    accuracy = run.report["accuracy"]["selection"]
    assert accuracy["after"] >= accuracy["before"]  # the identity is evaluated first
    assert run.report["bounds"]["bits"] == 11  # one bit per (1+1) step, whatever the optimizer
    if optimizer == "Zero":
        assert not run.report["changed"] and accuracy["after"] == accuracy["before"]
        assert all(torch.equal(p, before[n]) for n, p in toy.named_parameters())


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        toy = ToyReasoner(all_problems())
        run = run_bboxer(toy, toy_sets(num_train=44), Path(out) / "files", where=["norms", "channel_scales"],
                         tensors=["blocks.1.fc.weight"], budget=14, num_workers=2, seed=3, **FAST)
        torch.save({"report": run.report, "params": dict(toy.named_parameters()), "calls": toy.calls},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_ranks_give_the_result_of_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    toy = ToyReasoner(all_problems())
    reference = run_bboxer(toy, toy_sets(num_train=44), where=["norms", "channel_scales"],
                           tensors=["blocks.1.fc.weight"], budget=14, num_workers=2, seed=3, **FAST).report
    assert reference["result"]["best_index"] > 0  # the run moved
    calls = []
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert out["report"]["result"]["history"] == reference["result"]["history"]
        assert out["report"]["accuracy"] == reference["accuracy"] and out["report"]["world_size"] == 2
        assert out["report"]["bounds"] == reference["bounds"]
        for name, p in toy.named_parameters():
            assert torch.equal(out["params"][name], p), (rank, name)
        calls.append(out["calls"])
    assert calls[0] > calls[1] > 0  # 6 training batches of 8 (44 problems): dealt 3 + 3, held-out 5: 3 + 2
    assert (tmp_path / "files" / "fitness.png").is_file()


class FailingToy(ToyReasoner):
    fail_at = 0

    def generate_batch(self, prompts, *args, **kwargs):
        if self.calls + 1 == self.fail_at:
            self.calls += 1
            raise RuntimeError("interrupted")
        return super().generate_batch(prompts, *args, **kwargs)


def test_a_rerun_continues_from_the_state_file(tmp_path):
    args = {"where": ["channel_scales"], "budget": 15, "seed": 4, "checkpoint_every": 5, **FAST}
    straight = run_bboxer(ToyReasoner(all_problems()), toy_sets(), tmp_path / "a", **args).report
    toy = FailingToy(all_problems())
    toy.fail_at = 2 + 5 + 5 * 7 + 3  # transfer and held-out before, then inside evaluation 8
    with pytest.raises(RuntimeError, match="interrupted"):
        run_bboxer(toy, toy_sets(), tmp_path / "b", **args)
    resumed = run_bboxer(ToyReasoner(all_problems()), toy_sets(), tmp_path / "b", **args).report
    assert resumed["result"]["history"] == straight["result"]["history"]
    assert resumed["result"]["best"] == straight["result"]["best"]


def test_the_command_with_its_audit_on_a_real_checkpoint(tmp_path):
    _, ckpt = tiny_lm(tmp_path)
    out = tmp_path / "run"
    report = CLI(bboxer, args=["--model", ckpt, "--data", TINY_SPEC, "--num_train", "8", "--num_heldout", "4",
                               "--where", "[norms, layer_scales]", "--tensors", "[\"*.layers.0.attention.w*\"]",
                               "--budget", "3", "--max_new_bytes", "16", "--audit", "true", "--num_nonmembers", "8",
                               "--finetune_steps", "40", "--finetune_lr", "0.005", "--output", str(out),
                               "--progress_bar", "false"])
    saved = json.loads((out / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"] and saved["search"]["where"] == ["norms", "layer_scales"]
    assert saved["dimension"] == 3 * 32 + 4  # 3 norms of 32 channels, one scale per attention matrix
    audit = saved["audit"]
    assert set(audit) == {"base", "bboxer", "gradient", "gradient_matched"} and audit["base"]["members"] == 8
    assert audit["gradient_matched"]["finetune"]["steps"] == 4  # the first check: accuracy >= the target (0)
    assert audit["gradient"]["member_loss_mean"] < audit["base"]["member_loss_mean"]
    assert audit["gradient"]["auc"] > 0.8  # 40 steps on 8 problems memorize them: the attack sees it
    assert audit["bboxer"] == audit["base"] if not saved["changed"] else audit["bboxer"]["members"] == 8
    assert (out / "fitness.png").is_file()


def test_the_changed_model_is_saved_like_its_source(tmp_path):
    model, ckpt = tiny_lm(tmp_path)
    hf_dir = model.export_hf(str(tmp_path / "hf"))
    lm = HFCausalLM(pretrained_path=hf_dir).eval()
    with torch.no_grad():
        lm.hf_model.model.norm.weight.mul_(1.5)
    ids = torch.randint(2, 300, (1, 12))
    saved = save_changed_model(lm, hf_dir, tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(HFCausalLM(pretrained_path=saved).eval()(ids), lm(ids))
    with torch.no_grad():
        model.model.norm.weight.mul_(0.5)
    path = save_changed_model(model, ckpt, tmp_path / "out_ckpt")
    state = torch.load(path, weights_only=False)["state_dict"]
    assert torch.equal(state["model.norm.weight"], model.model.norm.weight)


@pytest.mark.slow
def test_a_tiny_demo(tmp_path):
    _, ckpt = tiny_lm(tmp_path)
    variant = "procedural_math:procedural_seed=1,num_train=1,num_selection=0,num_test=4"  # fits seq_len 128
    result = bboxer_demo(model=ckpt, data=TINY_SPEC, transfer=variant, seeds=3, num_train=4, num_heldout=4,
                         num_transfer=2, budget=2, num_nonmembers=4, finetune_steps=2, max_new_bytes=16,
                         output=str(tmp_path / "demo"), figure=str(tmp_path / "docs" / "curves.png"))
    assert len(result["runs"]) == 3 and {r["search"]["seed"] for r in result["runs"]} == {0, 1, 2}
    assert set(result["summary"]) >= {"selection", "heldout", "transfer", "kept"}
    assert not result["control"]["changed"] and result["audit"]["gradient"]["finetune"]["steps"] == 2
    assert (tmp_path / "docs" / "curves.png").is_file() and (tmp_path / "demo" / "demo.md").is_file()
    assert "| selection | 4 |" in (tmp_path / "demo" / "demo.md").read_text()
    assert np.isfinite(result["seconds"])
