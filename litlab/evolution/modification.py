"""BBoxER's ``modified(m0, x)`` (arXiv 2507.01752): where the searched vector ``x`` acts on a trained model.

Every place changes the chosen tensors multiplicatively, ``W ← W ⊙ exp(x)`` (``x = 0`` is the unchanged model,
signs never flip), through :class:`~litlab.evolution.ParameterSpace` or :class:`~litlab.evolution.SubspaceSpace`
(in place, undone bit for bit from copies of the touched tensors only). The places, by name:

- ``"norms"``: all norm scales: the ``weight`` of every module whose class name contains ``Norm`` (LayerNorm,
  RMSNorm, LlamaRMSNorm, ...), one number per channel (``norm_granularity="channel"``) or per tensor;
- ``"layer_scales"``: one scale per chosen tensor (per layer);
- ``"channel_scales"``: one scale per output channel (per row) of the chosen tensors (linear layers);
- ``"subspace"``: the chosen tensors' entries move along a seeded random ``subspace_dim``-dimensional subspace,
  ``W ⊙ exp(P·z)`` (:class:`~litlab.evolution.SubspaceSpace`).

The chosen tensors (``tensors``) are glob patterns or exact names of parameters; by default, the weights of the
``nn.Linear`` layers inside repeated blocks (names with a ``.<index>.`` segment: the transformer layers, not the
embeddings or the output head). A pattern that matches no parameter raises
:class:`~litlab.errors.ConfigError` listing the closest parameter names (``difflib``); so does an unknown place.
Two places may not change the same tensor.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Sequence

from torch import nn

from litlab.errors import ConfigError
from litlab.evolution.parameter_space import ParameterSpace
from litlab.evolution.search_space import SearchSpace, SpacePart
from litlab.evolution.subspace import PROJECTIONS, SubspaceSpace

PLACES = ("norms", "layer_scales", "channel_scales", "subspace")
NORM_GRANULARITIES = ("channel", "tensor")
_BLOCK = re.compile(r"\.\d+\.")


def norm_scale_names(model: nn.Module) -> list[str]:
    """Names of the scales of every norm layer (``weight`` of modules whose class name contains ``Norm``)."""
    names = []
    for prefix, module in model.named_modules():
        if "Norm" in type(module).__name__ and isinstance(getattr(module, "weight", None), nn.Parameter):
            names.append(f"{prefix}.weight" if prefix else "weight")
    return _in_parameter_order(model, names)


def block_linear_names(model: nn.Module) -> list[str]:
    """Names of the weights of the ``nn.Linear`` layers inside repeated blocks (``.<index>.`` in the name)."""
    names = [f"{prefix}.weight" for prefix, module in model.named_modules()
             if isinstance(module, nn.Linear) and _BLOCK.search(f".{prefix}.")]
    return _in_parameter_order(model, names)


def resolve_tensors(model: nn.Module, patterns: str | Sequence[str], argument: str = "tensors") -> list[str]:
    """The parameter names matched by glob ``patterns`` (exact names match themselves), in parameter order.

    Raises:
        ConfigError: a pattern that matches no parameter, naming it and the closest parameter names.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(f"{argument}={patterns!r} is not allowed: give parameter names or glob patterns")
    names = [name for name, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pattern in patterns:
        matched = {name for name in names if fnmatch.fnmatchcase(name, pattern)}
        if not matched:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else \
                f"; the model's parameters are named like: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
            raise ConfigError(f"{argument}: {pattern!r} matches no parameter of {type(model).__name__}{hint}")
        chosen |= matched
    return [name for name in names if name in chosen]


def check_places(where: str | Sequence[str]) -> list[str]:
    """``where`` as a list of places; raises ConfigError for an unknown one (with close matches) or a repeat."""
    places = [where] if isinstance(where, str) else list(where)
    if not places:
        raise ConfigError(f"where={where!r} is not allowed: choose one or more of {list(PLACES)}")
    for place in places:
        if place not in PLACES:
            close = difflib.get_close_matches(str(place), PLACES, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"where: {place!r} is not a place where x acts; choose from {list(PLACES)}{hint}")
    if len(set(places)) != len(places):
        raise ConfigError(f"where={places!r} names a place twice")
    return places


def modification_space(
    model: nn.Module,
    where: str | Sequence[str] = ("norms",),
    tensors: str | Sequence[str] | None = None,
    norm_granularity: str = "channel",
    scale: float = 0.01,
    box: float | None = None,
    subspace_dim: int = 16,
    projection: str = "sparse",
    seed: int = 0,
) -> SearchSpace:
    """The search space of ``x`` over ``model``: one part per place of ``where``, named after it.

    Args:
        model: The trained model (its parameter names are those of ``named_parameters``).
        where: Place(s) where ``x`` acts: ``norms``, ``layer_scales``, ``channel_scales``, ``subspace``.
        tensors: Parameter names or glob patterns of the tensors of ``layer_scales``, ``channel_scales`` and
            ``subspace`` (default: :func:`block_linear_names`).
        norm_granularity: ``channel`` (one scale per channel of each norm) or ``tensor`` (one per norm).
        scale: Initial mutation size of ``x`` (about the relative change per step).
        box: If given, ``x`` (or ``z`` of the subspace) stays in ``[-box, box]``.
        subspace_dim: Dimension ``k`` of the random subspace.
        projection: ``sparse`` or ``gaussian`` projection of the subspace.
        seed: Seed of the subspace's projection (not of the optimizer).

    Raises:
        ConfigError: an unknown place (with close matches), a tensor pattern matching nothing, a norm-less model,
            or two places changing the same tensor.
    """
    places = check_places(where)
    if norm_granularity not in NORM_GRANULARITIES:
        raise ConfigError(f"norm_granularity={norm_granularity!r} is not allowed: choose one of "
                          f"{list(NORM_GRANULARITIES)}")
    if projection not in PROJECTIONS:
        raise ConfigError(f"projection={projection!r} is not allowed: choose one of {list(PROJECTIONS)}")
    chosen: list[str] | None = None
    if any(place != "norms" for place in places):
        chosen = resolve_tensors(model, tensors) if tensors is not None else block_linear_names(model)
        if not chosen:
            raise ConfigError(f"{type(model).__name__} has no nn.Linear layer inside repeated blocks; give tensors=")
    owner: dict[str, str] = {}
    parts: dict[str, SpacePart] = {}
    for place in places:
        names = norm_scale_names(model) if place == "norms" else list(chosen or [])
        if not names:
            raise ConfigError(f"where: 'norms' needs norm layers, and {type(model).__name__} has none "
                              "(no module whose class name contains 'Norm' with a weight)")
        clash = [name for name in names if name in owner]
        if clash:
            raise ConfigError(f"where: {place!r} and {owner[clash[0]]!r} both change {clash[0]!r} "
                              f"({len(clash)} tensor(s)); give each tensor to one place (narrow tensors=)")
        owner.update((name, place) for name in names)
        select = [_escape(name) for name in names]
        if place == "subspace":
            parts[place] = SubspaceSpace(model, dim=subspace_dim, select=select, projection=projection,
                                         scale=scale, box=box, seed=seed)
        else:
            granularity = {"norms": norm_granularity, "layer_scales": "tensor", "channel_scales": "channel"}[place]
            parts[place] = ParameterSpace(model, select=select, granularity=granularity, scale=scale, box=box)
    return SearchSpace(parts)


def _escape(name: str) -> str:
    """A glob pattern that matches exactly ``name`` (brackets around the glob's special characters)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _in_parameter_order(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` that are parameters, in ``named_parameters`` order (a shared tensor under its first name)."""
    wanted = set(names)
    return [name for name, _ in model.named_parameters() if name in wanted]
