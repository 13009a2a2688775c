"""Learning-rate schedule shared by litlab's LightningModules: linear warmup, then cosine decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup from 0 to the base learning rate, then cosine decay to ``min_lr_ratio`` times it.

    Args:
        optimizer: The optimizer whose parameter groups are scheduled (per optimizer step).
        warmup_steps: Number of warmup steps (0 for none).
        total_steps: Total number of optimizer steps of the run; the cosine ends there.
        min_lr_ratio: Final learning rate as a fraction of the base learning rate.

    Returns:
        A ``LambdaLR`` to be stepped once per optimizer step.
    """
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(total_steps, warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
