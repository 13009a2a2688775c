from __future__ import annotations

import math

import pytest

from litlab.errors import ConfigError
from litlab.evolution import (
    best_of_runs_bits,
    comparison_bits,
    generalization_gap,
    value_bits,
)


@pytest.mark.parametrize(("bits", "gap"), [(100, 0.070), (300, 0.119), (1200, 0.236)])
def test_methods_worked_numbers(bits, gap):
    # BBoxER (arXiv 2507.01752): n = 7473 (GSM8K train), delta = 0.05, one bit per step
    assert round(generalization_gap(bits, 7473, 0.05), 3) == gap


def test_bits_per_step():
    assert comparison_bits(1) == 1.0  # (1+1): better or not
    assert comparison_bits(1, has_incumbent=False) == 0.0
    assert comparison_bits(3) == pytest.approx(math.log2(24))
    assert value_bits(2, 7473) == pytest.approx(2 * math.log2(7474))
    assert best_of_runs_bits(4) == 2.0
    # full ranking of 10 candidates per step is vacuous by 1200 steps (arXiv 2507.01752)
    assert generalization_gap(1200 * comparison_bits(9), 7473) > 1


def test_invalid_arguments():
    with pytest.raises(ConfigError, match="n must"):
        generalization_gap(10, 0)
    with pytest.raises(ConfigError, match="delta"):
        generalization_gap(10, 100, delta=1.0)
    with pytest.raises(ConfigError, match="bits"):
        generalization_gap(-1, 100)


def test_the_engine_does_not_import_lightning():
    """``litlab.evolution`` stays plain PyTorch + nevergrad: the Lightning callbacks wrap it."""
    from pathlib import Path

    import litlab.evolution

    for path in Path(litlab.evolution.__file__).parent.glob("*.py"):
        lines = [line.strip() for line in path.read_text().splitlines()]
        assert not [line for line in lines if line.startswith(("import lightning", "from lightning"))], path
