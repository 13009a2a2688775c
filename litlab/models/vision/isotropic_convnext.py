"""Isotropic ConvNeXt ("A ConvNet for the 2020s", Liu et al. 2022, Sec. 3.3): ConvNeXt blocks without downsampling.

A patchify stem (a ``patch_size`` x ``patch_size`` convolution with the same stride, no norm) turns the image
into a ``dim``-channel map at 1/16 resolution; ``depth`` identical ConvNeXt blocks (timm's
:class:`~timm.models.convnext.ConvNeXtBlock`: 7x7 depthwise conv -> LayerNorm -> MLP 4x -> residual) keep
that resolution and width; global average pooling, a LayerNorm and a linear classifier follow. It is the
ConvNeXt counterpart of a ViT (same stem, same token grid, one stage), used by the MoE image-classification
paper (arXiv 2411.18322) besides ViT and hierarchical ConvNeXt.

Variants (ConvNeXt paper, Tab. 2 of its isotropic comparison; layer scale off, as in its isotropic models):

============================  =====  ====  ===================================
name                          depth  dim   parameters at 1000 classes
============================  =====  ====  ===================================
``convnext_isotropic_small``  18     384   22,308,712 (paper: 22M, 4.3 GFLOPs)
``convnext_isotropic_base``   18     768   87,083,752 (paper: 87M, 16.9 GFLOPs)
``convnext_isotropic_large``  36     1024  305,905,640 (paper: 306M, 59.7 GFLOPs)
``test_convnext_isotropic``   4      32    tiny, for CPU tests (patch 8)
============================  =====  ====  ===================================

Parameters: stem ``in_chans*p^2*C + C``; per block ``49C + C`` (depthwise conv) ``+ 2C`` (norm)
``+ 8C^2 + 5C`` (MLP; the MoE papers' dense MLP count) ``[+ C`` layer scale``]``; head ``2C + C*K + K``.

Importing this module registers the names with timm (``@register_model``), so that
``timm.create_model("convnext_isotropic_small", num_classes=1000)`` and
:func:`litlab.models.vision.surgery.create_model` find them; ``import litlab.models.vision`` imports it.

Layout for MoE surgery: the blocks are ``model.blocks[i]`` and each ``.mlp`` is timm's ``Mlp`` of
``nn.Linear`` layers seeing NHWC ``[B, H, W, C]`` input (``conv_mlp=False``, the default), or of 1x1 convs
seeing NCHW ``[B, C, H, W]`` (``conv_mlp=True``). There is no ``stages`` attribute, so
:func:`litlab.models.vision.surgery.find_blocks` treats the model as isotropic (like a ViT).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    LayerNorm,
    LayerNorm2d,
    NormMlpClassifierHead,
    calculate_drop_path_rates,
    trunc_normal_,
)
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
)
from timm.models._features import feature_take_indices
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from litlab.errors import ConfigError

__all__ = ["IsotropicConvNeXt"]


class IsotropicConvNeXt(nn.Module):
    """ConvNeXt with a patchify stem and one stage of identical blocks (no downsampling).

    Args:
        in_chans: Input image channels.
        num_classes: Classes of the linear classifier; 0 gives no classifier (``forward`` returns pooled features).
        global_pool: Pooling before the head's LayerNorm (``"avg"``, ``"max"``, ...; ``""`` keeps the map).
        depth: Number of ConvNeXt blocks.
        dim: Channel width of the stem and of every block.
        patch_size: Kernel and stride of the patchify stem (16 in the paper).
        kernel_size: Depthwise convolution kernel size of the blocks.
        mlp_ratio: Hidden width of each block's MLP as a multiple of ``dim``.
        ls_init_value: Layer-scale init value; ``None`` (the isotropic models of the ConvNeXt paper) disables
            layer scale.
        conv_mlp: 1x1-conv MLPs on NCHW input instead of ``nn.Linear`` MLPs on NHWC input.
        conv_bias: Biases in the depthwise and MLP layers.
        act_layer: Activation of the MLPs (timm name or class).
        norm_eps: Epsilon of every LayerNorm.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth rate, increasing linearly from 0 (first block) to this (last block).
        head_init_scale: Factor applied to the classifier's initial weights and biases.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depth: int = 18,
        dim: int = 384,
        patch_size: int = 16,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        ls_init_value: float | None = None,
        conv_mlp: bool = False,
        conv_bias: bool = True,
        act_layer: str | Callable[..., nn.Module] = "gelu",
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value, minimum in (("in_chans", in_chans, 1), ("num_classes", num_classes, 0),
                                     ("depth", depth, 1), ("dim", dim, 1), ("patch_size", patch_size, 1),
                                     ("kernel_size", kernel_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name}={value!r} is not allowed: it must be an integer >= {minimum}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate={drop_path_rate!r} is not allowed: it must be in [0, 1)")
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"drop_rate={drop_rate!r} is not allowed: it must be in [0, 1)")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.patch_size = patch_size
        self.num_features = self.head_hidden_size = self.embed_dim = dim
        self.grad_checkpointing = False

        self.stem = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        rates = calculate_drop_path_rates(drop_path_rate, depth)  # computed on CPU: safe under torch.device("meta")
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(
                dim, kernel_size=kernel_size, mlp_ratio=mlp_ratio, conv_mlp=conv_mlp, conv_bias=conv_bias,
                ls_init_value=ls_init_value, act_layer=act_layer,
                norm_layer=_norm_layer(conv_mlp, norm_eps), drop_path=rates[i],
            )
            for i in range(depth)
        ])
        # Pool -> LayerNorm -> dropout -> Linear, as the reference isotropic model's head(norm(mean(x))).
        self.head = NormMlpClassifierHead(
            dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, norm_layer=partial(LayerNorm2d, eps=norm_eps),
        )
        self.feature_info = [{"num_chs": dim, "reduction": patch_size, "module": f"blocks.{i}"} for i in range(depth)]
        self.apply(_init_weights)
        if isinstance(self.head.fc, nn.Linear):
            with torch.no_grad():
                self.head.fc.weight.mul_(head_init_scale)
                self.head.fc.bias.mul_(head_init_scale)

    # ------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^stem", "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None),
                                                                              (r"^head\.norm", (99999,))]}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: no classifier)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> NCHW feature map ``[B, dim, H / patch, W / patch]``."""
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, normalise and classify a feature map; ``pre_logits`` stops before the classifier."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs (NCHW) at ``indices`` (None: all, int n: the last n), and the final features.

        ``norm`` is accepted for timm compatibility; the model has no per-block output norm, so it has no effect.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not allowed: only 'NCHW' is supported")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.stem(x)
        blocks = self.blocks if not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the head when ``prune_head``)."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take


def _norm_layer(conv_mlp: bool, eps: float) -> Callable[..., nn.Module]:
    """The blocks' norm: LayerNorm over channels of NCHW input (conv MLP) or of NHWC input (linear MLP)."""
    return partial(LayerNorm2d if conv_mlp else LayerNorm, eps=eps)


