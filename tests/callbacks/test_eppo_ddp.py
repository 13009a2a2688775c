"""EPPO after a real 2-process DDP fit (gloo, CPU, in a subprocess): each rank scores its share of the problems,
the sums are all-reduced, and the search, the baselines and the self-consistency measurements equal a
one-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from litlab.callbacks.eppo import EPPO

from .test_eppo import QUIET, SPEC, oracle

ROOT = Path(__file__).resolve().parents[2]
ARGS = {"data": SPEC, "shots": 2, "num_fitness": 23, "budget": 24, "random_draws": 4, "sc_samples": 3,
        "progress_bar": False}

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset
    from litlab.callbacks.eppo import EPPO
    from tests.callbacks.test_eppo import oracle

    out, devices = sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    callback = EPPO(output_dir=out, **json.loads(sys.argv[4]))
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[callback])
    trainer.fit(oracle(), train_dataloaders=DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=2))
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"indices": list(callback.indices), "comparison": callback.comparison,
                   "history": callback.result.history, "world_size": trainer.world_size}, f)
    """
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    one = EPPO(output_dir=str(tmp_path / "one"), **ARGS)
    Trainer(max_steps=1, callbacks=[one], default_root_dir=tmp_path, **QUIET).fit(
        oracle(), train_dataloaders=DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=2))

    script = tmp_path / "eppo_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(script), str(ROOT), str(tmp_path / "two"), "2", json.dumps(ARGS)],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert [r["world_size"] for r in ranks] == [2, 2] and report["world_size"] == 2
    strip = ("fitness_computations", "cache_hits")  # per rank: the same calls, on half the problems

    def same(comparison):
        return {k: v for k, v in comparison.items() if k not in strip}

    for rank in ranks:
        assert rank["indices"] == list(one.indices) and rank["history"] == one.result.history
        assert same(rank["comparison"]) == same(one.comparison)
    assert report["eppo"]["num_fitness"] == 23 and report["num_examples"] == 23  # the odd count splits 11 + 12
    assert one.result.selection_after > one.result.selection_before and "heldout_sc" in one.comparison["chosen"]
    assert (tmp_path / "two" / "preprompt.txt").read_text() == one.preprompt
