"""`LanguageModel`: the training loop shared by litlab's causal language models (AU-Net and the Transformer LM).

Next-token cross-entropy; **bits per byte** as the metric that compares byte-level and BPE models on the same
text (sum of cross-entropy in bits over the targets / number of UTF-8 bytes those targets stand for, see the
``target_bytes`` field of the text batches); AdamW with betas (0.9, 0.95), weight decay 0.1 on matrices, warmup +
cosine, and optionally the AU-Net paper's compute-based learning-rate rule. Logged: loss, bits per byte, bytes/s
and tokens/s of training, FLOPs per byte (once, at fit start) and whatever per-stage statistics the model
reports (AU-Net: pooled vectors per stage, truncation rate).

Subclasses build the network in :meth:`build_model` and say how text becomes ids (:meth:`encode`); scoring
(:meth:`score`) and sampling (:meth:`generate`) are shared.
"""

from __future__ import annotations

import inspect
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import SumMetric

from litlab.errors import ConfigError
from litlab.lightning_modules.schedule import warmup_cosine
from litlab.models.lm.generation import Decoder, StepperDecoder
from litlab.models.lm.padding import right_pad
from litlab.models.lm.text_generation import generate_texts
from litlab.text.tokenizers import TextTokenizer

LN2 = math.log(2.0)


