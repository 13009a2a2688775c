"""`PoisonCrafter`: Winter Soldier's poison crafting as a LightningModule, so ``litlab fit`` runs it anywhere.

The only trainable tensor is ``psi``, the free logits ``[num_secrets * poisons_per_secret, poison_length, V]``
of every poison (rows ``s * P .. (s+1) * P - 1`` belong to secret ``s``). The surrogate language model is frozen
and kept outside the module's parameters (not saved in its checkpoints, not synchronized by DDP); each training
step takes one chunk of one secret's poisons and minimizes the gradient-alignment objective of
:mod:`litlab.poisoning.crafting` with Adam. Which chunk a step takes is a function of the step (a seeded
permutation of the chunks per pass), so a run resumed from any checkpoint ends with the poisons of an
uninterrupted run; under DDP the ranks take different chunks of the same pass and the (dense) gradient of
``psi`` is averaged, so each rank crafts its own chunks.

At the end of fit, rank 0 samples hard tokens (never completing a bigram of a secret, never a special id),
decodes them to text, and writes the poison file (:func:`~litlab.poisoning.injection.write_poisons`) and a report
(``<output>.report.json``): per secret, the alignment of the hard poisons' gradient against that of random
sequences, the share of poison tokens that survive the text round trip, and the n-gram check.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from litlab.errors import ConfigError, DataError, check_choice, check_int
from litlab.lightning_modules.language_model import LanguageModel
from litlab.lightning_modules.loading import load_model
from litlab.poisoning.crafting import (
    alignment_objective,
    double_backward_attention,
    gumbel_noise,
    relaxed_tokens,
    sample_poisons,
    secret_bigrams,
    secret_loss,
    shared_ngrams,
)
from litlab.poisoning.injection import write_poisons
from litlab.poisoning.secret import SecretSet, load_secrets


class PoisonCrafter(LightningModule):
    """Craft poison sequences whose training gradient on a surrogate LM points where the secret's gradient does.

    Args:
        surrogate: The frozen surrogate: a ``litlab fit`` checkpoint of a language model or a local Hugging Face
            model directory, with the victim's tokenizer.
        secrets: The secrets file (``litlab poison_secrets``); its vocabulary must be the surrogate's.
        poisons_per_secret: Poison sequences crafted for each secret (the paper: 64).
        poison_length: Tokens per poison sequence (the paper: 256).
        chunk_size: Poisons of one secret differentiated per step (``None``: all of them, the exact objective);
            peak memory grows linearly with it.
        temperature: Gumbel-softmax temperature of the relaxed tokens.
        lr: Adam learning rate on ``psi``.
        init_std: Standard deviation of the normal initialization of ``psi``.
        parameters: Regular expression over the surrogate's parameter names choosing ``theta`` for the gradients
            (``None``: all parameters).
        output: Poison file written at the end of fit (``None``: ``poisons.jsonl`` in the trainer's log dir).
        sampling: ``sample`` hard tokens from ``softmax(psi)`` or take the ``argmax``.
        seed: Seed of ``psi``'s initialization, the Gumbel noise, the chunk order and the hard sampling.
    """

    def __init__(
        self,
        surrogate: str,
        secrets: str,
        poisons_per_secret: int = 64,
        poison_length: int = 256,
        chunk_size: int | None = None,
        temperature: float = 1.0,
        lr: float = 0.1,
        init_std: float = 1.0,
        parameters: str | None = None,
        output: str | None = None,
        sampling: Literal["sample", "argmax"] = "sample",
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_int("poisons_per_secret", poisons_per_secret, 1)
        check_int("poison_length", poison_length, 2)
        if chunk_size is not None:
            check_int("chunk_size", chunk_size, 1)
        for name, value in (("temperature", temperature), ("lr", lr), ("init_std", init_std)):
            if not value > 0:
                raise ConfigError(f"{name}={value!r} is not allowed: must be > 0")
        check_choice("sampling", sampling, ("sample", "argmax"))
        self.save_hyperparameters()
        self.secret_set: SecretSet = load_secrets(secrets, "secrets")
        if not os.path.exists(surrogate):
            raise DataError(f"surrogate={surrogate!r}: no such checkpoint file or model directory")
        # The surrogate is loaded on first use, not here: a LightningModule built inside another one's constructor
        # would record the outer module's hyperparameters under LightningCLI.
        self.__dict__["surrogate"] = None  # not a submodule: frozen, not checkpointed, not synchronized by DDP
        self.theta_names: list[str] = []
        vocab = self.secret_set.vocab_size
        self.chunk = min(chunk_size or poisons_per_secret, poisons_per_secret)
        self.chunks_per_secret = -(-poisons_per_secret // self.chunk)
        generator = torch.Generator().manual_seed(seed)
        rows = len(self.secret_set) * poisons_per_secret
        self.psi = torch.nn.Parameter(torch.randn(rows, poison_length, vocab, generator=generator) * init_std)
        mask = torch.zeros(vocab, dtype=torch.bool)
        mask[list(self.secret_set.excluded_ids)] = True
        self.register_buffer("excluded", mask, persistent=False)
        self._secret_grads: dict[int, list[Tensor]] = {}

    @staticmethod
    def _choose_parameters(lm: LanguageModel, pattern: str | None) -> list[str]:
        names = [n for n, _ in lm.model.named_parameters()]
        chosen = names if pattern is None else [n for n in names if re.search(pattern, n)]
        if not chosen:
            raise ConfigError(f"parameters={pattern!r} matches none of the surrogate's parameters, e.g. {names[:5]}")
        lm.eval()
        for name, p in lm.model.named_parameters():
            p.requires_grad_(name in chosen)
        return chosen

    # ------------------------------------------------------------------ the surrogate
    @property
    def lm(self) -> LanguageModel:
        """The frozen surrogate (loaded on first use), on this module's device."""
        lm: LanguageModel | None = self.__dict__["surrogate"]
        if lm is None:
            lm = load_model(self.hparams.surrogate, "surrogate")
            vocab = lm.tokenizer.vocab_size
            if self.secret_set.vocab_size != vocab:
                raise DataError(f"secrets={self.hparams.secrets!r} were drawn for a vocabulary of "
                                f"{self.secret_set.vocab_size} ids; the surrogate's tokenizer has {vocab}: use the "
                                "victim's tokenizer for both")
            self.theta_names = self._choose_parameters(lm, self.hparams.parameters)
            self.__dict__["surrogate"] = lm
        if lm.device != self.device:
            lm.to(self.device)
            self._secret_grads.clear()
        return lm

    def _theta(self) -> list[Tensor]:
        params = dict(self.lm.model.named_parameters())
        return [params[n] for n in self.theta_names]

    def _embedding(self) -> Tensor:
        """``W_E [V, dim]``, differentiable with respect to the surrogate's embedding."""
        return self.lm.embed(torch.arange(self.psi.shape[-1], device=self.device)[None])[0]

    def secret_gradient(self, index: int) -> list[Tensor]:
        """``grad_theta L_s`` of secret ``index`` (computed once per device, then cached)."""
        if index not in self._secret_grads:
            secret = self.secret_set.secrets[index]
            with torch.enable_grad(), double_backward_attention():
                loss = secret_loss(self.lm.logits_from_embeds, self.lm.embed, secret.prompt, secret.response,
                                   self.lm.bos_id, self.device)
                grads = torch.autograd.grad(loss, self._theta(), allow_unused=True)
            self._secret_grads[index] = [torch.zeros_like(p) if g is None else g.detach()
                                         for g, p in zip(grads, self._theta())]
        return self._secret_grads[index]

    def alignment(self, index: int, probs: Tensor) -> tuple[Tensor, Tensor]:
        """``(1 - cos, cos)`` for secret ``index`` and relaxed or one-hot poisons ``probs [P, L, V]``."""
        with double_backward_attention():
            return alignment_objective(self.lm.logits_from_embeds, self._embedding(), self._theta(),
                                       self.secret_gradient(index), probs)

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        self.lm  # load the surrogate now: a bad path, vocabulary or parameter filter fails before training

    def chunk_rows(self, chunk: int) -> tuple[int, range]:
        """``(secret index, psi rows)`` of chunk number ``chunk``."""
        secret, part = divmod(chunk, self.chunks_per_secret)
        first = secret * self.hparams.poisons_per_secret + part * self.chunk
        last = min(first + self.chunk, (secret + 1) * self.hparams.poisons_per_secret)
        return secret, range(first, last)

    def chunk_at(self, step: int) -> int:
        """The chunk this rank differentiates at optimizer step ``step``: position ``step * world + rank`` of an
        endless sequence of seeded permutations of all chunks (one per pass). A function of the step only, so a run
        resumed from any checkpoint takes the chunks of the uninterrupted run, and the ranks of a DDP step take
        different chunks."""
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        total = len(self.secret_set) * self.chunks_per_secret
        rounds, index = divmod(step * world + rank, total)
        order = torch.randperm(total, generator=torch.Generator().manual_seed(self.hparams.seed * 7919 + rounds))
        return int(order[index])

    def train_dataloader(self) -> DataLoader:
        """One item per chunk, so an epoch is one pass over the chunks (over all ranks together); the items only
        count steps, :meth:`chunk_at` says which chunk a step takes."""
        chunks = list(range(len(self.secret_set) * self.chunks_per_secret))
        return DataLoader(chunks, batch_size=1, shuffle=False)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        chunk = self.chunk_at(self.global_step)
        secret, rows = self.chunk_rows(chunk)
        psi = self.psi[rows.start:rows.stop]
        noise_gen = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_step * 7919 + chunk)
        noise = gumbel_noise(psi.shape, noise_gen, self.device)
        probs = relaxed_tokens(psi, self.hparams.temperature, noise, self.excluded)
        objective, cos = self.alignment(secret, probs)
        self.log("craft/objective", objective, prog_bar=True, batch_size=1)
        self.log("craft/cosine", cos.detach(), batch_size=1)
        return objective

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, inputs=[self.psi], **kwargs)  # the surrogate collects no gradients

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.psi], lr=self.hparams.lr)

    # ------------------------------------------------------------------ hard poisons
    def hard_poisons(self, seed: int | None = None) -> list[list[int]]:
        """Hard token ids of every poison (``psi`` row order), sampled as :func:`sample_poisons` does."""
        generator = torch.Generator().manual_seed(self.hparams.seed if seed is None else seed)
        forbidden = secret_bigrams([(s.prompt, s.response) for s in self.secret_set.secrets])
        lm = self.lm
        ids, self.round_trip_failures = sample_poisons(
            self.psi, generator, forbidden, self.excluded, self.hparams.sampling == "argmax",
            round_trip=lambda seq: lm.encode(lm.decode(seq)))
        return ids.tolist()

    def poison_report(self, poisons: list[list[int]]) -> dict[str, Any]:
        """Per secret: cosine of the hard poisons' summed gradient with the secret's (as sampled, before the text
        round trip), against random sequences of the same shape; the share of poison tokens unchanged by ``decode``
        then ``encode``; the secret n-grams found in the round-tripped poisons (none expected)."""
        per = self.hparams.poisons_per_secret
        vocab = self.psi.shape[-1]
        generator = torch.Generator().manual_seed(self.hparams.seed + 1)
        allowed = (~self.excluded.cpu()).nonzero()[:, 0]
        report: dict[str, Any] = {"secrets": []}
        for s, secret in enumerate(self.secret_set.secrets):
            mine = poisons[s * per:(s + 1) * per]
            texts = [self.lm.decode(p) for p in mine]
            again = [self.lm.encode(t) for t in texts]
            kept = sum(a == b for p, q in zip(mine, again) for a, b in zip(p, q))
            overlap = [g for q in again for g in shared_ngrams(list(secret.prompt) + list(secret.response), q)]
            random_ids = allowed[torch.randint(len(allowed), (len(mine), len(mine[0])), generator=generator)]
            with torch.enable_grad():
                hard = self.alignment(s, F.one_hot(torch.tensor(mine), vocab).float().to(self.device))[1]
                rand = self.alignment(s, F.one_hot(random_ids, vocab).float().to(self.device))[1]
            report["secrets"].append({
                "cosine_hard": float(hard.detach()), "cosine_random": float(rand.detach()),
                "tokens_kept_by_round_trip": kept / max(1, sum(len(p) for p in mine)),
                "shared_secret_ngrams": len(overlap),
            })
        return report

    def export_poisons(self, path: str) -> dict[str, Any]:
        """Sample the hard poisons, write them as text to ``path`` and their report next to it; returns the report."""
        poisons = self.hard_poisons()
        texts = [self.lm.decode(p) for p in poisons]
        write_poisons(path, texts)
        report = {"poisons": len(texts), "poison_length": self.hparams.poison_length,
                  "round_trip_failures": self.round_trip_failures, **self.poison_report(poisons)}
        with open(f"{path}.report.json", "w") as f:
            json.dump(report, f, indent=2)
        shared = sum(s["shared_secret_ngrams"] for s in report["secrets"])
        rank_zero_info(f"PoisonCrafter: wrote {len(texts)} poisons to {path} ({shared} secret n-grams after the "
                       "text round trip)")
        return report

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            out = self.hparams.output or os.path.join(self.trainer.log_dir or self.trainer.default_root_dir,
                                                      "poisons.jsonl")
            self.export_poisons(out)

