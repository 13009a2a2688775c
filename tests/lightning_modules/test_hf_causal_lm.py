"""`HFCausalLM`: a local Hugging Face directory or a config as a litlab LanguageModel. Logits equal the bare
transformers model; our exported TransformerLM loads back with equal logits and generations; batched generation
equals one prompt at a time and transformers' own greedy ``generate``; prefix reuse; soft inputs; scoring;
fine-tuning through ``litlab fit``; one-line errors for missing files."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from litlab.cli import main
from litlab.datamodules import train_bpe
from litlab.errors import ConfigError, DataError
from litlab.lightning_modules import HFCausalLM, TransformerLM
from litlab.models.lm.hf_export import export_llama

PROMPTS = [b"def f(x):", b"return x * 3 +", b"h", b"def function_12(x):\n    return"]
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("hf_bpe")
    docs = [f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(300)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return train_bpe(source=str(root / "corpus.jsonl"), output=str(root / "bpe.json"), vocab_size=320)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, bpe) -> tuple[TransformerLM, str]:
    torch.manual_seed(0)
    ours = TransformerLM(dim=64, layers=2, heads=4, seq_len=128, ffn_multiple_of=16, tokenizer="bpe",
                         tokenizer_path=bpe, vocab_size=320).eval()
    with torch.no_grad():  # norms away from ones, so that they matter
        for name, param in ours.model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    out = tmp_path_factory.mktemp("hf_dir") / "model"
    export_llama(ours.model, out, bpe, ours.bos_id, ours.eos_id)
    return ours, str(out)


@torch.no_grad()
def test_logits_equal_the_bare_transformers_model_and_our_exported_model(exported):
    ours, path = exported
    lm = HFCausalLM(pretrained_path=path).eval()
    bare = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    ids = torch.randint(3, 320, (3, 40), generator=torch.Generator().manual_seed(1))
    assert torch.equal(lm(ids), bare(input_ids=ids).logits)
    assert (lm(ids) - ours(ids)).abs().max() <= 1e-5
    assert (lm.bos_id, lm.eos_id) == (ours.bos_id, ours.eos_id)
    assert all(lm.encode(p) == ours.encode(p) for p in PROMPTS)
    torch.testing.assert_close(lm.logits_from_embeds(lm.embed(ids)), lm(ids))
    torch.testing.assert_close(ours.logits_from_embeds(ours.embed(ids)), ours(ids))
    torch.testing.assert_close(lm.score(PROMPTS, [b" 1", b" x", b"i", b" 0"]),
                               ours.score(PROMPTS, [b" 1", b" x", b"i", b" 0"]), atol=1e-4, rtol=1e-5)


@torch.no_grad()
def test_batched_generation_equals_ours_one_by_one_and_transformers_generate(exported):
    ours, path = exported
    lm = HFCausalLM(pretrained_path=path).eval()
    batched = lm.generate_batch(PROMPTS, max_new_bytes=30)
    assert batched == [lm.generate(p, max_new_bytes=30) for p in PROMPTS]
    assert batched == ours.generate_batch(PROMPTS, max_new_bytes=30)
    ids = [lm.bos_id, *lm.encode(PROMPTS[0])]
    new = lm.hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    if lm.eos_id in new:
        new = new[:new.index(lm.eos_id)]
    assert lm.decode(new) == lm.generate_batch([PROMPTS[0]], max_new_bytes=10_000)[0][:len(lm.decode(new))]
    sampled = lm.generate_batch(PROMPTS, max_new_bytes=20, temperature=1.0, seed=5)
    assert sampled == [lm.generate_batch([p], max_new_bytes=20, temperature=1.0, seed=5 + i)[0]
                       for i, p in enumerate(PROMPTS)]


@torch.no_grad()
def test_prefix_reuse_in_the_transformers_cache_equals_no_reuse(exported):
    lm = HFCausalLM(pretrained_path=exported[1]).eval()
    prefix = b"def function_3(x):\n    return x * 3 + 3\n\n"
    reused = lm.generate_batch(PROMPTS, max_new_bytes=24, prefix=prefix)
    assert reused == lm.generate_batch(PROMPTS, max_new_bytes=24, prefix=prefix, reuse_prefix=False)


def test_a_config_model_fine_tunes_through_litlab_fit(tmp_path, bpe):
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 2, "limit_val_batches": 1, "accelerator": "cpu", "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path)},
        "model": {"class_path": "litlab.lightning_modules.HFCausalLM",
                  "init_args": {"config": TINY_LLAMA, "warmup_steps": 1}},
        "data": {"class_path": "litlab.datamodules.TextDataModule",
                 "init_args": {"tokenizer": "bpe", "tokenizer_path": bpe, "seq_len": 32, "batch_size": 2,
                               "max_bytes": 60_000}},
    }
    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    main(["validate", "--config", str(path)])


def test_missing_or_incomplete_directories_are_one_line_errors(tmp_path, bpe, capsys):
    with pytest.raises(DataError, match="no such directory"):
        HFCausalLM(pretrained_path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing config.json"):
        HFCausalLM(pretrained_path=str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text(json.dumps(TINY_LLAMA | {"vocab_size": 320}))
    with pytest.raises(DataError, match="missing the weights"):
        HFCausalLM(pretrained_path=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="exactly one of"):
        HFCausalLM()
    with pytest.raises(ConfigError, match="tokenizer_path"):
        HFCausalLM(config=TINY_LLAMA)
    with pytest.raises(ConfigError, match="dtype='float8'"):
        HFCausalLM(config=TINY_LLAMA, tokenizer_path=bpe, dtype="float8")
    no_tokenizer = HFCausalLM(config=TINY_LLAMA | {"vocab_size": 320}, tokenizer_path=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="has no tokenizer"):
        no_tokenizer.encode(b"x")
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text(yaml.safe_dump({"model": {"class_path": "litlab.lightning_modules.HFCausalLM",
                                                   "init_args": {"pretrained_path": str(tmp_path / "nope")}},
                                         "data": {"class_path": "litlab.datamodules.TextDataModule",
                                                  "init_args": {"max_bytes": 20_000}}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(yaml_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("litlab: error:") and "no such directory" in err[-1]


