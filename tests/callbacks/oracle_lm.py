"""`OracleLM`: a stand-in language model for EPPO's callback tests whose accuracy depends on the pre-prompt.

It answers a question right exactly when a demonstration of the pre-prompt has a final answer ending in the
same digit as the question's answer, so pre-prompts whose answers cover more last digits are better: a
fitness with a real signal, computed in microseconds. With ``temperature > 0``, sample ``k`` of a call (row
``k`` of ``generate_batch``'s output) flips right and wrong with probability 0.3, drawn from
``random.Random(seed + k)``: the seeding that litlab's own ``generate_batch`` has. A LightningModule (one
dummy parameter) so that it trains for one step and runs under DDP.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule
from torch import nn

from litlab.text.gsm8k import MathProblem


class OracleLM(LightningModule):
    """Answers from a table of questions; right iff the pre-prompt covers the answer's last digit."""

    def __init__(self, problems: Sequence[MathProblem]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.answers = {p.question: p.answer for p in problems}
        self.calls = 0
        self.fail_at: int | None = None

    def encode(self, data: bytes) -> list[int]:
        return list(data)

    def training_step(self, batch, batch_idx):
        return self.weight ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def generate_batch(self, prompts: Sequence[bytes], max_new_bytes: int = 256, temperature: float = 0.0,
                       seed: int = 0, num_return_sequences: int = 1, stop: Sequence[bytes] = (),
                       prefix: bytes | None = None, reuse_prefix: bool = True, batch_size: int | None = None,
                       **kwargs) -> list[bytes]:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("interrupted")
        digits = {line[5:].strip()[-1] for line in (prefix or b"").decode().splitlines() if line.startswith("#### ")}
        out = []
        for i, prompt in enumerate(prompts):
            question = prompt.decode()[len("Question: "):-len("\nAnswer:")]
            answer = self.answers[question]
            for j in range(num_return_sequences):
                right = answer[-1] in digits
                if temperature > 0:
                    right ^= random.Random(seed + i * num_return_sequences + j).random() < 0.3
                out.append(f" So the answer follows.\n#### {answer if right else answer + '1'}\n\n".encode())
        return out
