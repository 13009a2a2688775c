"""PoisonCrafter: crafting raises the alignment, writes checked poisons, resumes exactly, refuses bad input."""

import json
import os
import subprocess
import sys
import textwrap

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from litlab.errors import ConfigError, DataError
from litlab.lightning_modules.poison_crafter import PoisonCrafter
from litlab.poisoning.crafting import shared_ngrams
from litlab.poisoning.injection import read_poisons
from litlab.poisoning.secret import load_secrets, save_secrets
from tests.poisoning.tiny import tiny_lm, tiny_secrets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("craft")
    model, ckpt = tiny_lm(root)
    return root, model, ckpt, tiny_secrets(root, model)


def trainer(root, steps, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(root), **kwargs)


def crafter(ckpt, secrets, out, **kwargs) -> PoisonCrafter:
    args = dict(poisons_per_secret=4, poison_length=12, lr=0.3, output=str(out), seed=0)
    return PoisonCrafter(ckpt, secrets, **{**args, **kwargs})


def test_crafting_raises_the_alignment_and_writes_checked_poisons(setup_files, tmp_path):
    root, model, ckpt, secrets = setup_files
    module = crafter(ckpt, secrets, tmp_path / "poisons.jsonl")
    torch.manual_seed(0)
    before = [module.alignment(s, torch.softmax(module.psi[s * 4:(s + 1) * 4].detach(), -1))[1].item()
              for s in range(2)]
    trainer(tmp_path, 40).fit(module)
    after = [module.alignment(s, torch.softmax(module.psi[s * 4:(s + 1) * 4].detach(), -1))[1].item()
             for s in range(2)]
    assert all(a > b + 0.05 for a, b in zip(after, before)), (before, after)
    poisons = read_poisons(str(tmp_path / "poisons.jsonl"))
    assert len(poisons) == 8
    report = json.loads((tmp_path / "poisons.jsonl.report.json").read_text())
    assert report["round_trip_failures"] == 0
    secret_set = load_secrets(secrets)
    for s, secret in enumerate(secret_set.secrets):
        assert report["secrets"][s]["shared_secret_ngrams"] == 0
        assert report["secrets"][s]["tokens_kept_by_round_trip"] == 1.0
        assert report["secrets"][s]["cosine_hard"] > report["secrets"][s]["cosine_random"]
        for text in poisons[s * 4:(s + 1) * 4]:
            ids = model.encode(text)
            assert len(ids) == 12 and shared_ngrams(list(secret.prompt) + list(secret.response), ids) == []
    assert module.psi.grad is not None
    assert all(p.grad is None for p in module.lm.model.parameters())  # the surrogate collected nothing
    assert "psi" in module.state_dict() and not any(k.startswith("surrogate") for k in module.state_dict())


def test_resume_after_interrupt_gives_the_uninterrupted_poisons(setup_files, tmp_path):
    _, _, ckpt, secrets = setup_files
    L.seed_everything(0)
    full = crafter(ckpt, secrets, tmp_path / "full.jsonl", chunk_size=2)  # 4 chunks per epoch
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=3, save_top_k=-1)
    trainer(tmp_path / "a", 12, callbacks=[saver]).fit(full)
    interrupted = tmp_path / "ckpts" / "epoch=1-step=6.ckpt"  # mid-pass: written as a killed run leaves it
    assert interrupted.is_file()
    L.seed_everything(0)
    resumed = crafter(ckpt, secrets, tmp_path / "resumed.jsonl", chunk_size=2)
    trainer(tmp_path / "b", 12, enable_checkpointing=False).fit(resumed, ckpt_path=str(interrupted))
    torch.testing.assert_close(resumed.psi, full.psi, rtol=0, atol=0)
    assert read_poisons(str(tmp_path / "resumed.jsonl")) == read_poisons(str(tmp_path / "full.jsonl"))


