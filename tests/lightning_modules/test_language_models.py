"""AUNetLM and TransformerLM: bits per byte, scoring, resume, bf16, argument errors."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from litlab.datamodules import TextDataModule, train_bpe
from litlab.errors import ConfigError
from litlab.lightning_modules import AUNetLM, TransformerLM

TINY_AUNET = {"dims": [32, 64], "layers": [1, 1], "heads": [2, 2], "windows": [16, None], "pooled_lengths": [32],
              "seq_len": 64, "ffn_multiple_of": 16, "warmup_steps": 1}
TINY_FLAT = {"dim": 32, "layers": 2, "heads": 2, "ffn_multiple_of": 16, "warmup_steps": 1}


def _data(**kw) -> TextDataModule:
    kw = {"seq_len": 64, "batch_size": 4, "max_bytes": 200_000, **kw}
    return TextDataModule(**kw)


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    kw = {"max_steps": 3, "limit_val_batches": 2, "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
          "default_root_dir": tmp_path, **kw}
    return L.Trainer(**kw)


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory) -> str:
    return train_bpe(output=str(tmp_path_factory.mktemp("bpe") / "bpe.json"), vocab_size=512, max_bytes=200_000)


def test_aunet_fit_logs_bits_per_byte_equal_to_loss_in_bits(tmp_path):
    L.seed_everything(0)
    model = AUNetLM(**TINY_AUNET)
    trainer = _trainer(tmp_path)
    trainer.fit(model, _data())
    m = trainer.callback_metrics
    # Every byte target stands for one byte, so bits per byte is the mean loss in bits.
    trainer.validate(model, _data())
    m = trainer.callback_metrics
    assert m["val/bpb"] == pytest.approx(float(m["val/loss"]) / math.log(2), rel=1e-5)
    assert 0 < float(m["val/bpb"]) < 9
    assert "val/pooled_stage2" in m and "val/truncated_stage2" in m


def test_bpe_bits_per_byte_divides_by_the_bytes_of_the_tokens(tmp_path, bpe_file):
    data = _data(tokenizer="bpe", tokenizer_path=bpe_file, seq_len=32)
    model = TransformerLM(**TINY_FLAT, tokenizer="bpe", tokenizer_path=bpe_file, vocab_size=data.vocab_size,
                          seq_len=32, bytes_per_token=data.bytes_per_token)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, data)
    out = trainer.predict(model, data)
    bits = sum(float(o["bits"].sum()) for o in out)
    nbytes = sum(int(o["bytes"].sum()) for o in out)
    windows = data.windows("test")
    tokens = len(windows) * 32
    assert nbytes > 2 * tokens  # a BPE token stands for several bytes
    assert model.flops_per_byte() == pytest.approx(model.model.flops_per_token(32) / data.bytes_per_token)
    assert bits > 0


def _manual_score(model, context: bytes, continuation: bytes) -> float:
    ids = torch.tensor([[model.bos_id, *model.encode(context), *model.encode(continuation)]])
    logits = model.model(*model.inputs_for_ids(ids[:, :-1])).log_softmax(-1)
    n = len(model.encode(continuation))
    picked = logits[0, -n:].gather(-1, ids[0, -n:, None])
    return float(picked.sum())


@pytest.mark.parametrize("kind", ["aunet3", "bytes", "bpe"])
def test_score_equals_the_log_likelihood_of_one_unpadded_sequence(kind, bpe_file):
    torch.manual_seed(0)
    if kind == "aunet3":
        model = AUNetLM(dims=[32, 48, 64], layers=[1, 1, 1], heads=[2, 2, 2], windows=[16, None, None],
                        pooled_lengths=[40, 24], seq_len=64, ffn_multiple_of=16)
    elif kind == "bytes":
        model = TransformerLM(**TINY_FLAT, tokenizer="bytes", vocab_size=258, seq_len=64)
    else:
        model = TransformerLM(**TINY_FLAT, tokenizer="bpe", tokenizer_path=bpe_file, vocab_size=512, seq_len=64)
    model.eval()
    contexts = [b"def f(x):\n    return", b"The answer is", "caf\u00e9 ".encode()]
    conts = [b" x + 1", b" 42.", b"au lait"]
    batched = model.score(contexts, conts, batch_size=3)  # padded to a common length
    for i, (ctx, cont) in enumerate(zip(contexts, conts)):
        assert float(batched[i]) == pytest.approx(_manual_score(model, ctx, cont), abs=1e-4)


class _Interrupt(L.Callback):
    """Kills the run when the second epoch starts (after the first epoch's checkpoint was written)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tmp_path):
    def run(root: Path, ckpt: str | None = None, interrupt: bool = False) -> AUNetLM:
        L.seed_everything(0)
        model = AUNetLM(**TINY_AUNET)
        trainer = _trainer(root, max_steps=-1, max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                           enable_checkpointing=True, callbacks=[_Interrupt()] if interrupt else [])
        trainer.fit(model, _data(), ckpt_path=ckpt)
        return model

    straight = run(tmp_path / "a")
    with pytest.raises((KeyboardInterrupt, SystemExit)):  # Lightning turns the interrupt into an exit
        run(tmp_path / "b", interrupt=True)
    ckpt = next((tmp_path / "b").rglob("*.ckpt"))
    assert torch.load(ckpt, weights_only=False)["litlab_class"] == "litlab.lightning_modules.aunet_lm.AUNetLM"
    resumed = run(tmp_path / "c", str(ckpt))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_bf16_mixed_training_runs(tmp_path):
    L.seed_everything(0)
    model = AUNetLM(**TINY_AUNET)
    trainer = _trainer(tmp_path, max_steps=2, precision="bf16-mixed")
    trainer.fit(model, _data())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_compiled_training_step_matches_eager_loss(tmp_path):
    batch = next(iter(_data_loader()))
    torch.manual_seed(0)
    eager = AUNetLM(**TINY_AUNET)
    compiled = AUNetLM(**TINY_AUNET, compile=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.train()
    eager.train()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=False):
        a = eager._token_losses(batch).mean()
        compiled.__dict__["_compiled"] = torch.compile(compiled.model, backend="aot_eager", fullgraph=True)
        b = compiled._token_losses(batch).mean()
    assert float(a) == pytest.approx(float(b), rel=1e-5)


def _data_loader():
    data = _data()
    data.setup("fit")
    return data.train_dataloader()


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="pooled_lengths"):
        AUNetLM(**{**TINY_AUNET, "pooled_lengths": [32, 16]})
    with pytest.raises(ConfigError, match="word_groups"):
        AUNetLM(**{**TINY_AUNET, "dims": [32, 48, 64], "layers": [1, 1, 1], "heads": [2, 2, 2],
                   "windows": [16, None, None], "pooled_lengths": [32, 16], "word_groups": [1]})
    with pytest.raises(ConfigError, match="lr"):
        AUNetLM(**{**TINY_AUNET, "lr": 0.0})
    with pytest.raises(ConfigError, match="vocab_size"):
        TransformerLM(**TINY_FLAT, tokenizer="bytes", vocab_size=300, seq_len=64)
    with pytest.raises(ConfigError, match="tokenizer_path"):
        TransformerLM(**TINY_FLAT, tokenizer="bpe", seq_len=64).encode(b"x")


