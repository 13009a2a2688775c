"""`SearchSpace`: the ℵ-parameters of a run, a named composite of search-space parts.

A part (:class:`SpacePart`) couples a nevergrad parameter with what its value does: scale or shift model
tensors (:class:`~litlab.evolution.parameter_space.ParameterSpace`,
:class:`~litlab.evolution.subspace.SubspaceSpace`), set values that the fitness function reads
(:class:`~litlab.evolution.hyperparameters.HyperParameters`,
:class:`~litlab.evolution.index_space.IndexSpace`). A candidate is a ``dict`` from part name to that part's
value. Every part has an *identity* value (no change: ``x = 0``, hyperparameters at their defaults, the
starting indices); the engine suggests it first, so the first evaluation measures the unmodified model.

Applying a candidate returns a token that restores the previous state exactly (bitwise): parts that change
tensors keep a copy of the tensors they touch, never of the whole model.

How the optimizer sees the space: all *standardized* parts (every part but :class:`IndexSpace`) are
concatenated into one flat ``ng.p.Array`` of standard-normal coordinates ``u``, which each part decodes
itself (``x = scale·u``, bounds by bouncing, log scales, exactly as nevergrad's own layers would). Parts with a
native nevergrad parameter (the integer-cast index array, whose discreteness optimizers such as ``NGOpt`` use)
sit beside it in an ``ng.p.Dict``; a space of one parameter uses it bare. Measured with nevergrad 1.0.12:
an ask and a tell cost ~0.3 ms on one flat array against ~1 ms for a ``Dict`` of a sigma-scaled ``Array`` and
a nested ``Dict`` holding one bounded ``Log`` scalar.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import nevergrad as ng
import numpy as np
import torch

from litlab.errors import ConfigError


class SpacePart(ABC):
    """One part of a search space: its identity value, how a value acts, and how the optimizer sees it.

    A *standardized* part (the default) is searched as ``dimension`` standard-normal reals ``u`` and
    implements :meth:`encode` and :meth:`decode`; otherwise it sets ``standardized = False`` and returns a native
    nevergrad parameter from :meth:`parametrization`, whose value is the part's value.
    """

    standardized: bool = True

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Number of real numbers the optimizer searches for this part."""

    @abstractmethod
    def identity(self) -> Any:
        """The value that changes nothing."""

    @abstractmethod
    def apply(self, value: Any) -> Any:
        """Puts ``value`` in effect and returns the token that :meth:`restore` needs to undo it."""

    @abstractmethod
    def restore(self, token: Any) -> None:
        """Undoes the :meth:`apply` call that returned ``token`` (exactly)."""

    def decode(self, u: np.ndarray) -> Any:
        """The value at standardized coordinates ``u`` (``u = 0`` is the identity)."""
        raise NotImplementedError(f"{type(self).__name__} is not a standardized part")

    def encode(self, value: Any) -> np.ndarray:
        """The standardized coordinates of ``value`` (inverse of :meth:`decode` inside the bounds)."""
        raise NotImplementedError(f"{type(self).__name__} is not a standardized part")

    def parametrization(self) -> ng.p.Parameter:
        """A fresh native nevergrad parameter (parts with ``standardized = False``)."""
        raise NotImplementedError(f"{type(self).__name__} is a standardized part: use encode/decode")

    def session(self) -> AbstractContextManager[None]:
        """A context in which repeated apply/restore calls may keep state (e.g. a backup of touched tensors)."""
        return nullcontext()

    def parameters(self) -> list[torch.nn.Parameter]:
        """The model tensors this part changes (none for parts the fitness function reads)."""
        return []

    def to_jsonable(self, value: Any) -> Any:
        """``value`` as JSON-compatible Python objects (lists, floats, ints)."""
        return _jsonable(value)

    def describe(self) -> dict[str, Any]:
        """A JSON-compatible description for reports."""
        return {"kind": type(self).__name__, "dimension": self.dimension}


CONTINUOUS = "__standardized__"
"""Key of the flat array of all standardized parts inside the ``ng.p.Dict``."""


