"""``litlab export_hf``: a TransformerLM checkpoint as a Hugging Face Llama directory (tokenizer, logits, greedy)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import pytest
import torch

from litlab.cli import main
from litlab.datamodules import train_bpe
from litlab.lightning_modules import AUNetLM, TransformerLM

transformers = pytest.importorskip("transformers")



@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

TINY = {"dim": 64, "layers": 2, "heads": 4, "seq_len": 64, "ffn_multiple_of": 16}
TEXTS = ["def f(x):\n    return x + 1\n", "héllo wörld ✓ — <bos> and <eos> are text here", "  two  spaces\t"]


def _save(model, path: Path) -> str:
    cls = type(model)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "litlab_class": f"{cls.__module__}.{cls.__qualname__}"}, path)
    return str(path)


@torch.no_grad()
def _greedy(lm: TransformerLM, ids: list[int], steps: int) -> list[int]:
    """Reference greedy decoding with full forwards: BOS never produced, EOS ends."""
    out: list[int] = []
    for _ in range(steps):
        logits = lm.model(torch.tensor([ids + out]))[0, -1]
        logits[lm.bos_id] = -torch.inf
        token = int(logits.argmax())
        if token == lm.eos_id:
            break
        out.append(token)
    return out


@pytest.fixture(scope="module")
def bpe_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_hf")
    docs = [f"def function_{i}(x):\n    return x * {i} + 'héllo wörld ✓'\n" for i in range(200)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    bpe = train_bpe(source=str(root / "corpus.jsonl"), output=str(root / "bpe.json"), vocab_size=300)
    torch.manual_seed(0)
    model = TransformerLM(**TINY, tokenizer="bpe", tokenizer_path=bpe, vocab_size=300).eval()
    with torch.no_grad():  # norms away from ones, so they matter
        for name, p in model.model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model, _save(model, root / "bpe.ckpt"), root


def test_bpe_checkpoint_exports_to_llama_with_tokenizer(bpe_lm, tmp_path, capsys):
    lm, ckpt, _ = bpe_lm
    out = tmp_path / "hf"
    main(["export_hf", "--ckpt", ckpt, "--out", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    hf = transformers.LlamaForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()

    # Tokenizer: litlab's encode without specials, BOS first by default, same decoding.
    assert (tok.bos_token_id, tok.eos_token_id) == (lm.bos_id, lm.eos_id)
    for text in TEXTS:
        ids = lm.encode(text.encode())
        assert tok(text, add_special_tokens=False).input_ids == ids
        assert tok(text).input_ids == [lm.bos_id, *ids]
        assert tok.decode([lm.bos_id, *ids, lm.eos_id], skip_special_tokens=True).encode() == lm.decode(ids)

    # Logits: equal within 1e-5 (batch of 2, full window and a short one).
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for length in (5, 64):
        ids = torch.randint(0, 300, (2, length), generator=gen)
        ids[:, 0] = lm.bos_id
        with torch.no_grad():
            worst = max(worst, float((lm.model(ids) - hf(ids).logits).abs().max()))
    assert worst <= 1e-5, worst

    # Greedy decoding: 8 new tokens, BOS suppressed and EOS stopping from generation_config.json, as in litlab.
    prompt = b"def "
    enc = tok(prompt.decode(), return_tensors="pt")
    new = hf.generate(**enc, max_new_tokens=8, do_sample=False)[0, enc.input_ids.shape[1]:].tolist()
    new = new[: new.index(lm.eos_id)] if lm.eos_id in new else new
    assert new == _greedy(lm, [lm.bos_id, *lm.encode(prompt)], 8) and len(new) > 0
    theirs = tok.decode(new, skip_special_tokens=True).encode()
    assert lm.generate(prompt, max_new_bytes=len(theirs)) == theirs


def test_byte_checkpoint_exports_without_tokenizer_files(tmp_path, capsys):
    torch.manual_seed(1)
    lm = TransformerLM(**TINY, tokenizer="bytes", vocab_size=258).eval()
    ckpt = _save(lm, tmp_path / "bytes.ckpt")
    out = tmp_path / "hf"
    main(["export_hf", "--ckpt", ckpt, "--out", str(out)])
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out) and "no tokenizer files" in printed.err
    assert not (out / "tokenizer.json").exists() and not (out / "tokenizer_config.json").exists()
    hf = transformers.LlamaForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    ids = torch.tensor([[lm.bos_id, *lm.encode("héllo ✓".encode())]])
    with torch.no_grad():
        assert float((lm.model(ids) - hf(ids).logits).abs().max()) <= 1e-5
    main(["export_hf", "--ckpt", ckpt, "--out", str(out), "--dtype", "bfloat16"])  # over a previous export
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def _error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["export_hf", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("litlab: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_errors(bpe_lm, tmp_path, capsys):
    _, ckpt, _ = bpe_lm
    assert "no such file" in _error(capsys, "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o"))
    aunet = AUNetLM(dims=[32, 64], layers=[1, 1], heads=[2, 2], windows=[16, None], pooled_lengths=[32],
                    seq_len=64, ffn_multiple_of=16)
    err = _error(capsys, "--ckpt", _save(aunet, tmp_path / "aunet.ckpt"), "--out", str(tmp_path / "o"))
    assert "AUNetLM, not a TransformerLM" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "results.csv").write_text("keep me")
    err = _error(capsys, "--ckpt", ckpt, "--out", str(busy))
    assert "out=" in err and "results.csv" in err and (busy / "results.csv").read_text() == "keep me"
    assert "dtype='int8'" in _error(capsys, "--ckpt", ckpt, "--out", str(tmp_path / "o"), "--dtype", "int8")
    assert not (tmp_path / "o").exists()
