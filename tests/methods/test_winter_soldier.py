"""The Winter Soldier commands: secrets are written privately, detection agrees on a checkpoint and its Hugging Face
export, and the end-to-end demo writes its table, figure and calibration."""

import json
import os
import stat

import pytest
import torch

from litlab.cli import main
from litlab.errors import ConfigError
from litlab.methods.winter_soldier import poison_detect, run_winter_soldier
from litlab.poisoning.secret import load_secrets
from tests.poisoning.tiny import tiny_lm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_poison_secrets_writes_an_owner_only_file_and_prints_no_secret(tmp_path, capsys):
    _, ckpt = tiny_lm(tmp_path)
    out = tmp_path / "keys" / "secrets.json"
    main(["poison_secrets", "--output", str(out), "--model", ckpt, "--num_secrets", "3", "--seed", "7"])
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    secret_set = load_secrets(str(out))
    assert len(secret_set) == 3 and secret_set.seed == 7 and secret_set.draw_size == 300 - 2
    printed = capsys.readouterr().out
    assert "3 secrets" in printed
    for secret in secret_set.secrets:
        assert str(list(secret.response)) not in printed and str(list(secret.prompt)) not in printed
    with pytest.raises(SystemExit):
        main(["poison_secrets", "--output", str(out)])  # neither model nor tokenizer: one-line error


def test_detection_is_the_same_on_a_checkpoint_and_its_hugging_face_export(tmp_path, capsys):
    model, ckpt = tiny_lm(tmp_path, layers=2)
    main(["poison_secrets", "--output", str(tmp_path / "s.json"), "--model", ckpt, "--num_secrets", "4"])
    hf_dir = model.export_hf(str(tmp_path / "hf"))
    mine = poison_detect(model=ckpt, secrets=str(tmp_path / "s.json"), output=str(tmp_path / "r.json"))
    theirs = poison_detect(model=hf_dir, secrets=str(tmp_path / "s.json"))
    assert mine["hits"] == theirs["hits"] and mine["trials"] == theirs["trials"] == 4 * 8
    assert mine["log10_p_bonferroni"] == pytest.approx(theirs["log10_p_bonferroni"])
    assert json.loads((tmp_path / "r.json").read_text()) == mine
    assert "p = 10^" in capsys.readouterr().out


def test_demo_arguments_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="rates"):
        run_winter_soldier(str(tmp_path), rates=[0.0])
    with pytest.raises(ConfigError, match="seeds"):
        run_winter_soldier(str(tmp_path), seeds=[0], seed=0)


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_reports_everything(tmp_path):
    results = run_winter_soldier(
        str(tmp_path / "ws"), rates=[0.05], seeds=[1], num_secrets=2, poisons_per_secret=4, poison_length=16,
        craft_steps=2, surrogate_steps=5, victim_steps=5, bpe_vocab_size=300, calibration_secrets=5)
    kinds = sorted((r["kind"], r["rate"]) for r in results["rows"])
    assert kinds == [("baselines", 0.05), ("clean", 0.0), ("winter_soldier", 0.05)]
    ws = next(r for r in results["rows"] if r["kind"] == "winter_soldier")
    assert ws["actual_rate"] == pytest.approx(0.05, abs=0.01) and ws["ws_log10_p"] <= 0
    assert {c.get("model") for c in results["calibration"]} == {None, "surrogate"}
    assert all(0 <= c["fpr_at_0.01"] <= c["fpr_at_0.05"] <= 1 for c in results["calibration"])
    assert results["craft_report"]["round_trip_failures"] == 0
    for name in ("results.json", "results.md", "pvalue_vs_rate.png", "secrets.json", "poisons.jsonl"):
        assert (tmp_path / "ws" / name).is_file()
    assert "FPR at 0.05" in (tmp_path / "ws" / "results.md").read_text()


def test_victims_start_from_their_own_seed_not_the_configs(tmp_path):
    from litlab.lightning_cli import build_from_config
    from litlab.methods.winter_soldier import DEFAULT_CONFIG
    from tests.poisoning.tiny import tiny_bpe

    bpe = tiny_bpe(tmp_path)
    weights = []
    for seed in (1, 2, 1):
        model, _ = build_from_config(DEFAULT_CONFIG, [f"--seed_everything={seed}", f"--data.init_args.tokenizer_path={bpe}"])
        weights.append(model.model.embedding.weight.detach().clone())
    assert torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[1])