def _init_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) for convolutions and linear layers, zero biases (the reference init)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------- registry
def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (14, 14),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem", "classifier": "head.fc", "paper_ids": "arXiv:2201.03545",
        "paper_name": "A ConvNet for the 2020s", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "convnext_isotropic_small": _cfg(),
    "convnext_isotropic_base": _cfg(),
    "convnext_isotropic_large": _cfg(),
    "test_convnext_isotropic": _cfg(input_size=(3, 64, 64), pool_size=(8, 8)),
})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> IsotropicConvNeXt:
    if pretrained:
        raise ConfigError(f"pretrained=True is not allowed for {variant}: no released weights are registered")
    return build_model_with_cfg(
        IsotropicConvNeXt, variant, pretrained,
        feature_cfg={"feature_cls": "getter", "out_indices": (-1,)},
        **kwargs,
    )


@register_model
def convnext_isotropic_small(pretrained: bool = False, **kwargs: Any) -> IsotropicConvNeXt:
    """ConvNeXt-S (iso.): 18 blocks at width 384, patch 16 (22.3M parameters at 1000 classes)."""
    return _create("convnext_isotropic_small", pretrained, **{"depth": 18, "dim": 384, **kwargs})


@register_model
def convnext_isotropic_base(pretrained: bool = False, **kwargs: Any) -> IsotropicConvNeXt:
    """ConvNeXt-B (iso.): 18 blocks at width 768, patch 16 (87.1M parameters at 1000 classes)."""
    return _create("convnext_isotropic_base", pretrained, **{"depth": 18, "dim": 768, **kwargs})


@register_model
def convnext_isotropic_large(pretrained: bool = False, **kwargs: Any) -> IsotropicConvNeXt:
    """ConvNeXt-L (iso.): 36 blocks at width 1024, patch 16 (305.9M parameters at 1000 classes)."""
    return _create("convnext_isotropic_large", pretrained, **{"depth": 36, "dim": 1024, **kwargs})


@register_model
def test_convnext_isotropic(pretrained: bool = False, **kwargs: Any) -> IsotropicConvNeXt:
    """A tiny isotropic ConvNeXt for CPU tests: 4 blocks at width 32, patch 8."""
    return _create("test_convnext_isotropic", pretrained, **{"depth": 4, "dim": 32, "patch_size": 8, **kwargs})
