"""A real 2-process run (gloo, CPU): each rank evaluates its shard; the result equals a 1-process run."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from litlab.evolution import (
    EvolutionEngine,
    Fitness,
    ParameterSpace,
    SearchSpace,
    shard,
)

from .conftest import accuracy, tiny_data, tiny_model


def predictions(model, batch):
    return model(batch[0]).argmax(-1), batch[1]


def pooled_accuracy(outputs) -> float:
    return float(torch.cat([(p == y).float() for p, y in outputs]).mean())


FITNESSES = {"mean": Fitness(accuracy), "aggregate": Fitness(predictions, aggregate=pooled_accuracy)}


def run(kind: str, batches, checkpoint_path=None):
    model = tiny_model()
    space = SearchSpace({"w": ParameterSpace(model, select="blocks.*.mlp.*", granularity="channel", scale=0.2)})
    engine = EvolutionEngine(model, space, FITNESSES[kind], optimizer="TwoPointsDE", budget=16, num_workers=2,
                             seed=0, checkpoint_path=checkpoint_path, checkpoint_every=4)
    return model, engine.run(batches)


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        data = shard(tiny_data(n=128, batch_size=16))  # 8 batches: 4 per rank
        for kind in FITNESSES:
            model, result = run(kind, data, checkpoint_path=Path(out) / f"{kind}-state-rank{rank}.pt")
            report = result.to_json(Path(out) / f"{kind}-report-rank{rank}.json")
            torch.save({"params": dict(model.named_parameters()), "history": result.history,
                        "num_examples": result.num_examples, "wrote": report is not None},
                       Path(out) / f"{kind}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_ranks_match_one_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    data = tiny_data(n=128, batch_size=16)
    for kind in FITNESSES:
        model, reference = run(kind, data)
        assert reference.best_index > 0  # the run moved away from the identity
        for rank in range(2):
            out = torch.load(tmp_path / f"{kind}-rank{rank}.pt", weights_only=False)
            assert out["history"] == reference.history, (kind, rank)
            assert out["num_examples"] == 128
            for name, p in model.named_parameters():
                assert torch.equal(out["params"][name], p), (kind, rank, name)
            assert out["wrote"] == (rank == 0)  # only rank 0 writes files
        assert (tmp_path / f"{kind}-state-rank0.pt").exists() and not (tmp_path / f"{kind}-state-rank1.pt").exists()
        assert (tmp_path / f"{kind}-report-rank0.json").exists()
