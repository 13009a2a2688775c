"""A toy "reasoner" for the BBoxER tests: a LightningModule whose answers depend on its norm and linear weights.

It knows every reference answer but writes it only when its *skill* on the problem's channel clears the
problem's threshold: skill = (product of the norm scales at channel ``c``) × (mean |row c| of the block linear
weights, relative to its initial value). Each problem gets a channel and a threshold in [0.9, 1.1] from a hash of
its question, so the unmodified model solves about half of the problems and scaling the right tensors up solves
more: a fitness with a real signal for every place where x acts, computed in microseconds (no decoding). Its
``generate_batch`` has the signature of :meth:`LanguageModel.generate_batch`; its score is a loss that falls
with skill (for the audit code paths).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litlab.text.gsm8k import MathProblem

DIM = 6


class ToyReasoner(LightningModule):
    """Answers the problems of ``problems`` correctly where its weights give it the skill (see the module doc)."""

    def __init__(self, problems: Sequence[MathProblem], dim: int = DIM) -> None:
        super().__init__()
        self.answers = {p.question: p.answer for p in problems}
        self.dim = dim
        self.embed = nn.Embedding(4, dim)  # trained by the dummy fit; no part of the skill
        self.blocks = nn.ModuleList(nn.ModuleDict({"norm": nn.LayerNorm(dim), "fc": nn.Linear(dim, dim, bias=False)})
                                    for _ in range(2))
        self.final_norm = nn.LayerNorm(dim)
        with torch.no_grad():
            self.embed.weight.copy_(torch.linspace(-1, 1, 4 * dim).view(4, dim))
            for block in self.blocks:
                block["fc"].weight.copy_(torch.eye(dim) + 0.1)
        self.register_buffer("row_scale", torch.stack([b["fc"].weight.abs().mean(1) for b in self.blocks]).detach())
        self.calls = 0

    def skill(self) -> torch.Tensor:
        norms = self.final_norm.weight * torch.stack([b["norm"].weight for b in self.blocks]).prod(0)
        rows = torch.stack([b["fc"].weight.abs().mean(1) for b in self.blocks]) / self.row_scale
        return norms * rows.prod(0)

    @staticmethod
    def channel_and_threshold(question: str, dim: int) -> tuple[int, float]:
        h = zlib.crc32(question.encode())
        return h % dim, 0.9 + 0.2 * ((h // dim) % 101) / 100

    def generate_batch(self, prompts: Sequence[bytes], max_new_bytes: int = 256, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                       num_return_sequences: int = 1, stop: Sequence[bytes] = (), prefix: bytes | None = None,
                       reuse_prefix: bool = True, use_cache: bool = True, logits_hook=None,
                       batch_size: int | None = None) -> list[bytes]:
        self.calls += 1
        skill = self.skill()
        out = []
        for prompt in prompts:
            question = prompt.decode().removeprefix("Question: ").removesuffix("\nAnswer:")
            channel, threshold = self.channel_and_threshold(question, self.dim)
            answer = self.answers[question]
            said = answer if float(skill[channel]) > threshold else answer + "7"
            out.extend([f" Let me think.\n#### {said}\n\n".encode()] * num_return_sequences)
        return out

    def score(self, contexts: Sequence[bytes], continuations: Sequence[bytes], batch_size: int = 16) -> torch.Tensor:
        skill = self.skill()
        values = []
        for context, continuation in zip(contexts, continuations, strict=True):
            question = context.decode().removeprefix("Question: ").removesuffix("\nAnswer:")
            channel, _ = self.channel_and_threshold(question, self.dim)
            values.append(-len(continuation) / float(skill[channel]))
        return torch.tensor(values)

    def training_step(self, batch, batch_idx):
        return self.embed(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.embed.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, dtype=torch.long)), batch_size=4)