class SearchSpace:
    """Named parts searched together; a candidate value is a ``dict`` from part name to part value.

    Args:
        parts: The parts by name (a single part is named ``"x"``).
    """

    def __init__(self, parts: Mapping[str, SpacePart] | SpacePart) -> None:
        if isinstance(parts, SpacePart):
            parts = {"x": parts}
        if not isinstance(parts, Mapping) or not parts:
            raise ConfigError(f"parts must be a non-empty mapping from names to SpacePart objects, got {parts!r}")
        for name, part in parts.items():
            if not isinstance(name, str) or not name.isidentifier() or name == CONTINUOUS:
                raise ConfigError(f"parts: names must be identifiers other than {CONTINUOUS!r}, got {name!r}")
            if not isinstance(part, SpacePart):
                raise ConfigError(f"parts[{name!r}] must be a SpacePart, got {type(part).__name__}")
        self.parts: dict[str, SpacePart] = dict(parts)
        touched = [id(p) for part in self.parts.values() for p in part.parameters()]
        if len(touched) != len(set(touched)):
            raise ConfigError("parts: two parts change the same model tensor; give each tensor to one part")
        self._slices: dict[str, slice] = {}
        start = 0
        for name, part in self.parts.items():
            if part.standardized:
                self._slices[name] = slice(start, start + part.dimension)
                start += part.dimension
        self._flat_dimension = start
        native = [name for name, part in self.parts.items() if not part.standardized]
        self._bare = (CONTINUOUS if not native else native[0]) if len(native) + bool(start) == 1 else None

    @property
    def dimension(self) -> int:
        """Total number of searched real numbers."""
        return sum(part.dimension for part in self.parts.values())

    def parametrization(self) -> ng.p.Parameter:
        """A fresh nevergrad parameter (a flat array, a native part's parameter, or a ``Dict`` of them)."""
        params: dict[str, ng.p.Parameter] = {}
        if self._flat_dimension:
            params[CONTINUOUS] = ng.p.Array(shape=(self._flat_dimension,))
        for name, part in self.parts.items():
            if not part.standardized:
                params[name] = part.parametrization()
        return params[self._bare] if self._bare is not None else ng.p.Dict(**params)

    def decode(self, raw: Any) -> dict[str, Any]:
        """The candidate (part name -> value) for a value of :meth:`parametrization`."""
        raw = {self._bare: raw} if self._bare is not None else raw
        flat = raw.get(CONTINUOUS)
        return {name: part.decode(flat[self._slices[name]]) if part.standardized else raw[name]
                for name, part in self.parts.items()}

    def encode(self, value: Mapping[str, Any]) -> Any:
        """The value of :meth:`parametrization` for a candidate (inverse of :meth:`decode`)."""
        raw: dict[str, Any] = {}
        if self._flat_dimension:
            raw[CONTINUOUS] = np.concatenate([np.asarray(part.encode(value[name]), dtype=np.float64).reshape(-1)
                                              for name, part in self.parts.items() if part.standardized])
        raw.update({name: value[name] for name, part in self.parts.items() if not part.standardized})
        return raw[self._bare] if self._bare is not None else raw

    def identity(self) -> dict[str, Any]:
        """The candidate that changes nothing."""
        return {name: part.identity() for name, part in self.parts.items()}

    @contextmanager
    def session(self) -> Iterator[None]:
        """Every part's :meth:`SpacePart.session` (the engine runs its loop inside one)."""
        with ExitStack() as stack:
            for part in self.parts.values():
                stack.enter_context(part.session())
            yield

    def is_identity(self, value: Mapping[str, Any]) -> bool:
        """Whether ``value`` equals the identity candidate (up to float rounding, 1e-9 relative)."""
        return _close(value, self.identity())

    def apply(self, value: Mapping[str, Any]) -> list[tuple[SpacePart, Any]]:
        """Puts a candidate in effect; returns the token for :meth:`restore`."""
        missing = set(self.parts) - set(value)
        if missing:
            raise ConfigError(f"candidate lacks the parts {sorted(missing)}; it has {sorted(value)}")
        tokens: list[tuple[SpacePart, Any]] = []
        try:
            for name, part in self.parts.items():
                tokens.append((part, part.apply(value[name])))
        except BaseException:
            self.restore(tokens)
            raise
        return tokens

    def restore(self, tokens: list[tuple[SpacePart, Any]]) -> None:
        """Undoes :meth:`apply` (parts in reverse order)."""
        for part, token in reversed(tokens):
            part.restore(token)

    @contextmanager
    def applied(self, value: Mapping[str, Any]) -> Iterator[None]:
        """Context manager: the candidate is in effect inside the block and undone on exit, even on errors."""
        tokens = self.apply(value)
        try:
            yield
        finally:
            self.restore(tokens)

    def parameters(self) -> list[torch.nn.Parameter]:
        """All model tensors the parts change."""
        return [p for part in self.parts.values() for p in part.parameters()]

    def to_jsonable(self, value: Mapping[str, Any]) -> dict[str, Any]:
        """A candidate as JSON-compatible objects."""
        return {name: part.to_jsonable(value[name]) for name, part in self.parts.items()}

    def describe(self) -> dict[str, Any]:
        """JSON-compatible description of every part."""
        return {name: part.describe() for name, part in self.parts.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys()
                and all(_close(a[k], b[k]) for k in a))
    return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-9, atol=1e-12))
