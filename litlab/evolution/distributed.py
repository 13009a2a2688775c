"""The few ``torch.distributed`` calls of the engine (no Lightning needed; a Lightning strategy's process group
is the default group, so the same code runs under ``trainer.fit`` with DDP).

Every rank evaluates the same candidate on its own shard of the selection set; sums and counts are
all-reduced, and per-batch outputs of a custom aggregate are gathered in rank order. All ranks therefore
tell the optimizer the same numbers and, with one seed, ask the same candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a default process group of more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shard(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """Share ``index`` of ``count`` of ``items`` (default: this rank's): ``items[index::count]``."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    return list(items[index::count])


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sums ``values`` over ranks (a no-op without a process group). NCCL gets a copy on the current GPU."""
    if not is_distributed():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else values.device
    reduced = values.to(device).clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(values.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
