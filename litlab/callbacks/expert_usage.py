"""`ExpertUsage`: counts which experts the validation images use and draws heatmaps after each validation.

Two pictures per validation epoch, written as PNG files in ``<log_dir>/expert_usage/``:

- ``layers_epochNNN.png``: MoE layers x experts, share of the layer's routed token assignments per expert;
- ``classes_epochNNN.png``: for every MoE layer, experts x classes, share of each class's assignments per expert.

``latest_layers.png`` and ``latest_classes.png`` are the same pictures of the last epoch. Counts are summed
over all ranks (every rank calls the reduction; only rank zero writes files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from litlab.models.moe import moe_layers

MAX_CLASSES_PLOTTED = 100
"""The experts x classes heatmaps show at most this many classes (the first ones); the counts keep all."""


class ExpertUsage(Callback):
    """Accumulates expert usage per MoE layer and per class during validation and plots it.

    Args:
        dirname: Sub-directory of the trainer's log directory that receives the PNG files.
        plot: Write the PNG files (the counts are kept in ``usage`` either way).
    """

    def __init__(self, dirname: str = "expert_usage", plot: bool = True) -> None:
        self.dirname = dirname
        self.plot = plot
        self._layer_counts: dict[str, torch.Tensor] = {}
        self._class_counts: dict[str, torch.Tensor] = {}
        self.usage: dict[str, list[float]] = {}
        """Share of assignments per expert for each MoE layer, from the last validation epoch."""
        self.paths: list[str] = []
        """PNG files written after the last validation epoch."""

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._layer_counts.clear()
        self._class_counts.clear()

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        labels = batch[1]
        num_classes = pl_module.hparams.get("num_classes")
        if num_classes is None:  # a module without the hyperparameter: size the table from the labels (syncs)
            num_classes = int(labels.max()) + 1
        layers = pl_module.moe_layers() if hasattr(pl_module, "moe_layers") else moe_layers(pl_module)
        for name, moe in layers.items():
            index = moe.expert_index.reshape(labels.shape[0], -1)  # [B, tokens * k], -1 = dropped
            kept = index >= 0
            per_sample = torch.zeros(labels.shape[0], moe.num_experts, device=index.device)
            per_sample.scatter_add_(1, index.clamp(min=0), kept.float())
            per_class = torch.zeros(num_classes, moe.num_experts, device=index.device)
            per_class.index_add_(0, labels.to(index.device), per_sample)
            self._class_counts[name] = self._class_counts.get(name, 0) + per_class
            self._layer_counts[name] = self._layer_counts.get(name, 0) + per_sample.sum(0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._layer_counts or trainer.sanity_checking:
            return
        names = sorted(self._layer_counts, key=_block_order)
        layers = torch.stack([self._layer_counts[n] for n in names])
        classes = torch.stack([self._class_counts[n] for n in names])
        layers = trainer.strategy.reduce(layers, reduce_op="sum")
        classes = trainer.strategy.reduce(classes, reduce_op="sum")
        layer_share = layers / layers.sum(1, keepdim=True).clamp(min=1)
        self.usage = {n: layer_share[i].tolist() for i, n in enumerate(names)}
        if trainer.logger is not None:
            metrics = {}
            for i, n in enumerate(names):
                counts = layers[i]
                metrics[f"expert_usage/{n.replace('.', '_')}/dead_experts"] = float((counts == 0).sum())
                metrics[f"expert_usage/{n.replace('.', '_')}/max_load"] = float(layer_share[i].max() * counts.numel())
            if trainer.is_global_zero:
                trainer.logger.log_metrics(metrics, step=trainer.global_step)
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask for it
        if self.plot and trainer.is_global_zero:
            out = Path(log_dir or trainer.default_root_dir) / self.dirname
            self.paths = write_usage_plots(out, trainer.current_epoch, names, layer_share, classes)

    def state_dict(self) -> dict[str, Any]:
        return {"usage": self.usage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.usage = dict(state_dict.get("usage", {}))


def _block_order(name: str) -> list[Any]:
    """Sort key that orders ``blocks.10`` after ``blocks.9``."""
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def write_usage_plots(
    out: Path, epoch: int, names: list[str], layer_share: torch.Tensor, class_counts: torch.Tensor
) -> list[str]:
    """Draw the layers x experts and per-layer experts x classes heatmaps; return the written paths.

    Args:
        out: Output directory (created).
        epoch: Epoch number used in the file names.
        names: MoE layer names, one per row of ``layer_share``.
        layer_share: ``[layers, experts]`` share of assignments per expert.
        class_counts: ``[layers, classes, experts]`` assignment counts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    num_layers, num_experts = layer_share.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * num_experts, 1.0 + 0.45 * num_layers))
    im = ax.imshow(layer_share.cpu().numpy(), aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(num_layers), names, fontsize=7)
    ax.set_xticks(range(num_experts))
    ax.set_xlabel("expert")
    ax.set_title(f"share of routed tokens per expert (epoch {epoch})", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    layers_path = out / f"layers_epoch{epoch:03d}.png"
    fig.savefig(layers_path, dpi=110)
    fig.savefig(out / "latest_layers.png", dpi=110)
    plt.close(fig)

    class_share = class_counts / class_counts.sum(2, keepdim=True).clamp(min=1)
    shown = class_share[:, :MAX_CLASSES_PLOTTED]
    cols = min(num_layers, 4)
    rows = -(-num_layers // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.5 + 3.2 * cols, 0.4 + 2.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= num_layers:
            ax.axis("off")
            continue
        im = ax.imshow(shown[i].T.cpu().numpy(), aspect="auto", cmap="magma", vmin=0)
        ax.set_title(names[i], fontsize=8)
        ax.set_xlabel("class" if class_share.shape[1] <= MAX_CLASSES_PLOTTED else f"class (first {MAX_CLASSES_PLOTTED})")
        ax.set_ylabel("expert")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(f"expert share per class (epoch {epoch})", fontsize=9)
    classes_path = out / f"classes_epoch{epoch:03d}.png"
    fig.savefig(classes_path, dpi=110)
    fig.savefig(out / "latest_classes.png", dpi=110)
    plt.close(fig)
    return [str(layers_path), str(classes_path)]
