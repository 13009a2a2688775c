"""Nevergrad optimizers by name, seeded and picklable.

Any name of ``ng.optimizers.registry`` works (``OnePlusOne``, ``DiscreteLenglerOnePlusOne``,
``DiscreteOnePlusOne``, ``CMA``, ``DiagonalCMA``, ``TwoPointsDE``, ``NGOpt``, ``RandomSearch``,
``PortfolioDiscreteOnePlusOne``, ``Zero``, ...). nevergrad draws all its randomness from
``parametrization.random_state``; seeding it before the optimizer is built makes the sequence of candidates
a function of the seed and of the told losses. ``enable_pickling()`` is called before the first ask (the
recast optimizers such as Cobyla need it), so every optimizer can be pickled for checkpoints; the pickle
holds that random state.

nevergrad quirk: ``NGOpt`` picks ``MetaModel`` for 2-5 continuous parameters, and ``MetaModel`` crashes
with numpy >= 2.4 in nevergrad 1.0.12 (hence ``numpy<2.4`` in setup.cfg; a test guards it).
"""

from __future__ import annotations

import difflib

import nevergrad as ng
import numpy as np

from litlab.errors import ConfigError


def optimizer_names() -> list[str]:
    """All registered nevergrad optimizer names, sorted."""
    return sorted(ng.optimizers.registry)


def check_optimizer_name(name: str) -> str:
    """Returns ``name`` if nevergrad knows it, else raises ConfigError listing close matches."""
    registry = ng.optimizers.registry
    if isinstance(name, str) and name in registry:
        return name
    by_lower = {key.lower(): key for key in registry}
    if isinstance(name, str) and name.lower() in by_lower:
        close = [by_lower[name.lower()]]
    else:
        lowered = difflib.get_close_matches(str(name).lower(), list(by_lower), n=5, cutoff=0.6)
        close = [by_lower[key] for key in lowered]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see litlab.evolution.optimizer_names()"
    raise ConfigError(f"optimizer={name!r} is not a nevergrad optimizer{hint}")


def make_optimizer(
    name: str, parametrization: ng.p.Parameter, budget: int, num_workers: int, seed: int
) -> ng.optimizers.base.Optimizer:
    """A seeded nevergrad optimizer over ``parametrization`` (which it takes ownership of).

    Args:
        name: A name of ``ng.optimizers.registry``.
        parametrization: A fresh nevergrad parameter (not shared with another optimizer).
        budget: Number of evaluations, ``>= 1``.
        num_workers: Candidates asked before they are told, ``>= 1``.
        seed: Seed of ``parametrization.random_state``, ``>= 0``.
    """
    check_optimizer_name(name)
    for key, value in (("budget", budget), ("num_workers", num_workers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    parametrization.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.registry[name](parametrization=parametrization, budget=budget,
                                             num_workers=num_workers)
    optimizer.enable_pickling()
    return optimizer
