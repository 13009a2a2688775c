"""`MoEImageClassifier`: a timm ViT or ConvNeXt, dense or with mixture-of-experts MLPs, trained with Lightning.

The model itself is built by :func:`litlab.models.vision.surgery.create_model` (pure PyTorch); this module adds the
loss (cross-entropy with label smoothing, or BCE as in DeiT III), the MoE auxiliary losses, mixup/cutmix,
top-1/top-5 metrics, AdamW or LAMB with warmup + cosine, and logging of router statistics per MoE layer.
An exponential moving average of the weights is Lightning's ``EMAWeightAveraging`` callback (see the configs).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from torchmetrics.classification import MulticlassAccuracy

from litlab.errors import ConfigError
from litlab.lightning_modules.schedule import warmup_cosine
from litlab.models.moe import collect_aux_loss, moe_layers
from litlab.models.vision.accounting import summarize
from litlab.models.vision.surgery import create_model


class MoEImageClassifier(LightningModule):
    """Image classifier on a timm backbone whose chosen MLPs are mixtures of experts.

    Args:
        model_name: timm model name, e.g. ``vit_small_patch16_224``, ``convnext_tiny``, ``test_vit``.
        num_classes: Number of classes (linked from the datamodule by the CLI).
        img_size: Input resolution (linked from the datamodule by the CLI).
        in_chans: Input channels (linked from the datamodule by the CLI).
        num_experts: Experts per MoE layer; 0 gives the dense timm model.
        top_k: Experts each token is routed to (1 <= top_k <= num_experts).
        placement: Which blocks get an MoE: ``last-n`` or ``every-n`` (V-MoE semantics), ``all``, ``none``,
            or an explicit list of block indices.
        placement_scope: For hierarchical models (ConvNeXt): count blocks over all stages (``global``) or
            apply the placement rule inside each stage (``per-stage``).
        router: Router type: ``linear`` (no bias), ``cosine`` (learned temperature) or ``mlp``.
        expert_activation: Expert MLP: ``gelu`` (like timm's Mlp) or ``swiglu``.
        expert_width: ``full`` (each expert as wide as the dense MLP) or ``split`` (dense width split across experts).
        renormalize: Renormalise the combine weights over the chosen top-k experts.
        router_noise: Std of training-time router noise in units of 1/num_experts (V-MoE: 1.0); 0 disables it.
        capacity_factor: Expert capacity during training (None: dropless).
        eval_capacity_factor: Expert capacity during evaluation (None: dropless).
        batch_priority: Batch-priority routing (V-MoE) when tokens are dropped.
        load_balance_weight: Weight of the Switch/GShard load-balancing loss.
        importance_weight: Weight of the V-MoE importance loss.
        load_weight: Weight of the V-MoE load loss (needs router_noise > 0).
        z_loss_weight: Weight of the router z-loss.
        expert_init: ``scratch`` (independent experts) or ``identical`` (all experts equal at init).
        upcycle: Initialise each MoE from the dense MLP it replaces (every expert a copy of it).
        init_checkpoint: Optional path to weights to start from (a Lightning ``.ckpt`` of this module or a plain
            timm ``state_dict``): a dense checkpoint is loaded before MoE surgery (with ``upcycle``: sparse
            upcycling of a trained dense model); an MoE checkpoint after it (fine-tuning, e.g. 21k -> 1k). A
            classifier of another size keeps its fresh initialisation.
        model_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``patch_size``, ``depth``,
            ``embed_dim``, ``conv_mlp``).
        loss: ``ce`` (softmax cross-entropy) or ``bce`` (binary cross-entropy on one-hot targets, DeiT III).
        label_smoothing: Label smoothing of the targets.
        optimizer: ``adamw`` or ``lamb`` (timm's implementations; no weight decay on norms, biases, tokens).
        lr: Peak learning rate.
        weight_decay: Weight decay.
        betas: Adam betas.
        warmup_epochs: Linear warmup length in epochs (fractions allowed).
        min_lr_ratio: Final learning rate of the cosine as a fraction of ``lr``.
        mixup_alpha: Mixup alpha (0 disables mixup).
        cutmix_alpha: CutMix alpha (0 disables CutMix).
        mixup_prob: Probability of applying mixup or CutMix to a batch.
        drop_path_rate: Stochastic depth rate.
        log_router_stats: Log router statistics (load per expert, dead experts, entropy, dropped) per MoE layer.
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224",
        num_classes: int = 1000,
        img_size: int = 224,
        in_chans: int = 3,
        num_experts: int = 0,
        top_k: int = 2,
        placement: str | list[int] = "last-2",
        placement_scope: Literal["global", "per-stage"] = "global",
        router: Literal["linear", "cosine", "mlp"] = "linear",
        expert_activation: Literal["gelu", "swiglu"] = "gelu",
        expert_width: Literal["full", "split"] = "full",
        renormalize: bool = False,
        router_noise: float = 0.0,
        capacity_factor: float | None = None,
        eval_capacity_factor: float | None = None,
        batch_priority: bool = False,
        load_balance_weight: float = 0.01,
        importance_weight: float = 0.0,
        load_weight: float = 0.0,
        z_loss_weight: float = 0.0,
        expert_init: Literal["scratch", "identical"] = "scratch",
        upcycle: bool = False,
        init_checkpoint: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        loss: Literal["ce", "bce"] = "ce",
        label_smoothing: float = 0.1,
        optimizer: Literal["adamw", "lamb"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        drop_path_rate: float = 0.0,
        log_router_stats: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_training_args(self.hparams)
        moe = None
        if num_experts > 0:
            moe = {
                "num_experts": num_experts, "top_k": top_k, "router": router, "activation": expert_activation,
                "expert_width": expert_width, "renormalize": renormalize, "router_noise": router_noise,
                "capacity_factor": capacity_factor, "eval_capacity_factor": eval_capacity_factor,
                "batch_priority": batch_priority, "load_balance_weight": load_balance_weight,
                "importance_weight": importance_weight, "load_weight": load_weight, "z_loss_weight": z_loss_weight,
                "init": expert_init,
            }
        self.model = create_model(
            model_name, num_classes=num_classes, img_size=img_size, in_chans=in_chans, moe=moe,
            placement=placement, placement_scope=placement_scope, upcycle=upcycle,
            init_checkpoint=init_checkpoint, drop_path_rate=drop_path_rate, **(model_kwargs or {}),
        )
        self.moe_blocks: list[str] = list(getattr(self.model, "moe_blocks", []))
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                label_smoothing=label_smoothing, num_classes=num_classes,
            )
        top5 = min(5, num_classes)
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1)
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1)
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top5)
        self.test_top1 = MulticlassAccuracy(num_classes, top_k=1)
        self.test_top5 = MulticlassAccuracy(num_classes, top_k=top5)
        self._summary: dict[str, Any] | None = None
        if next(self.model.parameters()).device.type != "meta":
            self.summary()  # a forward pass on the meta device: shape mistakes in the config surface here

    # ------------------------------------------------------------------ model
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def summary(self) -> dict[str, Any]:
        """Total and activated parameters, FLOPs per image and the MoE block list (computed once)."""
        if self._summary is None:
            hp = self.hparams
            try:
                self._summary = summarize(self.model, img_size=hp.img_size, in_chans=hp.in_chans)
            except (AssertionError, RuntimeError, ValueError) as err:
                raise ConfigError(
                    f"model_name={hp.model_name!r} with model_kwargs={hp.model_kwargs!r} cannot take images of "
                    f"img_size={hp.img_size}, in_chans={hp.in_chans}: {err}"
                ) from err
        return self._summary

    def moe_layers(self) -> dict[str, Any]:
        """The MoE layers of the model, keyed by the name of the MLP they replace (e.g. ``blocks.9.mlp``)."""
        return {name.removesuffix(".moe"): moe for name, moe in moe_layers(self.model).items()}

    def on_fit_start(self) -> None:
        info = self.summary()
        rank_zero_info(
            f"{type(self).__name__}: {info['total_params']:,} parameters, {info['activated_params']:,} activated "
            f"per token, {info['flops_per_image'] / 1e9:.4g} GFLOPs per image, "
            f"MoE blocks: {', '.join(self.moe_blocks) or 'none'}"
        )
        if self.logger is not None:
            self.logger.log_hyperparams({
                "moe_blocks": ",".join(self.moe_blocks) or "none",
                "total_params": info["total_params"],
                "activated_params": info["activated_params"],
                "flops_per_image": info["flops_per_image"],
            })

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["moe_blocks"] = self.moe_blocks

    # ------------------------------------------------------------------ losses
    def _task_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy or BCE; ``targets`` are class indices or (mixed, smoothed) soft targets."""
        hp = self.hparams
        if targets.dtype == torch.long:
            if hp.loss == "ce":
                return F.cross_entropy(logits, targets, label_smoothing=hp.label_smoothing)
            off = hp.label_smoothing / hp.num_classes
            targets = torch.full_like(logits, off).scatter_(1, targets[:, None], 1.0 - hp.label_smoothing + off)
        if hp.loss == "ce":
            return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        targets: torch.Tensor = labels
        if self.mixup is not None and images.shape[0] % 2 == 0:
            images, targets = self.mixup(images, labels)
        logits = self.model(images)
        task_loss = self._task_loss(logits, targets)
        aux_loss = collect_aux_loss(self.model)
        loss = task_loss + aux_loss
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/task_loss", task_loss, batch_size=bs)
        if self.moe_blocks:
            self.log("train/aux_loss", aux_loss, batch_size=bs)
            if self.hparams.log_router_stats:
                self._log_router_stats("train", bs)
        if targets is labels:
            self.train_top1(logits, labels)
            self.log("train/top1", self.train_top1, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _log_router_stats(self, stage: str, batch_size: int) -> None:
        for name, moe in self.moe_layers().items():
            stats = moe.stats
            share = stats.tokens_per_expert
            key = f"router/{name.replace('.', '_')}"
            self.log_dict({
                f"{key}/max_load": share.max() * share.numel(),
                f"{key}/min_load": share.min() * share.numel(),
                f"{key}/dead_experts": float(stats.dead_experts),
                f"{key}/entropy": float(stats.entropy),
                f"{key}/dropped_frac": stats.dropped_tokens / max(1, stats.num_tokens * moe.top_k),
            }, batch_size=batch_size, on_step=stage == "train", on_epoch=stage != "train", sync_dist=stage != "train")

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = self._task_loss(logits, labels)
        top1, top5 = (self.val_top1, self.val_top5) if stage == "val" else (self.test_top1, self.test_top5)
        top1(logits, labels)
        top5(logits, labels)
        bs = images.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=bs, sync_dist=True)
        self.log(f"{stage}/top1", top1, prog_bar=True, batch_size=bs)
        self.log(f"{stage}/top5", top5, batch_size=bs)
        if self.moe_blocks and self.hparams.log_router_stats:
            self._log_router_stats(stage, bs)
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self.model(images).softmax(dim=-1)
        conf, pred = probs.max(dim=-1)
        return {"pred": pred, "confidence": conf}

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = create_optimizer_v2(
            self.model, opt=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas),
        )
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = round(hp.warmup_epochs * total / epochs)
        scheduler = warmup_cosine(optimizer, warmup, total, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _check_training_args(hp: Any) -> None:
    """Reject training arguments outside their range with a message that names them."""
    checks = [
        ("lr", hp.lr > 0, "> 0"),
        ("weight_decay", hp.weight_decay >= 0, ">= 0"),
        ("label_smoothing", 0 <= hp.label_smoothing < 1, "in [0, 1)"),
        ("warmup_epochs", hp.warmup_epochs >= 0, ">= 0"),
        ("min_lr_ratio", 0 <= hp.min_lr_ratio <= 1, "in [0, 1]"),
        ("mixup_alpha", hp.mixup_alpha >= 0, ">= 0"),
        ("cutmix_alpha", hp.cutmix_alpha >= 0, ">= 0"),
        ("mixup_prob", 0 <= hp.mixup_prob <= 1, "in [0, 1]"),
        ("drop_path_rate", 0 <= hp.drop_path_rate < 1, "in [0, 1)"),
        ("num_experts", hp.num_experts >= 0, ">= 0 (0 = dense)"),
        ("num_classes", hp.num_classes >= 1, ">= 1"),
    ]
    for name, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{name}={getattr(hp, name)!r} is not allowed: must be {allowed}")
    if hp.loss not in ("ce", "bce"):
        raise ConfigError(f"loss={hp.loss!r} is not allowed: choose 'ce' or 'bce'")
    if hp.optimizer not in ("adamw", "lamb"):
        raise ConfigError(f"optimizer={hp.optimizer!r} is not allowed: choose 'adamw' or 'lamb'")
