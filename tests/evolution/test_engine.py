from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from litlab.errors import ConfigError
from litlab.evolution import (
    EvolutionEngine,
    Fitness,
    HyperParameters,
    ParameterSpace,
    SearchSpace,
)

from .conftest import accuracy, tiny_data, tiny_model


def make_engine(model=None, **kwargs) -> EvolutionEngine:
    model = model if model is not None else tiny_model()
    space = SearchSpace({"scales": ParameterSpace(model, select="blocks.*", granularity="tensor", scale=0.3)})
    options = {"optimizer": "OnePlusOne", "budget": 24, "seed": 0, **kwargs}
    return EvolutionEngine(model, space, Fitness(accuracy), **options)


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_identity_first_never_worse_and_best_applied():
    model, data = tiny_model(), tiny_data()
    original = params(model)
    before = Fitness(accuracy).evaluate(model, data).value
    result = make_engine(model).run(data)
    assert result.history[0]["index"] == 0 and result.history[0]["fitness"] == before == result.selection_before
    assert result.selection_after >= result.selection_before
    assert result.selection_after == max(r["fitness"] for r in result.history)
    assert [r["best"] for r in result.history] == list(np.maximum.accumulate([r["fitness"] for r in result.history]))
    assert Fitness(accuracy).evaluate(model, data).value == result.selection_after  # best left applied
    assert result.best_index > 0 and not torch.equal(params(model)["blocks.0.norm.weight"],
                                                     original["blocks.0.norm.weight"])


def test_apply_best_false_leaves_the_model_bitwise_unchanged():
    model, data = tiny_model(), tiny_data()
    original = params(model)
    model.train()
    make_engine(model, apply_best=False, num_workers=3).run(data)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert model.training  # the training flag is restored


@pytest.mark.parametrize("feedback", ["value", "comparison"])
def test_same_seed_same_run_and_population(feedback):
    data = tiny_data()
    a = make_engine(num_workers=3, feedback=feedback, budget=20).run(data)
    b = make_engine(num_workers=3, feedback=feedback, budget=20).run(data)
    c = make_engine(num_workers=3, feedback=feedback, budget=20, seed=1).run(data)
    assert a.history == b.history and a.best_json == b.best_json
    assert a.best_json != c.best_json or a.history != c.history
    assert [r["step"] for r in a.history] == [i // 3 for i in range(20)]  # 6 steps of 3, then 2
    assert a.num_evaluations == 20


def test_bits_and_bound():
    data = tiny_data()
    comparison = make_engine(feedback="comparison", budget=21).run(data)
    assert comparison.bits == pytest.approx(20.0)  # one bit per step after the identity
    assert comparison.num_examples == 128
    assert comparison.generalization_gap == pytest.approx(np.sqrt((20 * np.log(2) + np.log(2 / 0.05)) / 256))
    value = make_engine(feedback="value", budget=21).run(data)
    assert value.bits == pytest.approx(21 * np.log2(129))
    population = make_engine(feedback="comparison", budget=7, num_workers=3).run(data)
    assert population.bits == pytest.approx(np.log2(6) + np.log2(24) + np.log2(2))  # 3!, then 4!, then 2!


def test_nan_during_the_run_is_the_worst_and_counted():
    model, data = tiny_model(), tiny_data()
    space = ParameterSpace(model, select="head.bias", granularity="tensor", mode="additive", scale=1.0)

    def fragile(model, batch):
        scores = accuracy(model, batch)
        return scores if float(model.head.bias.mean()) < 0.2 + float(base.mean()) else scores * float("nan")

    base = model.head.bias.detach().clone()
    result = EvolutionEngine(model, space, fragile, optimizer="RandomSearch", budget=30, seed=0).run(data)
    nan_records = [r for r in result.history if r["nan"]]
    assert result.nan_count == len(nan_records) > 0 and all(r["fitness"] is None for r in nan_records)
    assert np.isfinite(result.selection_after)


def test_nan_on_the_identity_is_a_config_error():
    model = tiny_model()
    engine = EvolutionEngine(model, ParameterSpace(model, select="head.*"), lambda m, b: torch.full((2,), np.nan),
                             optimizer="OnePlusOne", budget=5)
    with pytest.raises(ConfigError, match="unmodified model"):
        engine.run(tiny_data())


def test_heldout_report_json_and_png(tmp_path):
    model, data = tiny_model(), tiny_data()
    heldout = tiny_data(seed=5)
    hp = HyperParameters({"temperature": (1.0, 0.2, 5.0)}, log_scale=["temperature"])
    space = SearchSpace({"norms": ParameterSpace(model, module_type=torch.nn.LayerNorm, select="*.weight",
                                                 granularity="channel", scale=0.2), "hp": hp})
    seen = []
    engine = EvolutionEngine(model, space, accuracy, optimizer="DiagonalCMA", budget=12, num_workers=4,
                             heldout=lambda m: Fitness(accuracy).evaluate(m, heldout).value,
                             on_evaluation=seen.append)
    result = engine.run(data)
    assert len(seen) == 12 and result.heldout_before is not None and result.heldout_after is not None
    assert result.heldout_after == Fitness(accuracy).evaluate(model, heldout).value
    report = json.loads(result.to_json(tmp_path / "report.json").read_text())
    assert report["best"]["hp"]["temperature"] == result.best["hp"]["temperature"]
    assert set(report["best"]["norms"]) == {"blocks.0.norm.weight", "blocks.1.norm.weight"}
    assert report["generalization_gap"] == result.generalization_gap and len(report["history"]) == 12
    png = result.plot(tmp_path / "fitness.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize(("num_workers", "crash_at"), [(1, 13), (3, 10)])
def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path, num_workers, crash_at):
    data = tiny_data()
    options = {"optimizer": "TwoPointsDE", "budget": 24, "num_workers": num_workers, "checkpoint_every": 4}
    reference_model = tiny_model()
    reference = make_engine(reference_model, **options).run(data)

    calls = []

    def crashing(model, batch):
        if batch is data[0]:
            calls.append(1)
            if len(calls) == crash_at + 1:
                raise Boom
        return accuracy(model, batch)

    path = tmp_path / "state.pt"
    model = tiny_model()
    original = params(model)
    space = SearchSpace({"scales": ParameterSpace(model, select="blocks.*", granularity="tensor", scale=0.3)})
    with pytest.raises(Boom):
        EvolutionEngine(model, space, Fitness(crashing), checkpoint_path=path, **options).run(data)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())  # restored despite the crash
    saved = torch.load(path, weights_only=True)
    assert 0 < saved["num_evaluations"] <= crash_at and saved["num_evaluations"] % num_workers == 0

    evaluated = []
    space = SearchSpace({"scales": ParameterSpace(model, select="blocks.*", granularity="tensor", scale=0.3)})
    counting = Fitness(lambda m, b: evaluated.append(b is data[0]) or accuracy(m, b))
    resumed = EvolutionEngine(model, space, counting, checkpoint_path=path, **options).run(data)
    assert sum(evaluated) == 24 - saved["num_evaluations"]  # continued from the checkpoint, not from scratch
    assert resumed.history == reference.history
    assert resumed.best_json == reference.best_json
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference_model.parameters(), strict=True))


