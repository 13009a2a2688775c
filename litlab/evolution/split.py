"""The selection/held-out split of every evolutionary method.

The optimizer is scored on the *selection* set; the disjoint *held-out* set only reports the result (and, with
the safeguard of :mod:`litlab.evolution.safeguard`, vetoes it). The split is of example *indices*: a
permutation drawn from ``numpy.random.RandomState(seed)``, whose first ``num_selection`` entries are the
selection set and the next ``num_heldout`` the held-out set; both parts are sorted. It depends on
``(size, num_selection, num_heldout, seed)`` only, never on the number of processes, so every DDP rank computes
the same split and then takes its shard (:func:`litlab.evolution.shard`).
"""

from __future__ import annotations

import numpy as np

from litlab.errors import ConfigError


def selection_split(
    size: int, num_selection: int, num_heldout: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint selection and held-out indices into ``size`` examples.

    Args:
        size: Number of examples available.
        num_selection: Examples of the selection set (>= 1).
        num_heldout: Examples of the held-out set (>= 0); ``None``: every example not in the selection set.
        seed: Seed of the permutation.

    Returns:
        ``(selection, heldout)`` index arrays (int64, sorted).

    Raises:
        ConfigError: when a count is not allowed or the two parts need more than ``size`` examples.
    """
    for name, value, low in (("num_selection", num_selection, 1), ("num_heldout", num_heldout, 0)):
        if value is None and name == "num_heldout":
            continue
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name}={value!r} is not allowed: must be an integer >= {low}")
    heldout = size - num_selection if num_heldout is None else num_heldout
    if num_selection + heldout > size:
        raise ConfigError(f"num_selection + num_heldout = {num_selection + heldout} exceeds the {size} examples "
                          "available")
    permutation = np.random.RandomState(seed).permutation(size)
    return np.sort(permutation[:num_selection]), np.sort(permutation[num_selection:num_selection + heldout])


def fraction_split(size: int, selection_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`selection_split` with ``round(size · selection_fraction)`` selection examples and the rest held out.

    Args:
        size: Number of examples available.
        selection_fraction: Share of them in the selection set, in ``(0, 1]`` (1: no held-out set).
        seed: Seed of the permutation.

    Raises:
        ConfigError: when a part would be empty although it is asked for.
    """
    if not (isinstance(selection_fraction, int | float) and 0.0 < selection_fraction <= 1.0):
        raise ConfigError(f"selection_fraction={selection_fraction!r} is not allowed: it must be in (0, 1]")
    count = round(size * selection_fraction)
    if count < 1 or (selection_fraction < 1.0 and count >= size):
        raise ConfigError(f"selection_fraction={selection_fraction!r} of a set of {size} example(s) "
                          f"leaves an empty {'selection' if count < 1 else 'held-out'} set")
    return selection_split(size, count, None, seed)
