"""MoE layer benchmark: forward + backward of litlab's MoE against its peers, side by side in one process.

Usage:
    python benchmarks/moe_layer.py                      # full sizes, fp32, CPU (the figures in the docs)
    python benchmarks/moe_layer.py --quick              # tiny sizes, a few seconds (smoke test)
    python benchmarks/moe_layer.py --device cuda --dtype bf16

Prints one JSON object per line:
``{"bench": "moe_layer", "case": ..., "metric": ..., "value": ..., "unit": ..., "baseline": ..., "ratio": ...}``.
Times are medians over ``--repeats`` runs after ``--warmup`` runs, the peers of a case interleaved run by run
in alternating order (robust to a noisy shared machine); ``ratio = ours / baseline`` (lower is better). Every peer is built from
the same weights as ours and computes the same function, which the ``max_abs_diff_vs_*`` lines check.

Peers:
  * ``dense``: a dense MLP with the same activated FLOPs (hidden = top_k * hidden_dim).
  * ``onehot_einsum``: GShard / V-MoE dispatch with one-hot dispatch/combine tensors and einsums, per group of
    ``--group-images`` images, capacity = the largest expert load of the group (dropless-equivalent).
  * ``expert_loop``: a Python loop over experts as in HF Mixtral (``torch.where`` on the mask, index, compute,
    ``index_add_``).
  * ``hf_mixtral_eager`` / ``hf_mixtral_grouped_mm``: ``transformers``' ``MixtralSparseMoeBlock`` (SwiGLU, no
    bias, top-k renormalised) with its ``eager`` experts (the loop; what a standalone block uses) and its
    ``grouped_mm`` experts (what a full HF model picks by default); ours uses ``activation="swiglu"``.
  * ``ours_loop`` vs ``ours_grouped_mm``: our two grouped-matmul back ends (the data behind ``dispatch="auto"``).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one forward + backward minus what was allocated
before (model, input). On CPU, each peer runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536`` (large
blocks are mmapped, so freed tensors leave the resident set at once); the figure is the peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) during one forward + backward minus the resident set just
before it, after a warm-up run and with gradients set to None: activations, temporaries and gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from litlab.models.moe import MoE


# ---------------------------------------------------------------------------------------------- peers
class DenseMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _route(moe: MoE, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(moe.router(tokens), dim=-1)
    w, idx = torch.topk(probs, moe.top_k, dim=-1)
    if moe.renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, idx


class OneHotEinsumMoE(nn.Module):
    """GShard / V-MoE style: one-hot dispatch and combine tensors [G, S, E, capacity], einsums, bmm experts."""

    def __init__(self, moe: MoE, group_tokens: int) -> None:
        super().__init__()
        self.moe, self.group_tokens = moe, group_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moe, ex = self.moe, self.moe.experts
        tokens = x.reshape(-1, moe.dim)
        T, E, k = tokens.shape[0], moe.num_experts, moe.top_k
        S = self.group_tokens
        G = T // S
        w, idx = _route(moe, tokens)
        onehot = F.one_hot(idx.view(G, S, k), E).transpose(1, 2)  # [G, k, S, E], slot-major priority
        pos = onehot.reshape(G, k * S, E).cumsum(1).view(G, k, S, E) - 1
        cap = int(onehot.sum((1, 2)).max())  # dropless-equivalent capacity
        pos = (pos * onehot).sum(-1)  # [G, k, S] position of each assignment in its expert
        slots = F.one_hot(pos, cap).unsqueeze(3) * onehot.unsqueeze(-1)  # [G, k, S, E, cap]
        amp = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if amp else tokens.dtype
        dispatch = slots.sum(1).to(dtype)  # [G, S, E, cap]
        combine = (slots * w.view(G, S, k).transpose(1, 2)[..., None, None]).sum(1).to(dtype)
        xin = torch.einsum("gsec,gsm->egcm", dispatch, tokens.view(G, S, -1).to(dtype)).reshape(E, G * cap, -1)
        h = torch.baddbmm(ex.fc1_bias.to(dtype).unsqueeze(1), xin, ex.fc1_weight.to(dtype).transpose(1, 2))
        y = torch.baddbmm(ex.fc2_bias.to(dtype).unsqueeze(1), ex.activate(h), ex.fc2_weight.to(dtype).transpose(1, 2))
        out = torch.einsum("gsec,egcm->gsm", combine, y.view(E, G, cap, -1))
        return out.reshape(x.shape)


class ExpertLoopMoE(nn.Module):
    """HF-Mixtral-style Python loop over experts: ``torch.where`` on the mask, index, compute, ``index_add_``."""

    def __init__(self, moe: MoE) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moe, ex = self.moe, self.moe.experts
        tokens = x.reshape(-1, moe.dim)
        w, idx = _route(moe, tokens)
        mask = F.one_hot(idx, moe.num_experts).permute(2, 1, 0)  # [E, k, T]
        out = torch.zeros_like(tokens)
        for e in range(moe.num_experts):
            slot, tok = torch.where(mask[e])
            if tok.numel() == 0:
                continue
            h = ex.activate(F.linear(tokens[tok], ex.fc1_weight[e], ex.fc1_bias[e]))
            y = F.linear(h, ex.fc2_weight[e], ex.fc2_bias[e]) * w[tok, slot, None]
            out.index_add_(0, tok, y.to(out.dtype))
        return out.reshape(x.shape)


def hf_mixtral(moe: MoE, implementation: str) -> nn.Module:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(
        hidden_size=moe.dim, intermediate_size=moe.hidden_dim, num_local_experts=moe.num_experts,
        num_experts_per_tok=moe.top_k, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
    )
    cfg._experts_implementation = implementation
    block = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():
        block.gate.weight.copy_(moe.router.weight)
        block.experts.gate_up_proj.copy_(moe.experts.fc1_weight)  # gate rows first, as ours
        block.experts.down_proj.copy_(moe.experts.fc2_weight)
    return block


# ---------------------------------------------------------------------------------------------- cases
def build_cases(a: argparse.Namespace) -> list[dict]:
    """Each case: name, ours (a name among peers), peers {name: module}, input shape, metric prefix."""
    B, N, C, Hd = (2, 17, 32, 64) if a.quick else (64, 197, 384, 1536)
    E0, k = 8, 2
    sweep = (4, 8) if a.quick else (4, 8, 16)
    group_images = min(a.group_images, B)
    shape = (B, N, C)
    size = f"T={B * N},C={C},H={Hd}"
    cases = []

    if "dense" in a.cases:
        def dense_peers() -> dict:
            ours = MoE(C, Hd, E0, k, seed=0)
            return {"ours": ours, "dense": DenseMLP(C, k * Hd)}
        cases.append({"name": f"vs_dense_same_flops/E={E0},k={k},{size}", "peers": dense_peers, "shape": shape,
                          "compare": False})
    if "sweep" in a.cases:
        for E in sweep:
            def sweep_peers(E: int = E) -> dict:
                ours = MoE(C, Hd, E, k, seed=0)
                return {"ours": ours, "onehot_einsum": OneHotEinsumMoE(ours, group_images * N),
                        "expert_loop": ExpertLoopMoE(ours)}
            cases.append({"name": f"vs_einsum_and_loop/E={E},k={k},{size},group={group_images * N}",
                              "peers": sweep_peers, "shape": shape, "compare": True})
    if "hf" in a.cases:
        def hf_peers() -> dict:
            ours = MoE(C, Hd, E0, k, activation="swiglu", renormalize=True, bias=False, seed=0)
            return {"ours": ours, "hf_mixtral_eager": hf_mixtral(ours, "eager"),
                    "hf_mixtral_grouped_mm": hf_mixtral(ours, "grouped_mm")}
        cases.append({"name": f"vs_hf_mixtral/E={E0},k={k},swiglu,{size}", "peers": hf_peers, "shape": shape,
                          "compare": True})
    if "backend" in a.cases:
        def backend_peers() -> dict:
            ours = MoE(C, Hd, E0, k, seed=0, dispatch="grouped_mm")
            loop = MoE(C, Hd, E0, k, seed=0, dispatch="loop")
            return {"ours": ours, "ours_loop": loop}
        cases.append({"name": f"backend_grouped_mm_vs_loop/E={E0},k={k},{size}", "peers": backend_peers,
                          "shape": shape, "compare": True})
    return cases


# ---------------------------------------------------------------------------------------------- timing
def _setup(a: argparse.Namespace):
    device = torch.device(a.device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if a.dtype == "bf16" else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return device, amp, sync


def _inputs(shape, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen).to(device)
    g = torch.randn(*shape, generator=gen).to(device)
    return x, g


def _step(module: nn.Module, x: torch.Tensor, g: torch.Tensor, amp) -> None:
    xx = x.detach().requires_grad_(True)
    with amp:
        y = module(xx)
    y.backward(g.to(y.dtype))


def emit(case: str, metric: str, value, unit: str, baseline=None, ratio=None) -> None:
    print(json.dumps({"bench": "moe_layer", "case": case, "metric": metric, "value": value, "unit": unit,
                      "baseline": baseline, "ratio": ratio}), flush=True)


def run_case(case: dict, a: argparse.Namespace) -> None:
    device, amp, sync = _setup(a)
    peers = {n: m.to(device) for n, m in case["peers"]().items()}
    x, g = _inputs(case["shape"], device)
    if case["compare"]:
        with torch.no_grad(), amp:
            ref = peers["ours"](x).float()
            for n, m in peers.items():
                if n != "ours":
                    emit(case["name"], f"max_abs_diff_vs_{n}", float((m(x).float() - ref).abs().max()), "abs")
    times: dict[str, list[float]] = {n: [] for n in peers}
    order = list(peers.items())
    for r in range(a.warmup + a.repeats):
        for n, m in order if r % 2 else order[::-1]:  # interleaved, alternating order: each peer once a repeat
            sync()
            t0 = time.perf_counter()
            _step(m, x, g, amp)
            sync()
            if r >= a.warmup:
                times[n].append((time.perf_counter() - t0) * 1e3)
            m.zero_grad(set_to_none=True)
    ours = statistics.median(times["ours"])
    for n in peers:
        if n == "ours":
            continue
        base = statistics.median(times[n])
        emit(case["name"], f"fwd_bwd_time_ratio_vs_{n}", round(ours, 2), "ms", round(base, 2), round(ours / base, 3))
    if a.memory:
        mem = {n: peak_memory(case, n, a) for n in peers}
        for n in peers:
            if n != "ours":
                emit(case["name"], f"peak_mem_ratio_vs_{n}", round(mem["ours"] / 2**20, 1), "MiB",
                     round(mem[n] / 2**20, 1), round(mem["ours"] / max(mem[n], 1), 3))
    del peers
    gc.collect()


# ---------------------------------------------------------------------------------------------- memory
def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) * 1024
    return out


def peak_memory(case: dict, peer: str, a: argparse.Namespace) -> int:
    """Extra bytes at the peak of one forward + backward (see the module docstring)."""
    if a.device.startswith("cuda"):
        device, amp, sync = _setup(a)
        m = case["peers"]()[peer].to(device)
        x, g = _inputs(case["shape"], device)
        _step(m, x, g, amp)
        m.zero_grad(set_to_none=True)
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(m, x, g, amp)
        sync()
        return torch.cuda.max_memory_allocated() - base
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", case["name"], peer,
           "--dtype", a.dtype, "--device", a.device, "--group-images", str(a.group_images)]
    cmd += ["--quick"] if a.quick else []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def memory_child(a: argparse.Namespace) -> None:
    case_name, peer = a.memory_child
    case = next(c for c in build_cases(a) if c["name"] == case_name)
    device, amp, _ = _setup(a)
    m = case["peers"]()[peer]
    x, g = _inputs(case["shape"], device)
    _step(m, x, g, amp)
    m.zero_grad(set_to_none=True)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    base = _proc_status()["VmRSS"]
    _step(m, x, g, amp)
    print(_proc_status()["VmHWM"] - base)


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: torch.autocast to bfloat16")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per peer (default 7, quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--group-images", type=int, default=8, help="images per group of the one-hot einsum peer")
    p.add_argument("--cases", default="dense,sweep,hf,backend", help="comma list among dense,sweep,hf,backend")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak memory (default: on, off with --quick)")
    p.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.cases = set(a.cases.split(","))
    if a.memory_child:
        a.cases = {"dense", "sweep", "hf", "backend"}
        return memory_child(a)
    if a.repeats is None:
        a.repeats = 3 if a.quick else 7
    if a.memory is None:
        a.memory = not a.quick
    emit(f"torch {torch.__version__}, {a.device}, {a.dtype}, threads={torch.get_num_threads()}",
         "environment", os.cpu_count(), "cpus")
    for case in build_cases(a):
        run_case(case, a)


if __name__ == "__main__":
    main()