def test_state_dict_mid_run_through_torch_save_continues_exactly():
    data = tiny_data()
    reference = make_engine(budget=12, num_workers=2).run(data)
    first = make_engine(budget=12, num_workers=2)
    for _ in range(3):  # drive the loop by hand, as an online or callback user would
        first.tell([first.evaluate(value, data) for value in first.ask()])
    pending = first.ask()
    with pytest.raises(RuntimeError, match="pending"):
        first.state_dict()
    first.tell([first.evaluate(value, data) for value in pending])
    buffer = io.BytesIO()
    torch.save({"evolution": first.state_dict()}, buffer)  # what a Lightning checkpoint does
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["evolution"]
    assert state["num_evaluations"] == 8
    second = make_engine(budget=12, num_workers=2)
    second.load_state_dict(state)
    result = second.run(data)
    assert result.history == reference.history and result.best_json == reference.best_json
    with pytest.raises(ConfigError, match="seed: saved 0, engine 1"):
        make_engine(budget=12, num_workers=2, seed=1).load_state_dict(state)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"optimizer": "NGopt2"}, "did you mean"),
    ({"budget": 0}, "budget"),
    ({"num_workers": 0}, "num_workers"),
    ({"feedback": "bits"}, "feedback"),
    ({"delta": 0.0}, "delta"),
])
def test_invalid_engine_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_engine(**kwargs)


def test_selection_must_be_reiterable_and_space_must_belong_to_the_model():
    with pytest.raises(ConfigError, match="re-iterable"):
        make_engine().run(iter(tiny_data()))
    other = tiny_model()
    with pytest.raises(ConfigError, match="not parameters of the given model"):
        EvolutionEngine(tiny_model(), ParameterSpace(other, select="head.*"), accuracy)
