"""Placement: which blocks of a vision backbone get a Mixture-of-Experts MLP.

The rule names follow V-MoE (``vmoe/configs/vmoe_paper/common.py``), with 0-based block indices over
``L`` blocks:

- ``"every-n"``: blocks ``range(n - 1, L, n)``; L=12, ``every-2`` -> 1, 3, 5, 7, 9, 11.
- ``"last-n"``: the last ``n`` *odd-indexed* blocks, ``tuple(range(1, L, 2))[-n:]``;
  L=12, ``last-2`` -> 9, 11 (so ``last-n`` needs ``n <= L // 2``).
- ``"all"``: every block; ``"none"`` / ``"dense"``: no block (the dense model).
- an explicit list of block indices (negative indices count from the end, as in Python).

Names are case-insensitive and accept ``-``, ``_`` or nothing between the rule and ``n``
(``"Every-2"``, ``"last_2"``, ``"last2"``).

A backbone is described by its ``depths``: one entry per stage (``[12]`` for a ViT-B, ``[3, 3, 9, 3]``
for ConvNeXt-T). For hierarchical models the paper's convention is not known, so two scopes exist:

- ``scope="global"`` (default): blocks are numbered 0..L-1 over all stages in order, ``L = sum(depths)``,
  and the rule is applied once; an explicit list holds such global indices.
- ``scope="per-stage"``: the rule is applied inside every stage separately with ``L = depths[s]``; an
  explicit list holds block indices *within a stage* and is applied to every stage (``[-1]`` = the last
  block of each stage); each index must exist in every stage.

For a single-stage model (ViT) both scopes give the same blocks.

The result is a list of :class:`BlockRef` ``(stage, block, index)``: ``block`` is the index inside the
stage, ``index`` the global index; :func:`block_names` turns it into module names for logging.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from litlab.errors import ConfigError

__all__ = ["PLACEMENT_SCOPES", "BlockRef", "block_names", "resolve_placement"]

PLACEMENT_SCOPES = ("global", "per-stage")
_RULE = re.compile(r"^(every|last)[-_]?(\d+)$")
_ALLOWED = '"every-n", "last-n" (n >= 1), "all", "none", "dense", or a list of block indices'


class BlockRef(NamedTuple):
    """One block chosen for MoE.

    Attributes:
        stage: Stage index (always 0 for isotropic models such as ViT).
        block: Block index inside the stage.
        index: Global block index, counting the blocks of all stages in order.
    """

    stage: int
    block: int
    index: int


def _check_depths(depths: Sequence[int]) -> list[int]:
    depths = list(depths)
    if not depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in depths):
        raise ConfigError(f"depths={depths!r} is not allowed: expected a non-empty list of block counts >= 0")
    if sum(depths) == 0:
        raise ConfigError(f"depths={depths!r} is not allowed: the model has no blocks")
    return depths


def _rule_indices(name: str, n: int, length: int) -> list[int]:
    """Block indices selected by ``every-n`` / ``last-n`` among ``length`` blocks (V-MoE semantics)."""
    if name == "every":
        return list(range(n - 1, length, n))
    return list(range(1, length, 2))[-n:] if n > 0 else []


def _parse_name(placement: str) -> tuple[str, int]:
    key = placement.strip().lower()
    if key in ("none", "dense"):
        return "none", 0
    if key == "all":
        return "all", 0
    match = _RULE.match(key)
    if match is None:
        raise ConfigError(f"placement={placement!r} is not allowed: expected {_ALLOWED}")
    name, n = match.group(1), int(match.group(2))
    if n < 1:
        raise ConfigError(f"placement={placement!r} is not allowed: n must be >= 1 in {name}-n")
    return name, n


def _check_list(placement: Sequence[object]) -> list[int]:
    items = list(placement)
    bad = [i for i in items if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        raise ConfigError(f"placement={items!r} is not allowed: list items must be integers, got {bad!r}")
    return [int(i) for i in items]


def _normalise_indices(indices: list[int], length: int, where: str, placement: object) -> list[int]:
    out = []
    for i in indices:
        if not -length <= i < length:
            raise ConfigError(
                f"placement={placement!r} is not allowed: block index {i} is out of range for {where} "
                f"with {length} blocks (allowed: {-length}..{length - 1})"
            )
        out.append(i % length)
    seen: set[int] = set()
    dups = sorted({i for i in out if i in seen or seen.add(i)})
    if dups:
        raise ConfigError(f"placement={placement!r} is not allowed: duplicate block indices {dups} in {where}")
    return sorted(out)


def resolve_placement(
    placement: str | Sequence[int], depths: Sequence[int], scope: str = "global"
) -> list[BlockRef]:
    """Resolve a placement rule into the blocks that get an MoE layer.

    Args:
        placement: ``"every-n"``, ``"last-n"``, ``"all"``, ``"none"``/``"dense"``, or a list of block
            indices (global indices with ``scope="global"``, within-stage indices applied to every stage
            with ``scope="per-stage"``).
        depths: Number of blocks of each stage, e.g. ``[12]`` (ViT-B) or ``[3, 3, 9, 3]`` (ConvNeXt-T).
        scope: ``"global"`` numbers blocks over all stages; ``"per-stage"`` applies the rule in each stage.

    Returns:
        The chosen blocks, sorted by global index (empty for ``"none"``).

    Raises:
        ConfigError: unknown rule, ``n < 1``, ``n`` too large for the number of blocks, index out of
            range, duplicate indices, or an unknown ``scope``.
    """
    depths = _check_depths(depths)
    if scope not in PLACEMENT_SCOPES:
        raise ConfigError(f"placement_scope={scope!r} is not allowed: expected one of {list(PLACEMENT_SCOPES)}")
    starts = [sum(depths[:s]) for s in range(len(depths))]
    total = sum(depths)

    def from_global(indices: list[int]) -> list[BlockRef]:
        refs = []
        for g in indices:
            stage = max(s for s in range(len(depths)) if starts[s] <= g and depths[s] > 0)
            refs.append(BlockRef(stage, g - starts[stage], g))
        return refs

    if isinstance(placement, str):
        name, n = _parse_name(placement)
        if name == "none":
            return []
        if name == "all":
            return from_global(list(range(total)))
        if scope == "global":
            return from_global(_select(placement, name, n, total, "the model"))
        # per-stage: a stage may legitimately receive no block (e.g. every-4 in a stage of depth 3), but
        # the rule must be satisfiable: every-n must hit at least one stage, last-n every stage.
        if name == "every" and n > max(depths):
            raise ConfigError(
                f"placement={placement!r} is not allowed with placement_scope='per-stage': every-{n} selects "
                f"no block in stages of depths {depths} (n must be <= {max(depths)})"
            )
        refs = []
        for s, d in enumerate(depths):
            chosen = _select(placement, name, n, d, f"stage {s}") if name == "last" else _rule_indices(name, n, d)
            refs += [BlockRef(s, b, starts[s] + b) for b in chosen]
        return refs

    if not isinstance(placement, Sequence):
        raise ConfigError(f"placement={placement!r} is not allowed: expected {_ALLOWED}")
    indices = _check_list(placement)
    if scope == "global":
        return from_global(_normalise_indices(indices, total, "the model", placement))
    refs = []
    for s, d in enumerate(depths):
        local = _normalise_indices(indices, d, f"stage {s}", placement)
        refs += [BlockRef(s, b, starts[s] + b) for b in local]
    return refs


def _select(placement: str, name: str, n: int, length: int, where: str) -> list[int]:
    if name == "every" and n > length:
        raise ConfigError(
            f"placement={placement!r} is not allowed: every-{n} selects no block in {where} with {length} "
            f"blocks (n must be <= {length})"
        )
    if name == "last":
        odd = list(range(1, length, 2))
        if n > len(odd):
            raise ConfigError(
                f"placement={placement!r} is not allowed: last-n takes the last n odd-indexed blocks and "
                f"{where} with {length} blocks has only {len(odd)} ({odd}); n must be <= {len(odd)}"
            )
    return _rule_indices(name, n, length)


def block_names(refs: Sequence[BlockRef], hierarchical: bool, suffix: str = "") -> list[str]:
    """Module names of resolved blocks, for logging and checkpoints.

    Args:
        refs: Output of :func:`resolve_placement`.
        hierarchical: ``True`` for staged models (``"stages.2.blocks.5"``), ``False`` for isotropic
            models (``"blocks.9"``, using the global index).
        suffix: Appended to every name, e.g. ``".mlp"``.

    Returns:
        One name per block, in order.
    """
    if hierarchical:
        return [f"stages.{r.stage}.blocks.{r.block}{suffix}" for r in refs]
    return [f"blocks.{r.index}{suffix}" for r in refs]
