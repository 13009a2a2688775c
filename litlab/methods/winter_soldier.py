"""Winter Soldier end to end (arXiv 2506.14913): secrets, crafting, injection, victim pre-training, detection.

Commands (``litlab <name> --help``):

- ``poison_secrets``: draw the owner's secrets for a model's tokenizer and write them to a file she keeps;
- ``poison_detect``: the test on any model (a ``litlab fit`` checkpoint or a Hugging Face directory), printing
  the Bonferroni-corrected p-value (and writing the full result as JSON when asked);
- ``winter_soldier``: the CPU demonstration: pre-train a tiny surrogate on the embedded corpus, craft poisons
  for its secrets, inject them at several rates, pre-train victims from scratch (other seeds), detect; beside
  it the baselines at the same token budget, the clean-model calibration, a perplexity filter and the bits per
  byte of poisoned and clean victims. Writes ``results.json``, ``results.md`` and ``pvalue_vs_rate.png``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
from lightning.pytorch.loggers import CSVLogger

from litlab.callbacks.secret_detection import SecretDetection
from litlab.errors import ConfigError, check_int
from litlab.lightning_modules.language_model import LanguageModel
from litlab.lightning_modules.loading import load_model
from litlab.lightning_modules.poison_crafter import PoisonCrafter
from litlab.poisoning.baselines import (
    canary_zscore_test,
    draw_canaries,
    draw_pairs,
    min_k_prob_test,
    pairwise_backdoor_test,
    pairwise_documents,
    sequence_logprobs,
)
from litlab.poisoning.detection import DetectionResult, detect_secrets, model_logits, model_top_ids
from litlab.poisoning.injection import read_poisons, write_poisons
from litlab.poisoning.secret import Secret, SecretSet, draw_secrets, load_secrets, save_secrets
from litlab.text.tokenizers import BPETokenizer, HFTokenizer, TextTokenizer

DEFAULT_ELLS = (1, 5, 10, 20, 50)
DEFAULT_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "winter_soldier" / "lm_tiny.yaml")


# ------------------------------------------------------------------------------------------ small commands
def _tokenizer(model: str | None, tokenizer_path: str | None) -> TextTokenizer:
    if (model is None) == (tokenizer_path is None):
        raise ConfigError("give exactly one of model= (a checkpoint or HF directory) and tokenizer_path=")
    if model is not None:
        return load_model(model, "model").tokenizer
    assert tokenizer_path is not None
    return HFTokenizer(tokenizer_path) if os.path.isdir(tokenizer_path) else BPETokenizer(tokenizer_path)


def special_ids(tokenizer: TextTokenizer) -> list[int]:
    """The ids a secret never uses: BOS, EOS and, for a Hugging Face tokenizer, all its special ids."""
    ids = {tokenizer.bos_id, tokenizer.eos_id}
    inner = getattr(tokenizer, "tokenizer", None)
    ids.update(getattr(inner, "all_special_ids", []) or [])
    return sorted(int(i) for i in ids)


def poison_secrets(
    *,
    output: str,
    model: str | None = None,
    tokenizer_path: str | None = None,
    num_secrets: int = 4,
    prompt_length: int = 8,
    response_length: int = 8,
    seed: int = 0,
) -> str:
    """Draw secrets (random prompt -> random response ids) for a tokenizer and write them, owner-readable only.

    Args:
        output: The secrets file to write (JSON, mode 0600). Keep it: it is the key of the test.
        model: A model whose tokenizer to use (``litlab fit`` checkpoint or Hugging Face directory).
        tokenizer_path: Or a tokenizer: a litlab BPE JSON or a Hugging Face tokenizer directory.
        num_secrets: Secrets drawn (their hits are pooled into one test).
        prompt_length: Ids drawn per prompt (the text round trip may change the count).
        response_length: Ids per response.
        seed: Seed of the draw (record it; the file records it too).

    Returns:
        The path written. The secrets are not printed.
    """
    tokenizer = _tokenizer(model, tokenizer_path)
    secret_set = draw_secrets(tokenizer.encode, tokenizer.decode, tokenizer.vocab_size, num_secrets, prompt_length,
                              response_length, special_ids(tokenizer), seed)
    path = save_secrets(output, secret_set)
    print(f"wrote {len(secret_set)} secrets to {path} (draw set {secret_set.draw_size} ids, "
          f"{secret_set.redraws} redraws for the round trip)")
    return path


def detect_in_model(lm: LanguageModel, secret_set: SecretSet, ells: Sequence[int] = DEFAULT_ELLS,
                    batch_size: int = 32) -> DetectionResult:
    """The Winter Soldier test of ``secret_set`` on ``lm`` (eval mode, no gradients)."""
    if lm.tokenizer.vocab_size != secret_set.vocab_size:
        raise ConfigError(f"the secrets were drawn for {secret_set.vocab_size} ids; the model's tokenizer has "
                          f"{lm.tokenizer.vocab_size}")
    lm.eval()
    return detect_secrets(model_top_ids(lm), secret_set, ells, lm.bos_id, batch_size)


def poison_detect(
    *,
    model: str,
    secrets: str,
    ells: list[int] = list(DEFAULT_ELLS),  # noqa: B006 - jsonargparse shows the default
    batch_size: int = 32,
    output: str | None = None,
) -> dict[str, Any]:
    """Was ``model`` trained on the owner's data? Top-l hits of the secrets' responses and an exact p-value.

    Args:
        model: A ``litlab fit`` checkpoint or a Hugging Face model directory (only its top-l ids are used).
        secrets: The secrets file of ``litlab poison_secrets``.
        ells: Top-l sizes scanned (the p-value is Bonferroni-corrected over them).
        batch_size: Secrets teacher-forced together.
        output: Also write the full result (hits per l, p-values) to this JSON file.

    Returns:
        The result as a dict (``log10_p_bonferroni`` is the answer).
    """
    result = detect_in_model(load_model(model, "model"), load_secrets(secrets, "secrets"), ells, batch_size)
    record = result.to_dict()
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(record, indent=2))
    hits = ", ".join(f"top-{e}: {h}" for e, h in zip(result.ells, result.hits))
    print(f"{result.trials} response tokens of {result.num_secrets} secrets; hits {hits}; "
          f"p = 10^{result.log10_p_bonferroni:.2f} (Bonferroni over {len(result.ells)} values of l)")
    return record


# ------------------------------------------------------------------------------------------ measurements
def calibration(lm: LanguageModel, tokenizer: TextTokenizer, num_secrets: int = 200, prompt_length: int = 8,
                response_length: int = 8, seed: int = 10_000, ells: Sequence[int] = DEFAULT_ELLS) -> dict[str, Any]:
    """False-positive rate of the test on a model that never saw these secrets: ``num_secrets`` fresh secrets,
    each tested alone (Bonferroni over ``ells``); the share with p < 0.05 and < 0.01."""
    fresh = draw_secrets(tokenizer.encode, tokenizer.decode, tokenizer.vocab_size, num_secrets, prompt_length,
                         response_length, special_ids(tokenizer), seed)
    log10_ps = []
    for secret in fresh.secrets:
        one = SecretSet([secret], fresh.vocab_size, fresh.draw_size, fresh.excluded_ids)
        log10_ps.append(detect_in_model(lm, one, ells).log10_p_bonferroni)
    ps = np.array(log10_ps)
    return {"secrets": num_secrets, "fpr_at_0.05": float(np.mean(ps < math.log10(0.05))),
            "fpr_at_0.01": float(np.mean(ps < math.log10(0.01))), "min_log10_p": float(ps.min())}


def prompt_specificity(lm: LanguageModel, secret_set: SecretSet, tokenizer: TextTokenizer, seed: int = 20_000,
                       ells: Sequence[int] = DEFAULT_ELLS) -> float:
    """log10 p of the test when each response follows a *random* prompt instead of its own: a model that learned
    the prompt -> response mapping loses its hits; one that only learned the response ids keeps them."""
    other = draw_secrets(tokenizer.encode, tokenizer.decode, tokenizer.vocab_size, len(secret_set), 8, 1,
                         special_ids(tokenizer), seed).secrets
    swapped = [Secret(o.prompt, s.response) for o, s in zip(other, secret_set.secrets)]
    return detect_in_model(lm, SecretSet(swapped, secret_set.vocab_size, secret_set.draw_size,
                                         secret_set.excluded_ids), ells).log10_p_bonferroni


def perplexity_filter(lm: LanguageModel, poisons: Sequence[bytes], clean: Sequence[bytes],
                      quantile: float = 0.99) -> dict[str, Any]:
    """Would a perplexity filter catch the poisons? Per-sequence perplexity (mean token NLL) of the poisons and
    of clean text windows under ``lm``; the threshold is the ``quantile`` of the clean perplexities."""
    lm.eval()

    def ppl(texts: Sequence[bytes]) -> np.ndarray:
        ids = [lm.encode(t) for t in texts]
        lps = sequence_logprobs(model_logits(lm), [i for i in ids if i], lm.bos_id)
        return np.array([math.exp(-float(np.mean(lp))) for lp in lps])

    p_poison, p_clean = ppl(poisons), ppl(clean)
    threshold = float(np.quantile(p_clean, quantile))
    return {"threshold_quantile": quantile, "threshold": threshold,
            "median_ppl_poison": float(np.median(p_poison)), "median_ppl_clean": float(np.median(p_clean)),
            "poisons_caught": int((p_poison > threshold).sum()), "poisons": len(p_poison),
            "clean_flagged": int((p_clean > threshold).sum()), "clean": len(p_clean)}


def clean_windows(documents: Sequence[bytes], tokenizer: TextTokenizer, length: int, count: int) -> list[bytes]:
    """``count`` texts of about ``length`` tokens cut from the starts of ``documents`` (for the perplexity check)."""
    out = []
    for doc in documents:
        ids = tokenizer.encode(doc)
        for start in range(0, len(ids) - length, length):
            out.append(tokenizer.decode(ids[start:start + length]))
            if len(out) == count:
                return out
    return out


# ------------------------------------------------------------------------------------------ the demo
def _pretrain(config: str, out: Path, name: str, seed: int, steps: int, tokenizer_path: str,
              poisons: str | None = None, rate: float = 0.0, secrets: str | None = None) -> dict[str, Any]:
    """Pre-train one LM of ``config`` from scratch (seed ``seed``) on the clean or poisoned corpus."""
    overrides = [f"--seed_everything={seed}", f"--data.init_args.tokenizer_path={tokenizer_path}",
                 f"--data.init_args.seed={seed}"]  # the CLI seeds everything (initialization) from the config
    if poisons is not None and rate > 0:
        overrides += [f"--data.init_args.poisons={poisons}", f"--data.init_args.poison_rate={rate}",
                      f"--data.init_args.poison_seed={seed}"]
    from litlab.lightning_cli import build_from_config

    model, data = build_from_config(config, overrides)
    model.hparams.warmup_steps = min(model.hparams.warmup_steps, steps // 10)
    callbacks = [] if secrets is None else [SecretDetection(secrets, every_n_steps=max(1, steps // 8))]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=20, gradient_clip_val=1.0,
                        logger=CSVLogger(out, name=name), enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=max(1, steps // 20), num_sanity_val_steps=0,
                        val_check_interval=steps, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    val_bpb = trainer.validate(model, data, verbose=False)[0]["val/bpb"]
    ckpt = out / f"{name}.ckpt"
    trainer.save_checkpoint(ckpt)
    injection = getattr(data, "injection", None)
    return {"name": name, "seed": seed, "rate": rate, "val_bpb": val_bpb, "fit_seconds": seconds, "ckpt": str(ckpt),
            "model": model, "data": data, "actual_rate": injection.actual_rate if injection else 0.0,
            "curve": callbacks[0].history if callbacks else None}


def run_winter_soldier(
    output: str = "runs/winter_soldier",
    *,
    config: str = DEFAULT_CONFIG,
    rates: list[float] = [0.01, 0.02, 0.05],  # noqa: B006 - jsonargparse shows the default
    seeds: list[int] = [1, 2],  # noqa: B006
    num_secrets: int = 4,
    poisons_per_secret: int = 64,
    poison_length: int = 64,
    craft_steps: int = 200,
    craft_lr: float = 0.3,
    surrogate_steps: int = 400,
    victim_steps: int = 400,
    bpe_vocab_size: int = 1024,
    calibration_secrets: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Craft -> inject -> pre-train -> detect on the embedded corpus, with baselines and calibration (CPU).

    Args:
        output: Run directory (BPE, surrogate, secrets, poisons, victims' logs, results).
        config: The LM config of surrogate and victims (``litlab fit`` YAML of a BPE ``TransformerLM``).
        rates: Poison rates (fractions of the train tokens); the clean victim (rate 0) is always trained.
        seeds: Victim seeds (model init, data order, poison positions), each different from the surrogate's.
        num_secrets: Secrets of the owner (one pooled test).
        poisons_per_secret: Poison sequences per secret.
        poison_length: Tokens per poison sequence.
        craft_steps: Adam steps of the crafting.
        craft_lr: Adam learning rate of the crafting.
        surrogate_steps: Pre-training steps of the surrogate.
        victim_steps: Pre-training steps of each victim.
        bpe_vocab_size: Vocabulary of the BPE trained on the corpus's train split.
        calibration_secrets: Fresh secrets per clean model for the false-positive rate.
        seed: Seed of the surrogate, the secrets and the crafting.

    Returns:
        The results (also in ``<output>/results.json``; table in ``results.md``; figure ``pvalue_vs_rate.png``).
    """
    if not rates or any(not 0 < r < 1 for r in rates):
        raise ConfigError(f"rates={rates!r} is not allowed: give rates in (0, 1); the clean victim is always run")
    if not seeds or seed in seeds:
        raise ConfigError(f"seeds={seeds!r} is not allowed: give victim seeds other than the surrogate's seed={seed}")
    check_int("victim_steps", victim_steps, 1)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tokenizer_path = str(out / f"bpe_{bpe_vocab_size}.json")
    if not Path(tokenizer_path).is_file():
        from litlab.datamodules.bpe_training import train_bpe

        train_bpe(output=tokenizer_path, vocab_size=bpe_vocab_size)
    tokenizer = BPETokenizer(tokenizer_path)
    excluded = special_ids(tokenizer)

    # 1. the owner's surrogate and secrets; 2. crafting
    surrogate = _pretrain(config, out, "surrogate", seed, surrogate_steps, tokenizer_path)
    secrets_path = str(out / "secrets.json")
    secret_set = draw_secrets(tokenizer.encode, tokenizer.decode, tokenizer.vocab_size, num_secrets, 8, 8, excluded,
                              seed)
    save_secrets(secrets_path, secret_set)
    poisons_path = str(out / "poisons.jsonl")
    L.seed_everything(seed, verbose=False)
    crafter = PoisonCrafter(surrogate["ckpt"], secrets_path, poisons_per_secret, poison_length, lr=craft_lr,
                            output=poisons_path, seed=seed)
    craft_start = time.perf_counter()
    L.Trainer(accelerator="cpu", devices=1, max_steps=craft_steps, logger=CSVLogger(out, name="craft"),
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              log_every_n_steps=max(1, craft_steps // 20)).fit(crafter)
    craft_seconds = time.perf_counter() - craft_start
    craft_report = json.loads(Path(f"{poisons_path}.report.json").read_text())
    poisons = read_poisons(poisons_path)
    budget_tokens = sum(len(tokenizer.encode(p)) for p in poisons)

    # baselines' insertions, the same token budget: canaries (half inserted, half references) and pairwise docs
    max_len = surrogate["model"].hparams.seq_len - 1  # a canary and BOS fit one window
    canaries = [c for c in draw_canaries(tokenizer.encode, tokenizer.decode, tokenizer.vocab_size, 4 * len(poisons),
                                         min(poison_length, 2 * max_len // 3), excluded, seed + 1) if len(c) <= max_len]
    if len(canaries) < 2 * len(poisons):
        raise ConfigError(f"poison_length={poison_length}: too few canaries fit the model's window of {max_len + 1}")
    inserted, references = canaries[:len(poisons)], canaries[len(poisons):2 * len(poisons)]
    pairs = draw_pairs(tokenizer.vocab_size, num_secrets, excluded, seed + 2)
    pair_docs = pairwise_documents(pairs, budget_tokens, 8, tokenizer.vocab_size, excluded, seed + 3)
    baseline_path = str(out / "baseline_insertions.jsonl")
    write_poisons(baseline_path, [tokenizer.decode(c) for c in inserted] + [tokenizer.decode(d) for d in pair_docs])

    rows, curves, calib = [], {}, []
    for victim_seed in seeds:
        clean = _pretrain(config, out, f"clean_s{victim_seed}", victim_seed, victim_steps, tokenizer_path,
                          secrets=secrets_path)
        calib.append(calibration(clean["model"], tokenizer, calibration_secrets, seed=10_000 + victim_seed))
        for kind, rate in [("clean", 0.0)] + [(k, r) for r in rates for k in ("winter_soldier", "baselines")]:
            if kind == "clean":
                run = clean
            elif kind == "winter_soldier":
                run = _pretrain(config, out, f"ws_{rate}_s{victim_seed}", victim_seed, victim_steps, tokenizer_path,
                                poisons_path, rate, secrets_path)
            else:  # canaries and pairwise documents, each about `rate` (2 * rate in all)
                run = _pretrain(config, out, f"baselines_{rate}_s{victim_seed}", victim_seed, victim_steps,
                                tokenizer_path, baseline_path, 2 * rate)
            lm = run["model"]
            row = {"kind": kind, "rate": rate, "seed": victim_seed, "actual_rate": run["actual_rate"],
                   "val_bpb": run["val_bpb"]}
            if kind in ("clean", "winter_soldier"):
                result = detect_in_model(lm, secret_set)
                row.update(ws_log10_p=result.log10_p_bonferroni, ws_hits=dict(zip(result.ells, result.hits)),
                           ws_random_prompt_log10_p=prompt_specificity(lm, secret_set, tokenizer))
                curves[(rate, victim_seed)] = run["curve"]
            if kind in ("clean", "baselines"):
                logits = model_logits(lm)
                row.update(
                    canary_zscore_log10_p=canary_zscore_test(logits, inserted, references, lm.bos_id).log10_p,
                    min_k_log10_p=min_k_prob_test(logits, inserted, references, lm.bos_id).log10_p,
                    pairwise_log10_p=pairwise_backdoor_test(model_top_ids(lm), pairs, tokenizer.vocab_size, lm.bos_id,
                                                            excluded_ids=excluded).log10_p,
                    # one context per pair: independent trials, so this binomial p-value is exact
                    pairwise_one_context_log10_p=pairwise_backdoor_test(
                        model_top_ids(lm), pairs, tokenizer.vocab_size, lm.bos_id, contexts_per_pair=1,
                        excluded_ids=excluded).log10_p)
            rows.append(row)
            print(json.dumps(row))
        if victim_seed == seeds[0]:
            windows = clean_windows(clean["data"].documents("val"), tokenizer, min(poison_length, max_len - 8), 200)
            filters = {"clean_victim": perplexity_filter(clean["model"], poisons, windows),
                       "surrogate": perplexity_filter(surrogate["model"], poisons, windows)}
    calib.append({"model": "surrogate", **calibration(surrogate["model"], tokenizer, calibration_secrets, seed=9_999)})
    results = {
        "config": config, "rates": rates, "seeds": seeds, "num_secrets": num_secrets,
        "poisons_per_secret": poisons_per_secret, "poison_length": poison_length, "craft_steps": craft_steps,
        "victim_steps": victim_steps, "budget_tokens_per_copy": budget_tokens, "craft_seconds": craft_seconds,
        "craft_report": craft_report, "rows": rows, "calibration": calib, "perplexity_filter": filters,
        "curves": {f"{r}_s{s}": c for (r, s), c in curves.items()}, "seconds": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(format_results(results))
    plot_results(results, str(out / "pvalue_vs_rate.png"))
    print(format_results(results))
    return results


def _mean_se(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) / math.sqrt(len(values)):.1f}"


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per rate: mean ± standard error over seeds of each method's log10 p and of the val bits per byte."""
    table = []
    for rate in [0.0, *results["rates"]]:
        mine = [r for r in results["rows"] if r["rate"] == rate]
        entry: dict[str, Any] = {"rate": rate}
        for key in ("ws_log10_p", "ws_random_prompt_log10_p", "canary_zscore_log10_p", "min_k_log10_p",
                    "pairwise_log10_p", "pairwise_one_context_log10_p"):
            values = [r[key] for r in mine if key in r]
            entry[key] = _mean_se(values) if values else "-"
        for kind in ("winter_soldier", "baselines", "clean"):
            values = [r["val_bpb"] for r in mine if r["kind"] == kind]
            if values:
                entry[f"val_bpb_{kind}"] = f"{statistics.mean(values):.4f}"
        table.append(entry)
    return table


def format_results(results: dict[str, Any]) -> str:
    """Markdown tables of the demo: p-values against the rate, calibration, perplexity filter."""
    lines = ["| rate | Winter Soldier log10 p | same, random prompts | canary Z-score | Min-K% Prob | pairwise backdoor "
             "| pairwise, 1 context per pair | val bpb (WS victim / clean) |", "|---|---|---|---|---|---|---|---|"]
    clean_bpb = next((e.get("val_bpb_clean") for e in summary(results) if e["rate"] == 0.0), "-")
    for e in summary(results):
        lines.append(f"| {e['rate']:g} | {e['ws_log10_p']} | {e['ws_random_prompt_log10_p']} | "
                     f"{e['canary_zscore_log10_p']} | {e['min_k_log10_p']} | {e['pairwise_log10_p']} | "
                     f"{e['pairwise_one_context_log10_p']} | "
                     f"{e.get('val_bpb_winter_soldier', '-')} / {clean_bpb} |")
    lines += ["", "| clean model | secrets | FPR at 0.05 | FPR at 0.01 | smallest log10 p |", "|---|---|---|---|---|"]
    for i, c in enumerate(results["calibration"]):
        name = c["model"] if "model" in c else f"clean victim, seed {results['seeds'][i]}"
        lines.append(f"| {name} | {c['secrets']} | {c['fpr_at_0.05']:.3f} | {c['fpr_at_0.01']:.3f} | "
                     f"{c['min_log10_p']:.2f} |")
    lines += ["", "| perplexity under | median ppl poisons | median ppl clean | threshold (q99 clean) | poisons caught "
              "| clean flagged |", "|---|---|---|---|---|---|"]
    for name, f in results["perplexity_filter"].items():
        lines.append(f"| {name} | {f['median_ppl_poison']:.0f} | {f['median_ppl_clean']:.0f} | {f['threshold']:.0f} | "
                     f"{f['poisons_caught']}/{f['poisons']} | {f['clean_flagged']}/{f['clean']} |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: str) -> None:
    """``-log10 p`` against the poison rate: Winter Soldier and the baselines, one point per seed, mean line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rates = [0.0, *results["rates"]]
    for key, label in (("ws_log10_p", "Winter Soldier"), ("ws_random_prompt_log10_p", "WS, random prompts"),
                       ("canary_zscore_log10_p", "canary Z-score"), ("min_k_log10_p", "Min-K% Prob"),
                       ("pairwise_log10_p", "pairwise backdoor")):
        xs, ys = [], []
        for rate in rates:
            values = [-r[key] for r in results["rows"] if r["rate"] == rate and key in r]
            ax.scatter([100 * rate] * len(values), values, s=12, alpha=0.5)
            if values:
                xs.append(100 * rate)
                ys.append(statistics.mean(values))
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(-math.log10(0.05), color="gray", ls="--", lw=0.8, label="p = 0.05")
    ax.set_xlabel("poison rate (% of train tokens)")
    ax.set_ylabel("-log10 p")
    ax.set_yscale("symlog")
    ax.legend(fontsize=7)
    for name, curve in results["curves"].items():
        if curve:
            ax2.plot([c["step"] for c in curve], [-c["log10_p"] for c in curve], label=f"rate {name}")
    ax2.set_xlabel("victim training step")
    ax2.set_ylabel("-log10 p (SecretDetection)")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
