"""MoE surgery on timm image classifiers: replace the MLP of chosen blocks by a Mixture of Experts.

``create_model`` builds a timm model by name (never with pretrained weights) and swaps the MLP of the
blocks chosen by a placement rule (see :mod:`litlab.models.vision.placement`) for :class:`MoEMlp`, a thin
adapter around :class:`litlab.models.moe.MoE` that handles the tensor layout the block feeds its MLP:

- ViT: ``model.blocks[i].mlp`` sees ``[B, N, C]`` (class token included) -> the MoE routes every token.
- ConvNeXt: ``model.stages[s].blocks[j].mlp`` sees NHWC ``[B, H, W, C]`` (timm ``Mlp`` of ``nn.Linear``),
  or NCHW ``[B, C, H, W]`` with ``conv_mlp=True`` (``Mlp(use_conv=True)`` / ``ConvMlp`` of 1x1 convs);
  the adapter permutes NCHW -> NHWC -> MoE -> NCHW, so every pixel is a token.

The architecture is detected from the module structure (``.blocks[*].mlp`` or
``.stages[*].blocks[*].mlp``), not from the name, so any timm model with that structure and a plain
two-layer MLP works.
"""

from __future__ import annotations

import inspect
import os
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.layers import ConvMlp, Mlp
from torch import nn

from litlab.errors import ConfigError, DataError
from litlab.models.moe import MoE
from litlab.models.vision.placement import (
    PLACEMENT_SCOPES,
    BlockRef,
    block_names,
    resolve_placement,
)

__all__ = ["MoEMlp", "create_model", "find_blocks", "load_checkpoint"]

# Arguments of MoE that create_model fills in itself from the dense MLP being replaced.
_DERIVED = ("dim", "hidden_dim")
_GELU_TYPES = (nn.GELU, timm.layers.activations.GELU)


