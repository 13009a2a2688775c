"""``litlab compare_lms`` trains every config for the same FLOPs and reports one row each."""

from __future__ import annotations

import json

import pytest

from litlab.errors import ConfigError
from litlab.methods.compare_lms import (
    DEFAULT_CONFIGS,
    compare_language_models,
    format_table,
)


@pytest.mark.slow
def test_compare_trains_each_model_to_the_same_budget_and_writes_the_table(tmp_path, capsys):
    rows = compare_language_models(train_flops=3e10, output=str(tmp_path), char_examples=1,
                                   bpe_vocab_size=512, test_batches=1)
    assert [r["config"] for r in rows] == ["aunet2_tiny", "aunet3_tiny", "bpe_tiny", "bytes_tiny"]
    for r in rows:
        # the steps are the budget over the cost of one step, rounded: within half a step of the budget
        per_step = r["train_flops"] / r["steps"]
        assert abs(r["train_flops"] - 3e10) <= per_step / 2 + 1
        assert 0 < r["test_bpb"] < 10
        assert 0 <= r["char_tasks"]["mean"] <= 1
    assert json.loads((tmp_path / "compare.json").read_text())[0]["config"] == "aunet2_tiny"
    assert "| aunet3_tiny |" in capsys.readouterr().out
    assert format_table(rows).count("\n") == 5


def test_bad_arguments():
    with pytest.raises(ConfigError, match="train_flops"):
        compare_language_models(train_flops=0)
    with pytest.raises(ConfigError, match="no such file"):
        compare_language_models(configs=["/nope.yaml"])
    assert len(DEFAULT_CONFIGS) == 4
