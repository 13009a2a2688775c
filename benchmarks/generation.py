"""Generation benchmarks.

Usage:
    python benchmarks/generation.py                   # both suites (the docs' figures)
    python benchmarks/generation.py --suite cached    # KV cache vs none, batch 1 (AU-Net 2/3, flat bytes)
    python benchmarks/generation.py --suite batch     # batched decoding vs transformers, prefix reuse
    python benchmarks/generation.py --quick           # smaller sizes, a few seconds

Suite ``batch`` (:mod:`litlab.models.lm.ragged`, :mod:`litlab.models.lm.hf_model`): a tiny Llama-shaped
litlab Transformer (random weights, vocabulary 4096) is exported to a Hugging Face ``LlamaForCausalLM``
(:mod:`litlab.models.lm.hf_export`), so both hold the same weights. 32 prompts of 20-60 tokens, greedy, 64 new
tokens, no EOS. ``time_ratio_ours_vs_hf_generate``: litlab's batched decoding of the litlab model (one ragged
KV cache) / ``model.generate()`` of transformers on the Llama export, same prompts (left-padded for
transformers), same thread count; ``time_ratio_hf_decoder_vs_hf_generate``: litlab's loop over the
transformers model itself (``HFCausalLM``'s decoder) / ``model.generate()``. ``greedy_agreement``: share of the
generated ids equal between litlab and transformers. Then ``time_ratio_prefix_reuse``: 32 questions after an
8-shot prefix of ~1,000 tokens, 32 new tokens each, with the prefix computed once / once per question.

Suite ``cached``: bytes per second with and without KV caches (AU-Net 2, AU-Net 3, flat byte Transformer).

Each model is fed real text (CPython's ``pydoc_data.topics``) byte by byte after the prompt — the work of
greedy generation without the sampling, and with realistic boundaries (random-weight models would generate
bytes with unrealistic splits). ``cached``: :class:`litlab.models.lm.generation.Stepper` with KV caches (the
byte stage runs every byte, deeper stages only on their boundaries); ``uncached``: a full forward over the
window for every byte (what the reference's generator costs per byte, minus its O(length) re-splitting).
Both run with random weights in float32 on batch 1, in one process, interleaved per repeat.

CPU runs use ``--threads`` torch threads (default 1: small ops on a busy shared machine are otherwise
dominated by thread synchronisation). Prints one JSON object per line; ``time_per_byte_cached_vs_uncached`` has ``ratio = cached / uncached`` time per byte (lower is better) and the
largest logit difference between the two paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from litlab.models.lm.aunet import AUNet
from litlab.models.lm.flat_transformer import FlatTransformer
from litlab.models.lm.generation import Stepper, decode_batch
from litlab.models.lm.hf_export import export_llama
from litlab.models.lm.hf_model import HFDecoder
from litlab.models.lm.ragged import RaggedDecoder
from litlab.text import encode_bytes


def models() -> dict[str, AUNet | FlatTransformer]:
    torch.manual_seed(0)
    return {
        "aunet2": AUNet([128, 256], [2, 4], [2, 4], [128, None], [1024, 512]),
        "aunet3": AUNet([128, 256, 384], [2, 2, 4], [2, 4, 6], [128, None, None], [1024, 512, 256]),
        "flat_bytes": FlatTransformer(256, 6, 4, 258, max_length=1024, window=None),
    }


def emit(case: str, metric: str, value: float, unit: str, baseline: float | None = None) -> None:
    ratio = None if baseline in (None, 0) else value / baseline
    print(json.dumps({"bench": "generation", "case": case, "metric": metric, "value": value, "unit": unit,
                      "baseline": baseline, "ratio": ratio}), flush=True)  # fmt: skip


def feed(model: AUNet | FlatTransformer, ids: list[int], prompt: int, use_cache: bool) -> tuple[float, list]:
    stepper = Stepper(model, use_cache=use_cache)
    start = time.perf_counter()
    logits = [stepper.prefill(ids[:prompt])]
    logits += [stepper.step(token) for token in ids[prompt:-1]]
    return time.perf_counter() - start, logits


def cached_suite(args: argparse.Namespace) -> None:
    """KV-cached vs uncached decoding, batch 1."""
    new = 32 if args.quick else args.new
    import pydoc_data.topics

    text = pydoc_data.topics.topics["if"] + pydoc_data.topics.topics["while"]
    ids = encode_bytes(text, eos=False).tolist()[: args.prompt + new + 1]
    for name, model in models().items():
        model.eval()
        case = f"{name},prompt={args.prompt},new={new},fp32,cpu,batch=1"
        feed(model, ids[: args.prompt + 4], args.prompt, True)  # warm-up
        times = {True: [], False: []}
        outputs = {}
        for r in range(args.repeats):
            for use_cache in (True, False) if r % 2 == 0 else (False, True):
                elapsed, outputs[use_cache] = feed(model, ids, args.prompt, use_cache)
                times[use_cache].append(elapsed)
        uncached = new / statistics.median(times[False])
        cached = new / statistics.median(times[True])
        emit(case, "bytes_per_s_uncached", uncached, "bytes/s")
        emit(case, "bytes_per_s_cached", cached, "bytes/s")
        emit(case, "time_per_byte_cached_vs_uncached", 1 / cached, "s", 1 / uncached)
        diff = max((a - b).abs().max().item() for a, b in zip(outputs[True], outputs[False], strict=True))
        emit(case, "max_abs_logit_diff_cached_vs_uncached", diff, "abs")
        emit(case, "params", float(model.num_params()), "count")


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls (after one warm-up call) and the last result."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@torch.no_grad()
def batch_suite(args: argparse.Namespace) -> None:
    """Batched decoding vs transformers' generate on the same weights, and shared-prefix reuse."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    vocab, batch, new = 4096, 32, 16 if args.quick else 64
    ours = FlatTransformer(128 if args.quick else 256, 2 if args.quick else 4, 4, vocab, max_length=2048).eval()
    with tempfile.TemporaryDirectory() as out:
        export_llama(ours, out, None, bos_id=1, eos_id=2)
        hf = LlamaForCausalLM.from_pretrained(out, local_files_only=True, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(1)
    rows = [[1, *torch.randint(3, vocab, (int(n),), generator=generator).tolist()]
            for n in torch.randint(20, 61, (batch,), generator=generator)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    case = f"llama-shaped dim={ours.dim},layers={ours.num_layers},vocab={vocab},batch={batch},new={new},greedy,fp32,cpu"

    def hf_generate():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[:, width:].tolist()

    t_hf, hf_out = timed(hf_generate, args.repeats)
    t_ours, our_out = timed(lambda: decode_batch(RaggedDecoder(ours), rows, new, eos_id=-1), args.repeats)
    t_loop, loop_out = timed(lambda: decode_batch(HFDecoder(hf, pad_id=0), rows, new, eos_id=-1), args.repeats)
    emit(case, "seconds_hf_generate", t_hf, "s")
    emit(case, "time_ratio_ours_vs_hf_generate", t_ours, "s", t_hf)
    emit(case, "time_ratio_hf_decoder_vs_hf_generate", t_loop, "s", t_hf)
    same = sum(a == b for x, y in zip(our_out, hf_out, strict=True) for a, b in zip(x, y, strict=True))
    emit(case, "greedy_agreement_ours_vs_hf", same / (batch * new), "fraction")
    same = sum(a == b for x, y in zip(loop_out, hf_out, strict=True) for a, b in zip(x, y, strict=True))
    emit(case, "greedy_agreement_hf_decoder_vs_hf", same / (batch * new), "fraction")

    shots = 8
    prefix = [1, *torch.randint(3, vocab, (shots * 125,), generator=generator).tolist()]
    questions = [torch.randint(3, vocab, (int(n),), generator=generator).tolist()
                 for n in torch.randint(30, 51, (batch,), generator=generator)]
    case = f"prefix={len(prefix)} tokens ({shots} shots),questions={batch},new=32,greedy,fp32,cpu"
    t_reuse, a = timed(lambda: decode_batch(RaggedDecoder(ours), questions, 32, eos_id=-1, prefix=prefix),
                       args.repeats)
    t_full, b = timed(lambda: decode_batch(RaggedDecoder(ours), [[*prefix, *q] for q in questions], 32, eos_id=-1),
                      args.repeats)
    emit(case, "time_ratio_prefix_reuse", t_reuse, "s", t_full)
    emit(case, "prefix_reuse_equal_output", float(a == b), "bool")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("all", "cached", "batch"), default="all")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.suite in ("all", "cached"):
        cached_suite(args)
    if args.suite in ("all", "batch"):
        batch_suite(args)


if __name__ == "__main__":
    main()
