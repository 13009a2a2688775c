"""`HyperParameters`: bounded scalars or arrays (a temperature, thresholds, per-class logit biases, decoding
settings) that the fitness function reads while a candidate is in effect.

The object is shared: build it, put it in the :class:`~litlab.evolution.SearchSpace`, and read it in the
fitness function (or the model's forward)::

    hp = HyperParameters({"temperature": (1.0, 0.1, 10.0), "bias": ([0.0] * 10, -2.0, 2.0)},
                         log_scale=["temperature"])
    def accuracy(model, batch):
        x, y = batch
        logits = model(x) / hp["temperature"] + torch.as_tensor(hp["bias"], dtype=torch.float32)
        return (logits.argmax(-1) == y).float()

``hp[name]`` is a ``float`` for a scalar and a float64 ``numpy`` array for an array; outside an evaluation it
holds the defaults (or the best values once the engine has applied them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from litlab.errors import ConfigError
from litlab.evolution.parameter_space import bounce
from litlab.evolution.search_space import SpacePart

Spec = tuple[Any, Any, Any]


class HyperParameters(SpacePart):
    """Named bounded hyperparameters, each ``(default, lower, upper)``; the default is the identity.

    Searched like nevergrad's bounded ``Scalar``/``Array`` (``Log`` on a log scale): a standardized coordinate
    ``u`` gives ``default + u·(upper − lower)/6`` (``default · ((upper/lower)^(1/6))^u``), reflected once at the
    bounds and clipped.

    Args:
        specs: ``name -> (default, lower, upper)``. ``default`` is a number (a scalar hyperparameter) or a
            list/array (an array hyperparameter); ``lower`` and ``upper`` are numbers or arrays of the
            default's shape, with ``lower < upper`` and the default inside.
        log_scale: Names searched on a log scale (all bounds positive), e.g. a temperature.
    """

    def __init__(self, specs: Mapping[str, Spec], log_scale: Sequence[str] = ()) -> None:
        if not isinstance(specs, Mapping) or not specs:
            raise ConfigError(f"specs must be a non-empty mapping name -> (default, lower, upper), got {specs!r}")
        log_scale = (log_scale,) if isinstance(log_scale, str) else tuple(log_scale)
        unknown = sorted(set(log_scale) - set(specs))
        if unknown:
            raise ConfigError(f"log_scale names {unknown} are not hyperparameters; known: {sorted(specs)}")
        self.log_scale = log_scale
        self.defaults: dict[str, float | np.ndarray] = {}
        self.limits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, spec in specs.items():
            self._add(name, spec)
        self._current: dict[str, float | np.ndarray] = self.identity()

    def _add(self, name: str, spec: Spec) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"specs: names must be non-empty strings, got {name!r}")
        if not isinstance(spec, Sequence) or isinstance(spec, str) or len(spec) != 3:
            raise ConfigError(f"specs[{name!r}] must be (default, lower, upper), got {spec!r}")
        try:
            default = np.asarray(spec[0], dtype=np.float64)
            lower = np.broadcast_to(np.asarray(spec[1], dtype=np.float64), default.shape).copy()
            upper = np.broadcast_to(np.asarray(spec[2], dtype=np.float64), default.shape).copy()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"specs[{name!r}]={spec!r}: default, lower, upper must be numbers or arrays "
                              f"of one shape ({err})") from err
        if default.size == 0 or not (np.isfinite(default).all() and np.isfinite(lower).all()
                                     and np.isfinite(upper).all()):
            raise ConfigError(f"specs[{name!r}]={spec!r}: values must be finite and non-empty")
        if not (lower < upper).all() or not ((lower <= default) & (default <= upper)).all():
            raise ConfigError(f"specs[{name!r}]={spec!r}: need lower < upper and lower <= default <= upper")
        if name in self.log_scale and not (lower > 0).all():
            raise ConfigError(f"specs[{name!r}]={spec!r}: a log_scale hyperparameter needs positive bounds")
        self.defaults[name] = float(default) if default.ndim == 0 else default
        self.limits[name] = (lower, upper)

    @property
    def dimension(self) -> int:
        return sum(np.size(v) for v in self.defaults.values())

    def decode(self, u: np.ndarray) -> dict[str, float | np.ndarray]:
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        values: dict[str, float | np.ndarray] = {}
        start = 0
        for name, default in self.defaults.items():
            size = np.size(default)
            ui = u[start:start + size].reshape(np.shape(default))
            start += size
            lower, upper = self.limits[name]
            if name in self.log_scale:  # bounce in log space, like ng.p.Log
                step = np.log(upper / lower) / 6
                value = np.exp(bounce(np.log(default) + step * ui, np.log(lower), np.log(upper)))
            else:
                value = bounce(default + (upper - lower) / 6 * ui, lower, upper)
            value = np.where(ui == 0, default, value)  # the identity exactly, whatever the rounding of exp(log)
            values[name] = float(value) if isinstance(default, float) else value
        return values

    def encode(self, value: Mapping[str, Any]) -> np.ndarray:
        parts = []
        for name, default in self.defaults.items():
            lower, upper = self.limits[name]
            v = np.asarray(value[name], dtype=np.float64)
            if name in self.log_scale:
                parts.append((np.log(v) - np.log(default)) / (np.log(upper / lower) / 6))
            else:
                parts.append((v - default) / ((upper - lower) / 6))
        return np.concatenate([np.reshape(p, -1) for p in parts])

    def identity(self) -> dict[str, float | np.ndarray]:
        return {name: (value.copy() if isinstance(value, np.ndarray) else value)
                for name, value in self.defaults.items()}

    def apply(self, value: Mapping[str, Any]) -> dict[str, float | np.ndarray]:
        current = {}
        for name, default in self.defaults.items():
            if name not in value:
                raise ConfigError(f"hyperparameter value lacks {name!r}; it has {sorted(value)}")
            current[name] = float(value[name]) if isinstance(default, float) else np.asarray(value[name], float)
        previous, self._current = self._current, current
        return previous

    def restore(self, token: dict[str, float | np.ndarray]) -> None:
        self._current = token

    def __getitem__(self, name: str) -> float | np.ndarray:
        return self._current[name]

    @property
    def values(self) -> dict[str, float | np.ndarray]:
        """The values now in effect (a copy)."""
        return dict(self._current)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "defaults": self.to_jsonable(self.defaults),
            "lower": {name: limits[0].tolist() for name, limits in self.limits.items()},
            "upper": {name: limits[1].tolist() for name, limits in self.limits.items()},
            "log_scale": list(self.log_scale),
        }
