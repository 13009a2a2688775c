from __future__ import annotations

import numpy as np
import pytest
import torch

from litlab.errors import ConfigError
from litlab.evolution import Fitness

from .conftest import accuracy, tiny_data, tiny_model


def test_mean_over_all_examples_and_mode():
    model, data = tiny_model(), tiny_data(n=100, batch_size=32)  # uneven last batch: mean over examples
    expected = torch.cat([accuracy(model, b) for b in data]).mean().item()
    value = Fitness(accuracy).evaluate(model, data)
    assert value.value == pytest.approx(expected) and value.num_examples == 100
    assert Fitness(accuracy, mode="min").score(0.25) == -0.25
    lists = Fitness(lambda m, b: accuracy(m, b).tolist()).evaluate(model, data)
    assert lists.value == pytest.approx(expected)


def macro_f1(outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    predictions = torch.cat([p for p, _ in outputs])
    targets = torch.cat([t for _, t in outputs])
    scores = []
    for c in range(3):
        tp = ((predictions == c) & (targets == c)).sum().item()
        fp = ((predictions == c) & (targets != c)).sum().item()
        fn = ((predictions != c) & (targets == c)).sum().item()
        scores.append(2 * tp / max(1, 2 * tp + fp + fn))
    return float(np.mean(scores))


def test_custom_aggregate_sees_all_outputs():
    model, data = tiny_model(), tiny_data()
    fitness = Fitness(lambda m, b: (m(b[0]).argmax(-1), b[1]), aggregate=macro_f1)
    value = fitness.evaluate(model, data)
    assert 0.0 <= value.value <= 1.0 and value.num_examples == 128
    assert Fitness(lambda m, b: {"x": 1}, aggregate=lambda outs: 0.5).evaluate(model, data).num_examples is None


def test_nan_passes_through_and_empty_selection_is_an_error():
    model = tiny_model()
    nan = Fitness(lambda m, b: torch.full((4,), float("nan"))).evaluate(model, tiny_data())
    assert np.isnan(nan.value)
    with pytest.raises(ConfigError, match="empty"):
        Fitness(accuracy).evaluate(model, [])
    with pytest.raises(ConfigError, match="mode"):
        Fitness(accuracy, mode="maximize")
    with pytest.raises(ConfigError, match="callable"):
        Fitness("accuracy")
