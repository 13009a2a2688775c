"""``litlab compare_lms``: AU-Net 2 and 3 against the BPE and flat-byte baselines at equal training FLOPs.

Each config is built through the CLI (so the comparison uses exactly what ``litlab fit --config`` would), trained
for ``train_flops / (FLOPs per byte × bytes per step)`` optimizer steps, then measured on the same held-out text:
bits per byte on the test split, the character-level tasks of :mod:`litlab.evaluation.char_tasks` built from the
held-out documents, and training throughput (bytes of text per second of ``fit``, data loading included). One
table (Markdown, printed) and one JSON file come out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.loggers import CSVLogger

from litlab.errors import ConfigError
from litlab.evaluation.char_tasks import evaluate_char_tasks, make_char_tasks

_REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "aunet"
DEFAULT_CONFIGS = [str(_REPO_CONFIGS / f"{n}_tiny.yaml") for n in ("aunet2", "aunet3", "bpe", "bytes")]


def _build(config: str, tokenizer_path: str) -> tuple[Any, Any]:
    from litlab.lightning_cli import build_from_config

    bpe = "tokenizer: bpe" in Path(config).read_text()
    return build_from_config(config, [f"--data.init_args.tokenizer_path={tokenizer_path}"] if bpe else [])


def compare_language_models(
    configs: list[str] | None = None,
    train_flops: float = 1e13,
    output: str = "runs/aunet/compare",
    bpe_vocab_size: int = 2048,
    char_examples: int = 40,
    test_batches: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train each config for the same training FLOPs, then compare bits per byte, character tasks and throughput.

    Args:
        configs: YAML configs (``litlab fit`` configs of AUNetLM / TransformerLM); default: the four tiny configs
            under ``configs/aunet`` (AU-Net 2, AU-Net 3, BPE, flat bytes).
        train_flops: Training compute of every model, in FLOPs (FLOPs per byte from the model's accounting).
        output: Run directory: CSV logs per model, ``compare.json``, and the BPE if one has to be trained.
        bpe_vocab_size: Vocabulary of the BPE trained (on the corpus's train split) for BPE configs.
        char_examples: Character-task examples per task.
        test_batches: Test batches for bits per byte (``None``: the whole test split).
        seed: Seed of every run and of the character tasks.

    Returns:
        One row per config (also written to ``<output>/compare.json``).
    """
    configs = configs or DEFAULT_CONFIGS
    if train_flops <= 0:
        raise ConfigError(f"train_flops={train_flops!r} is not allowed: must be > 0")
    missing = [c for c in configs if not Path(c).is_file()]
    if missing:
        raise ConfigError(f"configs={missing!r}: no such file")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = str(out / f"bpe_{bpe_vocab_size}.json")
    if not Path(tokenizer_path).is_file():
        from litlab.datamodules.bpe_training import train_bpe

        train_bpe(output=tokenizer_path, vocab_size=bpe_vocab_size)
    rows = []
    for config in configs:
        L.seed_everything(seed, verbose=False)
        model, data = _build(config, tokenizer_path)
        name = Path(config).stem
        flops_per_byte = model.flops_per_byte()
        bytes_per_step = data.batch_size * data.seq_len * data.bytes_per_token
        steps = max(1, round(train_flops / (flops_per_byte * bytes_per_step)))
        model.hparams.warmup_steps = min(model.hparams.warmup_steps, steps // 10)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, gradient_clip_val=0.2,
            logger=CSVLogger(out, name=name), enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, log_every_n_steps=max(1, steps // 20), num_sanity_val_steps=0,
            limit_test_batches=1.0 if test_batches is None else test_batches,
        )
        start = time.perf_counter()
        trainer.fit(model, data)
        fit_seconds = time.perf_counter() - start
        test = trainer.test(model, data, verbose=False)[0]
        docs = data.documents("test") + data.documents("val")
        tasks = evaluate_char_tasks(model, make_char_tasks(docs, examples_per_task=char_examples, seed=seed))
        rows.append({
            "config": name, "model": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()),
            "flops_per_byte": flops_per_byte, "steps": steps, "train_bytes": steps * bytes_per_step,
            "train_flops": steps * bytes_per_step * flops_per_byte, "test_bpb": test["test/bpb"],
            "char_tasks": tasks, "fit_seconds": fit_seconds, "train_bytes_per_s": steps * bytes_per_step / fit_seconds,
        })
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    lines = [
        "| config | params | FLOPs/byte | steps | train MB | test bits/byte | char tasks (mean acc.) | train bytes/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params']:,} | {r['flops_per_byte']:.3g} | {r['steps']} | "
            f"{r['train_bytes'] / 1e6:.2f} | {r['test_bpb']:.3f} | {r['char_tasks']['mean']:.3f} | "
            f"{r['train_bytes_per_s']:,.0f} |"
        )
    return "\n".join(lines)
