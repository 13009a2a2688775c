"""Parameter filters: which tensors of a model an evolutionary search space touches.

A filter is the intersection of up to three filters over ``model.named_parameters()`` (shared tensors
appear once, under their first name):

- ``select``: one or more glob patterns on parameter names (``fnmatch``; ``*`` also crosses dots), e.g.
  ``"blocks.*.mlp.fc2.weight"``;
- ``regex``: a regular expression searched (``re.search``) in parameter names, e.g. ``r"norm\\d?\\.weight$"``;
- ``module_type``: the direct parameters of modules of these types, given as classes (``nn.LayerNorm``) or
  class names (``"LayerNorm"``, or a dotted path such as ``"torch.nn.LayerNorm"``).

Filters that are not given do not filter; giving none selects every parameter. An empty result raises
:class:`~litlab.errors.ConfigError` naming the filters, so a typo never yields a silent no-op search.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from litlab.errors import ConfigError

ModuleType = type | str


@dataclass(frozen=True)
class ParameterFilter:
    """Filters over parameter names and module types (all given filters must match).

    Args:
        select: Glob pattern(s) on parameter names.
        regex: Regular expression searched in parameter names.
        module_type: Module class(es) or class name(s) whose direct parameters are selected.
    """

    select: str | tuple[str, ...] | None = None
    regex: str | None = None
    module_type: ModuleType | tuple[ModuleType, ...] | None = None

    def describe(self) -> str:
        """A short text naming the given filters, for error messages and reports."""
        parts = [f"{key}={value!r}" for key, value in self._given().items()]
        return ", ".join(parts) if parts else "all parameters"

    def _given(self) -> dict[str, object]:
        return {k: v for k, v in (("select", self.select), ("regex", self.regex),
                                  ("module_type", self.module_type)) if v is not None}

    def resolve(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The selected ``(name, parameter)`` pairs of ``model``, in ``named_parameters`` order.

        Raises:
            ConfigError: when a pattern is invalid or nothing matches.
        """
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        named = list(model.named_parameters())
        if not named:
            raise ConfigError(f"model {type(model).__name__} has no parameters to select from")
        keep = {name for name, _ in named}
        if self.select is not None:
            patterns = (self.select,) if isinstance(self.select, str) else tuple(self.select)
            if not patterns or not all(isinstance(p, str) and p for p in patterns):
                raise ConfigError(f"select must be a non-empty glob pattern or list of them, got {self.select!r}")
            keep &= {name for name, _ in named if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
            _check_nonempty(keep, "select", self.select, named)
        if self.regex is not None:
            try:
                pattern = re.compile(self.regex)
            except re.error as err:
                raise ConfigError(f"regex={self.regex!r} is not a valid regular expression: {err}") from err
            keep &= {name for name, _ in named if pattern.search(name)}
            _check_nonempty(keep, "regex", self.regex, named)
        if self.module_type is not None:
            keep &= _module_type_names(model, self.module_type)
            _check_nonempty(keep, "module_type", self.module_type, named)
        return [(name, param) for name, param in named if name in keep]


def _module_type_names(model: nn.Module, module_type: ModuleType | Sequence[ModuleType]) -> set[str]:
    items = (module_type,) if isinstance(module_type, type | str) else tuple(module_type)
    wanted = tuple(_resolve_type(item, module_type) for item in items)
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if _matches_type(module, wanted):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return names


def _resolve_type(item: object, given: object) -> ModuleType:
    """A class stays a class, a dotted path is imported, a bare name is matched against class names."""
    if isinstance(item, type) and issubclass(item, nn.Module):
        return item
    if isinstance(item, str) and item:
        if "." not in item:
            return item
        module_name, _, attr = item.rpartition(".")
        try:
            resolved = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"module_type={given!r}: cannot import {item!r} ({err})") from err
        if isinstance(resolved, type) and issubclass(resolved, nn.Module):
            return resolved
    raise ConfigError(f"module_type must be torch.nn.Module subclasses or class names, got {given!r}")


def _matches_type(module: nn.Module, wanted: tuple[ModuleType, ...]) -> bool:
    for item in wanted:
        if isinstance(item, type):
            if isinstance(module, item):
                return True
        elif any(item == base.__name__ for base in type(module).__mro__):
            return True
    return False


def _check_nonempty(keep: set[str], key: str, value: object, named: list[tuple[str, torch.Tensor]]) -> None:
    if keep:
        return
    examples = ", ".join(name for name, _ in named[:8]) + (", ..." if len(named) > 8 else "")
    raise ConfigError(
        f"{key}={value!r} selects no parameter (after the filters before it); "
        f"the model's parameters are named like: {examples}"
    )
