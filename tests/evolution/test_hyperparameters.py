from __future__ import annotations

import numpy as np
import pytest

from litlab.errors import ConfigError
from litlab.evolution import HyperParameters


def test_defaults_apply_restore_and_bounds():
    hp = HyperParameters({"temperature": (1.0, 0.1, 10.0), "bias": ([0.0, 0.5], -1.0, [1.0, 2.0])},
                         log_scale="temperature")
    assert hp.dimension == 3
    assert hp["temperature"] == 1.0 and np.array_equal(hp["bias"], [0.0, 0.5])
    token = hp.apply({"temperature": 2.5, "bias": np.array([0.2, -0.3])})
    assert hp["temperature"] == 2.5 and np.array_equal(hp["bias"], [0.2, -0.3])
    hp.restore(token)
    assert hp.values["temperature"] == 1.0
    identity = hp.decode(np.zeros(3))
    assert identity["temperature"] == 1.0 and identity["bias"].tolist() == [0.0, 0.5]
    assert hp.encode(hp.identity()).tolist() == [0.0, 0.0, 0.0]
    decoded = hp.decode(np.array([1.0, 1.0, -1.0]))
    assert decoded["temperature"] == pytest.approx(100 ** (1 / 6))  # one sixth of the log-range
    assert decoded["bias"].tolist() == pytest.approx([1 / 3, 0.0])  # one sixth of the range
    assert hp.encode(decoded) == pytest.approx([1.0, 1.0, -1.0])
    samples = [hp.decode(u) for u in np.random.default_rng(0).normal(size=(300, 3)) * 2]
    temps = np.array([s["temperature"] for s in samples])
    biases = np.array([s["bias"] for s in samples])
    assert temps.min() >= 0.1 and temps.max() <= 10.0 and 0.6 < np.median(temps) < 1.6  # geometric around 1
    assert temps.max() > 9 and biases.min() < -0.9  # bounded by bouncing, not by rejecting
    assert (biases >= [-1.0, -1.0]).all() and (biases <= [1.0, 2.0]).all()


@pytest.mark.parametrize(("specs", "message"), [
    ({}, "non-empty"),
    ({"t": (1.0, 2.0, 3.0)}, "default <= upper"),
    ({"t": (1.0, 1.0, 1.0)}, "lower < upper"),
    ({"t": (1.0, 0.1)}, r"\(default, lower, upper\)"),
    ({"t": (float("nan"), 0.0, 1.0)}, "finite"),
    ({"t": ([0.0, 0.0], [0.0, 0.0, 0.0], 1.0)}, "one shape"),
])
def test_invalid_specs(specs, message):
    with pytest.raises(ConfigError, match=message):
        HyperParameters(specs)


def test_log_scale_needs_positive_bounds_and_known_names():
    with pytest.raises(ConfigError, match="positive"):
        HyperParameters({"t": (0.5, 0.0, 1.0)}, log_scale=["t"])
    with pytest.raises(ConfigError, match="not hyperparameters"):
        HyperParameters({"t": (0.5, 0.1, 1.0)}, log_scale=["temp"])