class LanguageModel(LightningModule):
    """Base class: subclasses define :meth:`build_model`, :meth:`encode`, :meth:`decode` and :meth:`flops_per_byte`.

    A subclass's ``__init__`` calls ``super().__init__(...)`` with the training arguments below, then
    ``self.save_hyperparameters()`` and ``self.model = self.build_model()``.

    Args:
        seq_len: Training window in tokens (linked from the datamodule by the CLI).
        lr: Peak learning rate (ignored when ``compute_budget`` is set).
        weight_decay: AdamW weight decay, applied to matrices and embeddings, not to norms.
        betas: AdamW betas.
        warmup_steps: Linear warmup length in optimizer steps.
        min_lr_ratio: Final learning rate of the cosine as a fraction of the peak.
        compute_budget: Training compute C in FLOPs; when set, the peak learning rate follows the paper's
            compute rule for this model family (and the batch size it recommends, in bytes for byte models
            and tokens for BPE, is logged).
        compile: Wrap the network in ``torch.compile`` for training.
    """

    #: Family name used by the compute-based rules (``aunet`` or ``bpe``).
    compute_family: str = "aunet"

    def __init__(
        self,
        *,
        seq_len: int,
        lr: float,
        weight_decay: float,
        betas: Sequence[float],
        warmup_steps: int,
        min_lr_ratio: float,
        compute_budget: float | None,
        compile: bool,
    ) -> None:
        super().__init__()
        _check("seq_len", seq_len, seq_len >= 1, ">= 1")
        _check("lr", lr, lr > 0, "> 0")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        _check("betas", betas, len(betas) == 2 and all(0 <= b < 1 for b in betas), "two numbers in [0, 1)")
        _check("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0")
        _check("min_lr_ratio", min_lr_ratio, 0 <= min_lr_ratio <= 1, "in [0, 1]")
        _check("compute_budget", compute_budget, compute_budget is None or compute_budget > 0, "None or > 0")
        self.model: nn.Module  # set by the subclass: ``self.save_hyperparameters(); self.model = self.build_model()``
        self.__dict__["_compiled"] = None  # not a submodule: the state dict keeps one copy of the weights
        for stage in ("val", "test"):
            setattr(self, f"{stage}_bits", SumMetric())
            setattr(self, f"{stage}_bytes", SumMetric())
        self._step_start: float | None = None

    def save_hyperparameters(self, *args: Any, frame: Any = None, **kwargs: Any) -> None:
        """Lightning's, keeping only the constructor's own arguments.

        The CLI links text-data attributes (``vocab_size``, ``tokenizer``...) into every model; a model without
        such an argument receives them as extra keys, which must not reach the checkpoint (LightningCLI
        rebuilds the model from the checkpoint's hyperparameters for ``validate``/``test --ckpt_path``).
        """
        super().save_hyperparameters(*args, frame=frame or inspect.currentframe().f_back, **kwargs)
        own = inspect.signature(type(self).__init__).parameters
        for key in [k for k in self.hparams if k not in own and not k.startswith("_")]:  # keep _class_path
            del self.hparams[key]
            self._hparams_initial.pop(key, None)

    # ------------------------------------------------------------------ to be defined by subclasses
    @abstractmethod
    def build_model(self) -> nn.Module:
        """Build the pure-PyTorch network from ``self.hparams``."""

    @property
    @abstractmethod
    def tokenizer(self) -> TextTokenizer:
        """The model's tokenizer (:mod:`litlab.text.tokenizers`): bytes, a litlab BPE or a Hugging Face one."""

    def encode(self, data: bytes) -> list[int]:
        """Token ids of ``data`` (no BOS/EOS)."""
        return self.tokenizer.encode(data)

    def decode(self, ids: Sequence[int]) -> bytes:
        """Bytes of token ids (special ids dropped)."""
        return self.tokenizer.decode(ids)

    @property
    def bos_id(self) -> int:
        """Id of the beginning-of-sequence token."""
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        """Id of the end-of-sequence token."""
        return self.tokenizer.eos_id

    @abstractmethod
    def flops_per_byte(self) -> float:
        """Training FLOPs (forward + backward) per byte of text at ``seq_len``."""

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The positional inputs of the network for a batch (``input_ids``; AU-Net adds ``levels``)."""
        return (batch["input_ids"],)

    def inputs_for_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Network inputs for a ``[B, T]`` tensor of ids that starts with BOS (used by :meth:`score`)."""
        return (ids,)

    def stage_stats(self) -> dict[str, torch.Tensor]:
        """Statistics of the last forward pass to log (tensors; no host sync)."""
        return {}

    # ------------------------------------------------------------------ forward and loss
    def network(self) -> nn.Module:
        """The network used for training: compiled when ``compile`` is set."""
        if self.hparams.compile and self.training:
            if self._compiled is None:
                self.__dict__["_compiled"] = torch.compile(self.model)
            return self._compiled
        return self.model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.network()(*inputs)

    def _token_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy in nats of every target, shape ``[B, T]`` (float32)."""
        logits = self(*self.model_inputs(batch))
        targets = batch["targets"]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._token_losses(batch)
        loss = losses.mean()
        nbytes = batch["target_bytes"].sum()
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/bpb", losses.sum().detach() / LN2 / nbytes, prog_bar=True, batch_size=bs)
        for name, value in self.stage_stats().items():
            self.log(f"train/{name}", value.float(), batch_size=bs)
        if self._step_start is not None:
            elapsed = max(time.perf_counter() - self._step_start, 1e-9)
            self.log("train/bytes_per_s", nbytes.float() / elapsed, batch_size=bs)
            self.log("train/tokens_per_s", float(batch["targets"].numel()) / elapsed, batch_size=bs)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        losses = self._token_losses(batch)
        bits, nbytes = losses.sum() / LN2, batch["target_bytes"].sum()
        getattr(self, f"{stage}_bits").update(bits)
        getattr(self, f"{stage}_bytes").update(nbytes.float())
        bs = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", losses.mean(), batch_size=bs, sync_dist=True)
        for name, value in self.stage_stats().items():
            self.log(f"{stage}/{name}", value.float(), batch_size=bs, sync_dist=True)

    def _log_bpb(self, stage: str) -> None:
        bits, nbytes = getattr(self, f"{stage}_bits"), getattr(self, f"{stage}_bytes")
        if nbytes.update_count == 0:
            return
        self.log(f"{stage}/bpb", bits.compute() / nbytes.compute(), prog_bar=True)
        bits.reset()
        nbytes.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_bpb("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_bpb("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Per window: bits of its targets and the bytes they stand for (bits per byte = their ratio)."""
        losses = self._token_losses(batch)
        return {"bits": losses.sum(dim=1) / LN2, "bytes": batch["target_bytes"].sum(dim=1)}

    # ------------------------------------------------------------------ scoring and sampling
    @torch.no_grad()
    def score(self, contexts: Sequence[bytes], continuations: Sequence[bytes], batch_size: int = 16) -> torch.Tensor:
        """Log-likelihood (nats) of each continuation given its context, the way likelihood-based benchmarks score.

        Each example is ``BOS + encode(context) + encode(continuation)``, cut from the left to ``seq_len`` ids;
        examples are right-padded with EOS to the batch's longest (causal models: padding never changes earlier
        logits).

        Args:
            contexts: Prompt bytes of each example.
            continuations: Candidate answer bytes of each example (non-empty).
            batch_size: Examples per forward pass.

        Returns:
            A float tensor of one log-likelihood per example.
        """
        if len(contexts) != len(continuations):
            raise ConfigError(f"score: {len(contexts)} contexts but {len(continuations)} continuations")
        was_training = self.training
        self.eval()
        out: list[float] = []
        for start in range(0, len(contexts), batch_size):
            rows, spans = [], []
            for ctx, cont in zip(contexts[start:start + batch_size], continuations[start:start + batch_size]):
                cont_ids = self.encode(cont)
                if not cont_ids:
                    raise ConfigError("score: an empty continuation cannot be scored")
                ids = [self.bos_id, *self.encode(ctx), *cont_ids][-(self.hparams.seq_len + 1):]
                rows.append(ids)
                spans.append(len(cont_ids))
            ids = right_pad(rows, self.eos_id).to(self.device)
            logits = self.next_token_logits(ids[:, :-1]).float()
            logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
            for i, (r, n) in enumerate(zip(rows, spans)):
                out.append(float(logp[i, len(r) - 1 - n: len(r) - 1].sum()))
        self.train(was_training)
        return torch.tensor(out)

    def next_token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, T, vocab]`` of the network for ids ``[B, T]`` (no BOS added; position ``t``
        predicts id ``t + 1``). Differentiable; wrap in ``torch.no_grad()`` to score."""
        return self.model(*self.inputs_for_ids(ids))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[B, T, dim]`` of ``ids [B, T]`` (the soft-input space of :meth:`logits_from_embeds`)."""
        raise ConfigError(f"{type(self).__name__} takes no soft inputs (its network reads ids)")

    def logits_from_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, T, vocab]`` for input embeddings ``[B, T, dim]`` (soft, e.g. relaxed tokens);
        ``logits_from_embeds(embed(ids))`` equals the logits of ``ids``."""
        raise ConfigError(f"{type(self).__name__} takes no soft inputs (its network reads ids)")

    def decoder(self, use_cache: bool = True) -> Decoder:
        """A fresh decoder of the network for :meth:`generate_batch` (one :class:`Stepper` per sequence here;
        models that can decode a ragged batch in one cache override it)."""
        return StepperDecoder(self.model, use_cache=use_cache, word_groups=self.hparams.get("word_groups", (1, 2, 4)))

    @torch.no_grad()
    def generate_batch(
        self,
        prompts: Sequence[bytes],
        max_new_bytes: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        num_return_sequences: int = 1,
        stop: Sequence[bytes] = (),
        prefix: bytes | None = None,
        reuse_prefix: bool = True,
        use_cache: bool = True,
        logits_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int | None = None,
    ) -> list[bytes]:
        """Continue many prompts in batches (KV-cached); see :func:`litlab.models.lm.text_generation.generate_texts`.

        Args:
            prompts: The prompts' bytes (BOS is put first, before ``prefix`` when given).
            max_new_bytes: Most bytes generated per continuation.
            temperature: 0 = greedy, else the sampling temperature.
            top_k: Keep the k most likely ids (``None``: all).
            top_p: Nucleus sampling mass (``None``: off).
            seed: Seed of the first continuation; continuation ``k`` (prompt-major) samples with ``seed + k``.
            num_return_sequences: Continuations per prompt (e.g. for self-consistency).
            stop: Stop strings (a continuation ends once it contains one; it is kept).
            prefix: Bytes shared by every prompt (a few-shot pre-prompt), computed once per batch.
            reuse_prefix: Compute ``prefix`` once (False: once per row; same output, slower).
            use_cache: KV caches; False recomputes a full forward per step (same output, slower).
            logits_hook: Applied to each step's next-id logits ``[rows, vocab]`` before picking (logit biases).
            batch_size: Continuations decoded together (default: all).

        Returns:
            ``len(prompts) * num_return_sequences`` continuations, prompt-major.
        """
        was_training = self.training
        self.eval()
        try:
            return generate_texts(
                lambda: self.decoder(use_cache), self.encode, self.decode, self.bos_id, self.eos_id, prompts,
                max_new_bytes=max_new_bytes, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                num_return_sequences=num_return_sequences, stop=stop, prefix=prefix, reuse_prefix=reuse_prefix,
                logits_hook=logits_hook, batch_size=batch_size)
        finally:
            self.train(was_training)

    def generate(
        self,
        prompt: bytes,
        max_new_bytes: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        use_cache: bool = True,
        logits_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
        stop_at: bytes | None = None,
    ) -> bytes:
        """Continue one ``prompt``: :meth:`generate_batch` of one prompt (same arguments; ``stop_at``: one stop
        string)."""
        return self.generate_batch([prompt], max_new_bytes, temperature, top_k, top_p, seed,
                                   stop=() if stop_at is None else (stop_at,), use_cache=use_cache,
                                   logits_hook=logits_hook)[0]

    # ------------------------------------------------------------------ logging and checkpoints
    def on_fit_start(self) -> None:
        fpb = self.flops_per_byte()
        params = sum(p.numel() for p in self.model.parameters())
        rank_zero_info(f"{type(self).__name__}: {params:,} parameters, {fpb:.4g} training FLOPs per byte")
        info: dict[str, Any] = {"total_params": params, "flops_per_byte": fpb}
        if self.hparams.compute_budget is not None:
            info["recommended_batch"], info["compute_lr"] = self.compute_rule()
            rank_zero_info(
                f"compute rule (C={self.hparams.compute_budget:.3g} FLOPs, {self.compute_family}): lr "
                f"{info['compute_lr']:.4g}, batch {info['recommended_batch']:.4g} ({'tokens' if self.compute_family == 'bpe' else 'bytes'})"
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        data_len = getattr(datamodule, "seq_len", None)
        if data_len is not None and data_len > self.hparams.seq_len:
            raise ConfigError(
                f"data.seq_len={data_len} is longer than the model's seq_len={self.hparams.seq_len}; "
                "set model.init_args.seq_len (the CLI links it from the data)"
            )
        if self.logger is not None:
            self.logger.log_hyperparams(info)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["litlab_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    # ------------------------------------------------------------------ optimization
    def compute_rule(self) -> tuple[float, float]:
        """(recommended batch size, learning rate) from the paper's compute-based rules at ``compute_budget``."""
        from litlab.models.lm.accounting import compute_hparams

        rule = compute_hparams(self.hparams.compute_budget, model=self.compute_family)
        return rule["batch_size"], rule["lr"]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = hp.lr
        if hp.compute_budget is not None:
            lr = self.compute_rule()[1]
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas), fused=fused)
        total = int(self.trainer.estimated_stepping_batches)
        if hp.warmup_steps >= total:
            rank_zero_warn(f"warmup_steps={hp.warmup_steps} >= the {total} training steps: the cosine never starts")
        scheduler = warmup_cosine(optimizer, hp.warmup_steps, total, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not allowed: must be {allowed}")