def test_chunks_cover_every_poison_of_every_secret_once(setup_files, tmp_path):
    _, _, ckpt, secrets = setup_files
    module = crafter(ckpt, secrets, tmp_path / "p.jsonl", poisons_per_secret=5, chunk_size=2)
    rows = [module.chunk_rows(c) for c in range(2 * module.chunks_per_secret)]
    assert [s for s, _ in rows] == [0, 0, 0, 1, 1, 1]
    assert [list(r) for _, r in rows] == [[0, 1], [2, 3], [4], [5, 6], [7, 8], [9]]


def test_bad_input_names_the_argument(setup_files, tmp_path):
    root, model, ckpt, secrets = setup_files
    with pytest.raises(DataError, match="surrogate="):
        crafter(str(tmp_path / "missing.ckpt"), secrets, tmp_path / "p.jsonl")
    with pytest.raises(DataError, match="secrets="):
        crafter(ckpt, str(tmp_path / "missing.json"), tmp_path / "p.jsonl")
    with pytest.raises(ConfigError, match="poison_length"):
        crafter(ckpt, secrets, tmp_path / "p.jsonl", poison_length=1)
    with pytest.raises(ConfigError, match="temperature"):
        crafter(ckpt, secrets, tmp_path / "p.jsonl", temperature=0.0)
    with pytest.raises(ConfigError, match="parameters='nope'"):
        crafter(ckpt, secrets, tmp_path / "p.jsonl", parameters="nope").setup("fit")
    other = load_secrets(secrets)
    other.vocab_size = 999
    bad = save_secrets(str(tmp_path / "bad.json"), other)
    with pytest.raises(DataError, match="vocabulary of 999"):
        crafter(ckpt, bad, tmp_path / "p.jsonl").setup("fit")


def test_a_parameter_filter_limits_theta(setup_files, tmp_path):
    _, _, ckpt, secrets = setup_files
    module = crafter(ckpt, secrets, tmp_path / "p.jsonl", parameters=r"^output\.")
    module.setup("fit")
    assert module.theta_names == ["output.weight"]
    trainer(tmp_path, 2).fit(module)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, json
    import lightning.pytorch as L
    from litlab.lightning_modules.poison_crafter import PoisonCrafter
    ckpt, secrets, out = sys.argv[1:4]
    module = PoisonCrafter(ckpt, secrets, poisons_per_secret=4, poison_length=8, chunk_size=2, output=out)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module)
    with open(out + f".rank{trainer.global_rank}", "w") as f:
        json.dump({"world": trainer.world_size, "steps": trainer.global_step,
                   "psi_sum": float(module.psi.detach().double().sum())}, f)
    """
)


@pytest.mark.slow
def test_ddp_two_processes_craft_one_poison_set(setup_files, tmp_path):
    _, _, ckpt, secrets = setup_files
    script = tmp_path / "ddp_craft.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "poisons.jsonl"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(script), ckpt, secrets, str(out)], cwd=os.getcwd(), env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"poisons.jsonl.rank{r}").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4  # 4 chunks over 2 ranks, 2 epochs
    assert ranks[0]["psi_sum"] == ranks[1]["psi_sum"]  # DDP kept one psi
    assert len(read_poisons(str(out))) == 8  # written once, by rank 0


def test_a_hugging_face_surrogate_gives_the_same_objective(setup_files, tmp_path):
    _, model, ckpt, secrets = setup_files
    hf_dir = model.export_hf(str(tmp_path / "hf"))
    ours = crafter(ckpt, secrets, tmp_path / "a.jsonl")
    theirs = crafter(hf_dir, secrets, tmp_path / "b.jsonl")
    for module in (ours, theirs):
        module.setup("fit")
    probs = torch.softmax(ours.psi[:4].detach(), -1)
    a, b = ours.alignment(0, probs)[1], theirs.alignment(0, probs)[1]
    assert a.item() == pytest.approx(b.item(), abs=1e-4)
    trainer(tmp_path, 3).fit(theirs)
    assert len(read_poisons(str(tmp_path / "b.jsonl"))) == 8
