"""``litlab demo`` end to end at one epoch: both fits, the comparison table and the retrofit of the MoE model."""

from __future__ import annotations

import json

import pytest

from litlab.methods.demo import run_demo


@pytest.mark.slow
def test_demo_trains_compares_and_retrofits(tmp_path, capsys):
    results = run_demo(root_dir=str(tmp_path), max_epochs=1, retrofit_budget=4)
    out = capsys.readouterr().out
    assert "retrofit of the moe model" in out
    retrofit = results["moe"]["retrofit"]
    before, after = retrofit["selection_macro_f1"]
    assert after >= before  # the identity is evaluated first: never worse on the selection set
    assert retrofit["bits"] == 3  # comparisons only: one bit per evaluation after the identity
    assert json.loads((tmp_path / "results.json").read_text())["moe"]["retrofit"]["budget"] == 4
    assert (tmp_path / "moe" / "retrofit" / "report.json").is_file()
