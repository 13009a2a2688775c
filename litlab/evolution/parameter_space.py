"""`ParameterSpace`: multiplicative or additive perturbations of selected model tensors.

A value ``x`` (a flat float array) changes each selected tensor ``W`` in place:

- ``mode="multiplicative"``: ``W ← W · exp(x)`` (BBoxER's update; ``x = 0`` keeps ``W``, signs never flip);
- ``mode="additive"``: ``W ← W + x``.

``granularity`` sets how many numbers each tensor gets: ``"tensor"`` one scalar for the whole tensor,
``"channel"`` one per output channel (per index of dim 0; for a 1-D tensor that is one per entry),
``"entry"`` one per entry. The arithmetic runs in float32 (or the tensor's dtype when wider) and the result
is cast back, so bf16 and fp16 models work (fp32 tensors are written in place, without a temporary).

Exact restore: :meth:`~ModelPart.apply` keeps a copy of each tensor whose part of ``x`` is non-zero (the
original) and writes ``original · exp(x)`` into the tensor; :meth:`~ModelPart.restore` copies the original
back, so restoring is bitwise exact and the memory cost is the touched tensors, not the model. Inside
:meth:`~ModelPart.session` (the engine's loop) the copies are made once and reused by every evaluation, which
saves one pass over the touched entries per evaluation; they are dropped when the session ends.

The optimizer searches ``u = x / scale`` (standard-normal coordinates); with ``box`` the decoded ``x`` is
reflected once at ``±box`` and clipped, as nevergrad's ``"bouncing"`` bounds do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from litlab.errors import ConfigError
from litlab.evolution.parameter_filter import ModuleType, ParameterFilter
from litlab.evolution.search_space import SpacePart

MODES = ("multiplicative", "additive")
GRANULARITIES = ("tensor", "channel", "entry")

Saved = list[tuple[nn.Parameter, torch.Tensor, int | None]]


class ModelPart(SpacePart):
    """Base of the parts that change model tensors: selection, validation, in-place update and restore.

    Args:
        model: The model whose parameters are selected.
        select: Glob pattern(s) on parameter names (see :mod:`litlab.evolution.parameter_filter`).
        regex: Regular expression searched in parameter names.
        module_type: Module class(es) or class name(s) whose direct parameters are selected.
        mode: ``"multiplicative"`` (``W·exp(x)``) or ``"additive"`` (``W + x``).
        scale: Initial mutation size of ``x`` (nevergrad's sigma): about the relative change per step for the
            multiplicative mode, an absolute change for the additive one.
        box: If given, ``x`` stays in the box ``[-box, box]`` (nevergrad's bouncing bounds).
    """

    def __init__(
        self,
        model: nn.Module,
        select: str | list[str] | None = None,
        regex: str | None = None,
        module_type: ModuleType | list[ModuleType] | None = None,
        mode: str = "multiplicative",
        scale: float = 0.01,
        box: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if not (isinstance(scale, int | float) and np.isfinite(scale) and scale > 0):
            raise ConfigError(f"scale must be a positive finite number, got {scale!r}")
        if box is not None and not (isinstance(box, int | float) and np.isfinite(box) and box > 0):
            raise ConfigError(f"box must be a positive finite number or None, got {box!r}")
        self.parameter_filter = ParameterFilter(
            select=tuple(select) if isinstance(select, list | tuple) else select,
            regex=regex,
            module_type=tuple(module_type) if isinstance(module_type, list | tuple) else module_type,
        )
        self.named = self.parameter_filter.resolve(model)
        for name, param in self.named:
            if not param.dtype.is_floating_point:
                raise ConfigError(
                    f"{self.parameter_filter.describe()} selects {name!r} of dtype {param.dtype}; "
                    "only floating-point tensors can be perturbed"
                )
        self.mode = mode
        self.scale = float(scale)
        self.box = None if box is None else float(box)
        self._backup: dict[int, torch.Tensor] | None = None  # originals kept by a session
        self._dirty: set[int] = set()  # tensors holding a session-backed candidate, not yet restored

    def parameters(self) -> list[nn.Parameter]:
        return [param for _, param in self.named]

    def identity(self) -> np.ndarray:
        return np.zeros(self.dimension)

    def decode(self, u: np.ndarray) -> np.ndarray:
        x = self.scale * np.asarray(u, dtype=np.float64)
        return x if self.box is None else bounce(x, -self.box, self.box)

    def encode(self, value: Any) -> np.ndarray:
        return self._check_value(value) / self.scale

    @contextmanager
    def session(self) -> Iterator[None]:
        """Keeps the originals of touched tensors for the whole block (the model must not change otherwise)."""
        if self._backup is not None:  # nested: the outer session owns the copies
            yield
            return
        self._backup, self._dirty = {}, set()
        try:
            yield
        finally:
            self._backup, self._dirty = None, set()

    def restore(self, token: Saved) -> None:
        with torch.no_grad():
            for param, original, index in reversed(token):
                param.copy_(original)
                if index is not None:
                    self._dirty.discard(index)

    def _change(self, x: np.ndarray, device: torch.device) -> torch.Tensor:
        """``exp(x)`` (multiplicative) or ``x`` (additive) as a tensor on ``device``, in the compute dtype."""
        dtype = torch.float64 if any(p.dtype == torch.float64 for _, p in self.named) else torch.float32
        change = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(device=device, dtype=dtype)
        return torch.exp(change) if self.mode == "multiplicative" else change

    def _perturb(self, index: int, param: nn.Parameter, change: torch.Tensor, saved: Saved) -> None:
        """Writes ``current · change`` (or ``+ change``) into ``param``; records ``current`` in ``saved``.

        ``current`` comes from the session's copy when there is one and the tensor holds no other candidate
        (a nested apply composes with the outer one, in a session or not).
        """
        if self._backup is None or index in self._dirty:
            original = param.detach().clone()
            saved.append((param, original, None))
        else:
            original = self._backup.get(index)
            if original is None:
                original = self._backup[index] = param.detach().clone()
            self._dirty.add(index)
            saved.append((param, original, index))
        compute = torch.promote_types(param.dtype, torch.float32)
        if change.device != param.device or change.dtype != compute:
            change = change.to(device=param.device, dtype=compute)
        op = torch.mul if self.mode == "multiplicative" else torch.add
        if compute == param.dtype:  # in place, no temporary
            op(original, change, out=param)
        else:
            param.copy_(op(original.to(compute), change))

    def _check_value(self, value: Any) -> np.ndarray:
        x = np.asarray(value, dtype=np.float64).reshape(-1)
        if x.size != self.dimension:
            raise ConfigError(f"{type(self).__name__} value must have {self.dimension} numbers, got {x.size}")
        return x

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "parameter_filter": self.parameter_filter.describe(),
            "mode": self.mode,
            "scale": self.scale,
            "box": self.box,
            "tensors": [name for name, _ in self.named],
            "entries": sum(param.numel() for _, param in self.named),
        }


class ParameterSpace(ModelPart):
    """A perturbation of selected model tensors with one number per tensor, per output channel or per entry.

    Args:
        model: The model whose parameters are selected.
        select: Glob pattern(s) on parameter names, e.g. ``"blocks.*.mlp.fc2.weight"``.
        regex: Regular expression searched in parameter names.
        module_type: Module class(es) or class name(s) whose direct parameters are selected, e.g.
            ``torch.nn.LayerNorm`` (combine with ``select="*.weight"`` for the weights only).
        mode: ``"multiplicative"`` (``W·exp(x)``) or ``"additive"`` (``W + x``).
        granularity: ``"tensor"`` (one scalar per tensor), ``"channel"`` (one per index of dim 0) or
            ``"entry"`` (one per entry).
        scale: Initial mutation size of ``x`` (nevergrad's sigma).
        box: If given, ``x`` stays in the box ``[-box, box]``.
    """

    def __init__(
        self,
        model: nn.Module,
        select: str | list[str] | None = None,
        regex: str | None = None,
        module_type: ModuleType | list[ModuleType] | None = None,
        mode: str = "multiplicative",
        granularity: str = "tensor",
        scale: float = 0.01,
        box: float | None = None,
    ) -> None:
        super().__init__(model, select=select, regex=regex, module_type=module_type, mode=mode, scale=scale,
                         box=box)
        if granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity = granularity
        self._shapes = [self._value_shape(param) for _, param in self.named]
        self._sizes = [int(np.prod(shape, dtype=np.int64)) for shape in self._shapes]
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)]).astype(int).tolist()

    def _value_shape(self, param: nn.Parameter) -> tuple[int, ...]:
        """Shape of this tensor's numbers, broadcastable against the tensor."""
        if self.granularity == "tensor" or param.dim() == 0:
            return ()
        if self.granularity == "channel":
            return (param.shape[0],) + (1,) * (param.dim() - 1)
        return tuple(param.shape)

    @property
    def dimension(self) -> int:
        return self._offsets[-1]

    def split(self, value: Any) -> dict[str, np.ndarray]:
        """The numbers of ``value`` for each selected tensor, by parameter name (shape: tensor's numbers)."""
        x = self._check_value(value)
        shapes = [(s[0],) if self.granularity == "channel" and s else s for s in self._shapes]
        return {name: x[start:stop].reshape(shape) for (name, _), start, stop, shape
                in zip(self.named, self._offsets[:-1], self._offsets[1:], shapes, strict=True)}

    def apply(self, value: Any) -> Saved:
        x = self._check_value(value)
        saved: Saved = []
        touched = [i for i, (start, stop) in enumerate(zip(self._offsets[:-1], self._offsets[1:], strict=True))
                   if x[start:stop].any()]  # an all-zero tensor is left alone: no copy, no arithmetic
        if not touched:
            return saved
        with torch.no_grad():
            change = self._change(x, self.named[touched[0]][1].device)  # one transfer, one exp
            try:
                for index in touched:
                    part = change[self._offsets[index]:self._offsets[index + 1]].view(self._shapes[index])
                    self._perturb(index, self.named[index][1], part, saved)
            except BaseException:
                self.restore(saved)
                raise
        return saved

    def to_jsonable(self, value: Any) -> dict[str, Any]:
        return {name: numbers.tolist() for name, numbers in self.split(value).items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "granularity": self.granularity}


def bounce(x: np.ndarray, lower: np.ndarray | float, upper: np.ndarray | float) -> np.ndarray:
    """Reflects ``x`` once at the bounds, then clips: nevergrad's ``"bouncing"`` method, quirk included (a value
    more than the whole range beyond one bound lands on the other bound)."""
    clipped = np.clip(x, lower, upper)
    return np.clip(2 * clipped - x, lower, upper)
