"""Tiny models and data for the evolution tests (one torch thread: the machine's 2 cores are shared)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """A 2-block MLP with LayerNorms, named like a transformer (``blocks.i.mlp.fc2.weight``)."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm": nn.LayerNorm(dim),
            "mlp": nn.ModuleDict({"fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim)}),
        }) for _ in range(2))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            mlp = block["mlp"]
            x = x + mlp["fc2"](torch.relu(mlp["fc1"](block["norm"](x))))
        return self.head(x)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().to(dtype)


def tiny_data(n: int = 128, batch_size: int = 32, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=generator)
    y = x[:, :3].argmax(-1)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def accuracy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return (model(x).argmax(-1) == y).float()