class MoEMlp(nn.Module):
    """A Mixture-of-Experts MLP that takes the place of a timm block's MLP.

    Args:
        moe: The MoE layer (maps ``[..., C] -> [..., C]``).
        channels_last: ``True`` when the block feeds ``[..., C]`` (ViT, ConvNeXt NHWC); ``False`` for NCHW
            ``[B, C, H, W]`` input (ConvNeXt ``conv_mlp=True``), which is permuted to NHWC for the MoE and back.
        drop: Dropout probability on the output, the dense MLP's output dropout (``drop2`` of timm ``Mlp``).

    After a forward, ``self.moe.expert_index`` has shape ``[*leading, top_k]`` with the leading dims in the
    MoE's layout: ``[B, N]`` for ViT, ``[B, H, W]`` for ConvNeXt (both layouts).
    """

    def __init__(self, moe: MoE, *, channels_last: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        self.moe = moe
        self.channels_last = channels_last
        self.drop = nn.Dropout(drop)

    @classmethod
    def from_dense(
        cls, mlp: nn.Module, moe_kwargs: Mapping[str, Any], *, upcycle: bool = False, name: str = "mlp"
    ) -> MoEMlp:
        """Build the MoE replacement of a timm MLP, taking ``dim`` and ``hidden_dim`` from it.

        Args:
            mlp: A timm ``Mlp`` (``nn.Linear`` or 1x1 ``nn.Conv2d`` layers) or ``ConvMlp``.
            moe_kwargs: Keyword arguments of :class:`MoE` except ``dim`` and ``hidden_dim``. ``bias`` defaults
                to whether the dense MLP has biases.
            upcycle: Copy the dense MLP's weights into every expert (``MoE.load_dense``); skipped on ``meta``.
            name: Module name of ``mlp``, used in error messages.

        Returns:
            The adapter, on the dense MLP's device and dtype.

        Raises:
            ConfigError: the MLP is not a supported two-layer MLP (gated, GRN, hidden norm, hidden dropout).
        """
        spec = _dense_spec(mlp, name)
        kwargs = dict(moe_kwargs)
        kwargs.setdefault("bias", spec["bias"])
        moe = MoE(spec["dim"], spec["hidden_dim"], **kwargs)
        weight = spec["fc1_weight"]
        moe = moe.to(device=weight.device, dtype=weight.dtype)
        activation = kwargs.get("activation", "gelu")
        act = spec["act"]
        exact_gelu = isinstance(act, _GELU_TYPES) and getattr(act, "approximate", "none") == "none"
        if upcycle:
            if activation != "gelu":
                raise ConfigError(
                    f"upcycle=True is not allowed with moe activation={activation!r}: a dense timm MLP can only "
                    "be copied into GELU experts (activation='gelu')"
                )
            if not exact_gelu:
                warnings.warn(
                    f"{name}: upcycling a dense MLP with activation {act!r} into exact-GELU experts; the MoE "
                    "computes a slightly different function than the dense MLP",
                    stacklevel=3,
                )
            if weight.device.type != "meta":
                with torch.no_grad():
                    moe.load_dense(spec["fc1_weight"], spec["fc1_bias"], spec["fc2_weight"], spec["fc2_bias"])
        elif not exact_gelu and "gelu" not in type(act).__name__.lower():
            warnings.warn(
                f"{name}: the dense MLP uses {act!r}; the MoE experts use activation={activation!r}",
                stacklevel=3,
            )
        if not upcycle and weight.device.type != "meta":
            timm_init_experts_(moe)
        return cls(moe, channels_last=spec["channels_last"], drop=spec["drop"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return self.drop(self.moe(x))
        if x.dim() != 4:
            raise ValueError(f"MoEMlp(channels_last=False) expects NCHW input, got shape {tuple(x.shape)}")
        y = self.moe(x.permute(0, 2, 3, 1))
        return self.drop(y).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}"


def timm_init_experts_(moe: MoE) -> None:
    """Initialise the experts as timm initialises ViT and ConvNeXt MLPs: trunc-normal(std 0.02), zero biases.

    ``MoE``'s own init is that of a plain ``nn.Linear``; timm re-initialises its models' linear layers after
    building them, which never reaches the stacked expert weights, so MoE and dense models would start from
    different scales. ``init="identical"`` stays identical; ``seed`` makes the draw reproducible.
    """
    ex = moe.experts
    gen = torch.Generator().manual_seed(moe.seed) if moe.seed is not None else None
    with torch.no_grad():
        for w in (ex.fc1_weight, ex.fc2_weight):
            nn.init.trunc_normal_(w, std=0.02, generator=gen)
            if moe.init_mode == "identical":
                w.copy_(w[:1].expand_as(w))
        for b in (ex.fc1_bias, ex.fc2_bias):
            if b is not None:
                b.zero_()


def _linear_weight(layer: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
    """(weight [out, in], bias, in, out) of an nn.Linear or a plain 1x1 nn.Conv2d."""
    if isinstance(layer, nn.Linear):
        return layer.weight, layer.bias, layer.in_features, layer.out_features
    if (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.stride == (1, 1)
        and layer.groups == 1
        and layer.dilation == (1, 1)
        and all(p == 0 for p in layer.padding)
    ):
        weight = layer.weight.reshape(layer.out_channels, layer.in_channels)
        return weight, layer.bias, layer.in_channels, layer.out_channels
    raise ConfigError(f"{name} is {layer!r}: MoE replaces MLPs made of nn.Linear or 1x1 nn.Conv2d layers only")


def _dense_spec(mlp: nn.Module, name: str) -> dict[str, Any]:
    """What the MoE needs from a dense timm MLP; ConfigError when it cannot be replaced faithfully."""
    if type(mlp) not in (Mlp, ConvMlp):
        raise ConfigError(
            f"{name} is a {type(mlp).__module__}.{type(mlp).__qualname__}: MoE can replace timm Mlp and ConvMlp "
            "(fc1 -> activation -> fc2) only; gated (GluMlp, SwiGLU) and GlobalResponseNormMlp (ConvNeXt-V2, "
            "use_grn=True) MLPs are not supported"
        )
    w1, b1, dim, hidden = _linear_weight(mlp.fc1, f"{name}.fc1")
    w2, b2, hidden2, out = _linear_weight(mlp.fc2, f"{name}.fc2")
    if hidden2 != hidden or out != dim:
        raise ConfigError(f"{name} maps {dim} -> {hidden} -> {out} channels: MoE needs fc2 to map back to {dim}")
    if (b1 is None) != (b2 is None):
        raise ConfigError(f"{name} has a bias on only one of fc1/fc2: MoE experts have both biases or none")
    if not isinstance(mlp.norm, nn.Identity):
        raise ConfigError(
            f"{name} has a norm layer {mlp.norm!r} on its hidden features: MoE experts have none; build the "
            "model without it (e.g. scale_mlp_norm=False)"
        )
    hidden_drop = mlp.drop1.p if isinstance(mlp, Mlp) else mlp.drop.p
    if hidden_drop > 0:
        raise ConfigError(
            f"{name} has hidden dropout p={hidden_drop}: MoE experts have no dropout inside; set the timm "
            "dropout that feeds the MLP (proj_drop_rate for ViT) to 0"
        )
    return {
        "dim": dim,
        "hidden_dim": hidden,
        "bias": b1 is not None,
        "fc1_weight": w1,
        "fc1_bias": b1,
        "fc2_weight": w2,
        "fc2_bias": b2,
        "act": mlp.act,
        "drop": mlp.drop2.p if isinstance(mlp, Mlp) else 0.0,
        "channels_last": isinstance(mlp.fc1, nn.Linear),
    }


def find_blocks(model: nn.Module) -> tuple[list[int], bool]:
    """Detect a supported block structure.

    Args:
        model: A timm model.

    Returns:
        ``(depths, hierarchical)``: ``([L], False)`` for ``model.blocks[i].mlp`` (ViT);
        ``([d0, d1, ...], True)`` for ``model.stages[s].blocks[j].mlp`` (ConvNeXt).

    Raises:
        ConfigError: the model has neither structure.
    """
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Module) and len(list(stages.children())) > 0:
        stage_list = list(stages.children())
        if all(_is_block_list(getattr(s, "blocks", None), allow_empty=True) for s in stage_list):
            depths = [len(s.blocks) for s in stage_list]
            if sum(depths) > 0:
                return depths, True
    blocks = getattr(model, "blocks", None)
    if _is_block_list(blocks, allow_empty=False):
        return [len(blocks)], False
    raise ConfigError(
        f"model {type(model).__name__} is not supported for MoE surgery: expected blocks with an MLP at "
        "model.blocks[i].mlp (ViT-like) or model.stages[s].blocks[j].mlp (ConvNeXt-like)"
    )


def _is_block_list(blocks: object, allow_empty: bool) -> bool:
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        return False
    children = list(blocks.children())
    if not children:
        return allow_empty
    return all(isinstance(getattr(b, "mlp", None), nn.Module) for b in children)


def _block(model: nn.Module, ref: BlockRef, hierarchical: bool) -> nn.Module:
    return model.stages[ref.stage].blocks[ref.block] if hierarchical else model.blocks[ref.index]


def _check_moe_kwargs(moe: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(moe, Mapping):
        raise ConfigError(f"moe={moe!r} is not allowed: expected a dict of MoE arguments or None")
    kwargs = dict(moe)
    derived = [k for k in _DERIVED if k in kwargs]
    if derived:
        raise ConfigError(f"moe={kwargs!r} is not allowed: {derived} are taken from the MLP being replaced")
    allowed = [p for p in inspect.signature(MoE.__init__).parameters if p not in ("self", *_DERIVED)]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ConfigError(f"moe={kwargs!r} is not allowed: unknown MoE arguments {unknown}; allowed: {allowed}")
    return kwargs


def _timm_model(model_name: str, **kwargs: Any) -> nn.Module:
    arch, _ = timm.models.split_model_name_tag(model_name)
    if not timm.is_model(arch):
        raise ConfigError(f"model_name={model_name!r} is not allowed: timm has no such model (see timm.list_models())")
    if kwargs.get("img_size") is None:
        kwargs.pop("img_size", None)
        return timm.create_model(model_name, pretrained=False, **kwargs)
    rng = torch.get_rng_state()
    try:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
    # Convolutional models (ConvNeXt) take any input size and have no img_size argument.
    torch.set_rng_state(rng)
    kwargs.pop("img_size")
    return timm.create_model(model_name, pretrained=False, **kwargs)


def _read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise DataError(f"init_checkpoint={str(path)!r}: no such file")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # Lightning checkpoints may hold hyper-parameter objects that the safe loader refuses; the file
            # was named by the user, as for Lightning's own ckpt_path.
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise DataError(f"init_checkpoint={str(path)!r} could not be read: {err}") from err
    if isinstance(ckpt, Mapping):
        for key in ("state_dict", "model"):
            inner = ckpt.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                ckpt = inner
                break
    if not isinstance(ckpt, Mapping) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise DataError(
            f"init_checkpoint={str(path)!r} holds no state dict (expected a dict of tensors, or one under "
            "'state_dict' or 'model')"
        )
    state = dict(ckpt)
    for prefix in ("model.", "module."):  # LightningModule attribute, DDP wrapper
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_checkpoint(model: nn.Module, path: str | os.PathLike, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a checkpoint into a model (see ``create_model``'s ``init_checkpoint``).

    Args:
        model: The model: the dense timm model before MoE surgery for a dense checkpoint, the model after the
            surgery for an MoE checkpoint.
        path: The checkpoint file (named in errors).
        state: The weights if already read from ``path``.

    Raises:
        DataError: the file is missing, unreadable or holds no state dict.
        ConfigError: the keys or shapes do not match the model (other than a resized classifier).
    """
    state = _read_checkpoint(path) if state is None else dict(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        hint = (" (an MoE checkpoint: build the model with the same num_experts and placement)"
                if any(".moe." in k for k in unexpected + missing) else "")
        raise ConfigError(
            f"init_checkpoint={str(path)!r} does not fit {type(model).__name__}{hint}: "
            f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ""
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    resized = []
    for k in list(state):
        if tuple(state[k].shape) == tuple(own[k].shape):
            continue
        if any(c and k.startswith(c + ".") for c in classifiers):
            resized.append(k)
            del state[k]
            continue
        raise ConfigError(
            f"init_checkpoint={str(path)!r} does not fit: {k} has shape {tuple(state[k].shape)} in the "
            f"checkpoint and {tuple(own[k].shape)} in the model"
        )
    if resized:
        warnings.warn(
            f"init_checkpoint={str(path)!r}: classifier {resized} has another number of classes; "
            "it keeps its fresh initialisation",
            stacklevel=3,
        )
    model.load_state_dict(state, strict=not resized)


def create_model(
    model_name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    in_chans: int = 3,
    moe: dict[str, Any] | None = None,
    placement: str | list[int] = "last-2",
    placement_scope: str = "global",
    upcycle: bool = False,
    init_checkpoint: str | os.PathLike | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a timm classifier (random init, never pretrained) with MoE MLPs in chosen blocks.

    Args:
        model_name: A timm model name, e.g. ``"vit_small_patch16_224"``, ``"convnext_tiny"``, ``"test_vit"``.
        num_classes: Number of classes of the head.
        img_size: Input resolution, passed to models that take it (ViT); ignored by convolutional models.
        in_chans: Number of input channels.
        moe: Keyword arguments of :class:`litlab.models.moe.MoE` (``num_experts``, ``top_k``, ``router``, ...)
            except ``dim``/``hidden_dim``, which come from the MLP being replaced (``hidden_dim`` = fc1 output
            width). If it has a ``seed``, layer ``i`` (global block index) uses ``seed + i`` so layers differ.
            ``None`` or ``num_experts=0`` gives the dense model.
        placement: Which blocks get MoE: ``"every-n"``, ``"last-n"``, ``"all"``, ``"none"``, or block indices
            (see :mod:`litlab.models.vision.placement`).
        placement_scope: ``"global"`` (indices over all blocks) or ``"per-stage"`` (rule in every stage of a
            hierarchical model).
        upcycle: Initialise every expert of each MoE as a copy of the dense MLP it replaces (randomly
            initialised, or loaded from ``init_checkpoint``: sparse upcycling). Skipped on the ``meta`` device.
        init_checkpoint: Path of a checkpoint. A *dense* one is loaded into the timm model before the surgery
            (with ``upcycle``: sparse upcycling); an *MoE* one (keys ``*.mlp.moe.*``, e.g. pre-trained on
            ImageNet-21k) after it, into a model with the same experts and placement. Either: a plain
            state dict, a Lightning ``.ckpt`` (its ``state_dict``, with the LightningModule's ``model.``
            prefix removed) or a dict holding the weights under ``"state_dict"`` or ``"model"``. Keys must
            match exactly, except the classifier (``pretrained_cfg["classifier"]``), which is kept freshly
            initialised, with a warning, when its shape differs (e.g. ImageNet-21k -> 1k).
        **timm_kwargs: Passed to ``timm.create_model`` (``drop_path_rate``, ``conv_mlp``, ``act_layer``, ...).

    Returns:
        The model. ``model.moe_blocks`` lists the module names of the replaced MLPs (e.g.
        ``["blocks.9.mlp", "blocks.11.mlp"]``, ``["stages.3.blocks.0.mlp", ...]``; empty when dense) and
        ``model.moe_config`` records the arguments of the surgery. Without MoE the module tree is exactly
        timm's.

    Raises:
        ConfigError: unknown model, unsupported block structure or MLP, bad placement or MoE arguments, or a
            checkpoint whose weights do not fit the model.
        DataError: ``init_checkpoint`` is missing or unreadable.
    """
    if "pretrained" in timm_kwargs:
        raise ConfigError("pretrained is not allowed: litlab never downloads weights; load a checkpoint instead")
    if placement_scope not in PLACEMENT_SCOPES:
        raise ConfigError(
            f"placement_scope={placement_scope!r} is not allowed: expected one of {list(PLACEMENT_SCOPES)}"
        )
    moe_kwargs = None if moe is None else _check_moe_kwargs(moe)
    model = _timm_model(model_name, num_classes=num_classes, img_size=img_size, in_chans=in_chans, **timm_kwargs)
    state = None if init_checkpoint is None else _read_checkpoint(init_checkpoint)
    moe_state = state is not None and any(".mlp.moe." in k for k in state)
    if state is not None and not moe_state:
        load_checkpoint(model, init_checkpoint, state)  # dense weights: loaded before the surgery (upcycling)
    dense = moe_kwargs is None or moe_kwargs.get("num_experts", 1) == 0
    if dense or (isinstance(placement, str) and placement.strip().lower() in ("none", "dense")):
        if moe_state:
            load_checkpoint(model, init_checkpoint, state)  # raises: MoE weights do not fit a dense model
        model.moe_blocks = []
        model.moe_config = None
        return model

    depths, hierarchical = find_blocks(model)
    refs = resolve_placement(placement, depths, placement_scope)
    names = block_names(refs, hierarchical, suffix=".mlp")
    seed = moe_kwargs.get("seed")
    for ref, name in zip(refs, names):
        block = _block(model, ref, hierarchical)
        kwargs = dict(moe_kwargs)
        if seed is not None:
            kwargs["seed"] = seed + ref.index
        block.mlp = MoEMlp.from_dense(block.mlp, kwargs, upcycle=upcycle, name=name)
    if moe_state:
        load_checkpoint(model, init_checkpoint, state)  # an MoE checkpoint, e.g. pre-trained on 21k, fine-tuned
    model.moe_blocks = names
    model.moe_config = {
        "moe": dict(moe_kwargs),
        "placement": placement if isinstance(placement, str) else list(placement),
        "placement_scope": placement_scope,
        "block_indices": [r.index for r in refs],
        "upcycle": upcycle,
        "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint),
    }
    return model