def test_data_window_longer_than_the_model_is_refused(tmp_path):
    model = AUNetLM(**TINY_AUNET)
    with pytest.raises(ConfigError, match="seq_len"):
        _trainer(tmp_path, max_steps=1).fit(model, _data(seq_len=128))


def test_compute_rule_sets_the_learning_rate(tmp_path):
    from litlab.models.lm.accounting import compute_hparams

    model = AUNetLM(**TINY_AUNET, compute_budget=1e15)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, _data())
    lr = trainer.optimizers[0].param_groups[0]["initial_lr"]
    assert lr == pytest.approx(compute_hparams(1e15, "aunet")["lr"])


@pytest.mark.parametrize("kind", ["aunet3", "bpe"])
def test_generate_cached_equals_uncached_and_respects_the_limit(kind, bpe_file):
    torch.manual_seed(0)
    if kind == "aunet3":
        model = AUNetLM(dims=[32, 48, 64], layers=[1, 1, 1], heads=[2, 2, 2], windows=[16, None, None],
                        pooled_lengths=[40, 24], seq_len=64, ffn_multiple_of=16)
    else:
        model = TransformerLM(**TINY_FLAT, tokenizer="bpe", tokenizer_path=bpe_file, vocab_size=512, seq_len=64)
    prompt = b"The function returns "
    cached = model.generate(prompt, max_new_bytes=40, temperature=0.0)
    uncached = model.generate(prompt, max_new_bytes=40, temperature=0.0, use_cache=False)
    assert cached == uncached
    assert 0 < len(cached) <= 40
    sampled = model.generate(prompt, max_new_bytes=30, temperature=1.0, top_k=20, seed=3)
    assert sampled == model.generate(prompt, max_new_bytes=30, temperature=1.0, top_k=20, seed=3)


def test_generate_command_loads_the_checkpoint_class(tmp_path, capsys):
    from litlab.methods.generate import generate_text

    L.seed_everything(0)
    model = AUNetLM(**TINY_AUNET)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, _data())
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    text = generate_text(str(ckpt), prompt="def ", max_new_bytes=12)
    assert capsys.readouterr().out.startswith("def ")
    assert text.encode() == model.generate(b"def ", max_new_bytes=12).decode("utf-8", "replace").encode()
    from litlab.errors import DataError

    with pytest.raises(DataError, match="no such file"):
        generate_text(str(tmp_path / "missing.ckpt"))
