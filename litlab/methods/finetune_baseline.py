"""The gradient baseline of BBoxER's privacy audit: a copy of a language model fine-tuned by AdamW on the same
training problems, to compare membership leakage at similar accuracy (arXiv 2507.01752 contrasts the two).

With ``stop``, the run ends at the first check (every ``check_every`` steps) where
``stop(model)`` is true, e.g. once its accuracy on the training problems reaches that of BBoxER's result: the two
are then compared at similar accuracy on the same problems, a rule that reads no held-out data.

Each problem is one sequence ``BOS + "Question: ...\\nAnswer: <solution>\\n#### N\\n\\n"`` (the few-shot format of
:func:`litlab.text.gsm8k.format_demonstration`, cut to the model's ``seq_len``); the loss is next-token
cross-entropy over every position but the padding. Epochs are seeded permutations of the problems, so the run
is a function of ``seed``. The original model is left unchanged.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from litlab.errors import ConfigError, check_int
from litlab.models.lm.padding import right_pad
from litlab.text.gsm8k import MathProblem, format_demonstration

IGNORE = -100


def gradient_finetune(
    lm: Any,
    problems: Sequence[MathProblem],
    steps: int = 24,
    lr: float = 3e-4,
    batch_size: int = 16,
    seed: int = 0,
    stop: Callable[[Any], bool] | None = None,
    check_every: int = 4,
) -> tuple[Any, dict[str, Any]]:
    """A fine-tuned copy of ``lm`` and a summary (``steps`` taken, ``losses`` per step, ``stopped``, ``seconds``).

    Args:
        lm: A :class:`~litlab.lightning_modules.language_model.LanguageModel` (copied; not changed).
        problems: The training problems.
        steps: AdamW steps.
        lr: Learning rate (constant, no weight decay).
        batch_size: Problems per step.
        seed: Seed of the order of the problems.
        stop: ``stop(model) -> bool`` checked every ``check_every`` steps (in eval mode; at least one block of
            steps is taken); the run ends when it is true. None: all ``steps``.
        check_every: Steps between two checks of ``stop``.
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_int("check_every", check_every, 1)
    if not (isinstance(lr, int | float) and 0 < lr < float("inf")):
        raise ConfigError(f"lr={lr!r} is not allowed: it must be a positive finite number")
    if not problems:
        raise ConfigError("gradient_finetune needs at least one training problem")
    start = time.perf_counter()
    model = copy.deepcopy(lm)
    limit = int(model.hparams.seq_len) + 1
    rows = [[model.bos_id, *model.encode(format_demonstration(p).encode())][:limit] for p in problems]
    rng = np.random.RandomState(seed)
    order: list[int] = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    stopped = False
    for step in range(steps):
        if stop is not None and step and step % check_every == 0 and _check(model, stop):
            stopped = True
            break
        model.train()
        while len(order) < batch_size:
            order.extend(rng.permutation(len(rows)).tolist())
        chosen, order = order[:batch_size], order[batch_size:]
        batch = [rows[i] for i in chosen]
        ids = right_pad(batch, model.eos_id).to(model.device)
        targets = ids[:, 1:].clone()
        for i, row in enumerate(batch):
            targets[i, len(row) - 1:] = IGNORE
        logits = model.next_token_logits(ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    if stop is not None and not stopped and len(losses) % check_every == 0:
        stopped = _check(model, stop)
    model.eval()
    model.zero_grad(set_to_none=True)
    return model, {"steps": len(losses), "max_steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
                   "losses": losses, "stopped": stopped, "seconds": time.perf_counter() - start}


def _check(model: Any, stop: Callable[[Any], bool]) -> bool:
    model.eval()
    with torch.no_grad():
        return bool(stop(model))
