"""MoE layer: fast dispatch against an explicit per-token reference, upcycling, dtypes, shapes, config errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litlab.errors import ConfigError
from litlab.models.moe import MoE, RouterStats, collect_aux_loss, moe_layers
from litlab.models.moe.dispatch import grouped_mm_supported

C, H = 16, 32  # multiples of 8 so that grouped_mm accepts fp32 and bf16 operands


def reference_forward(m: MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow, obviously correct MoE: loop over tokens and their chosen experts (no router noise).

    Capacity rule, written naively: all first choices before all second choices; within a choice, tokens in
    order (or by decreasing top-1 weight with batch priority); an expert takes assignments until full.
    """
    tokens = x.reshape(-1, m.dim)
    T, E, k = tokens.shape[0], m.num_experts, m.top_k
    probs = torch.softmax(m.router(tokens), dim=-1)
    w, idx = torch.topk(probs, k, dim=-1)
    if m.renormalize:
        w = w / w.sum(-1, keepdim=True)
    factor = m.capacity_factor if m.training else m.eval_capacity_factor
    keep = [[True] * k for _ in range(T)]
    if factor is not None:
        cap = math.ceil(factor * T * k / E)
        order = list(range(T))
        if m.batch_priority:
            order = sorted(order, key=lambda t: -float(w[t, 0].detach()))
        used = [0] * E
        for s in range(k):
            for t in order:
                e = int(idx[t, s])
                if used[e] < cap:
                    used[e] += 1
                else:
                    keep[t][s] = False
    ex = m.experts
    rows = []
    for t in range(T):
        acc = tokens.new_zeros(m.dim)
        for s in range(k):
            if not keep[t][s]:
                continue
            e = int(idx[t, s])
            h = tokens[t] @ ex.fc1_weight[e].t()
            if ex.fc1_bias is not None:
                h = h + ex.fc1_bias[e]
            if ex.activation == "gelu":
                h = F.gelu(h)
            else:
                h = F.silu(h[: ex.hidden_dim]) * h[ex.hidden_dim :]
            y = h @ ex.fc2_weight[e].t()
            if ex.fc2_bias is not None:
                y = y + ex.fc2_bias[e]
            acc = acc + w[t, s] * y
        rows.append(acc)
    index = idx.clone()
    for t in range(T):
        for s in range(k):
            if not keep[t][s]:
                index[t, s] = -1
    return torch.stack(rows).reshape(x.shape), index.reshape(*x.shape[:-1], k)


def _grads(m: nn.Module, x: torch.Tensor, out: torch.Tensor, g: torch.Tensor | None) -> list[torch.Tensor]:
    """Gradients of ``(out * g).sum()`` (of ``out.sum()``, an expanded upstream gradient, when g is None)."""
    params = [x] + [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.sum() if g is None else out, params, g, allow_unused=True)
    return [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]


IMPLS = ["loop", "grouped_mm"] if grouped_mm_supported(torch.zeros(1, C), torch.zeros(1, H, C)) else ["loop"]

CASES = [
    # E, k, activation, expert_width, renormalize, capacity_factor, batch_priority
    {"num_experts": 1, "top_k": 1},
    {"num_experts": 4, "top_k": 1},
    {"num_experts": 4, "top_k": 2, "renormalize": True},
    {"num_experts": 4, "top_k": 4, "activation": "swiglu"},
    {"num_experts": 8, "top_k": 2, "activation": "swiglu", "expert_width": "split"},
    {"num_experts": 4, "top_k": 2, "expert_width": "split", "bias": False},
    {"num_experts": 4, "top_k": 2, "capacity_factor": 0.5},
    {"num_experts": 4, "top_k": 2, "capacity_factor": 0.75, "batch_priority": True, "renormalize": True},
    {"num_experts": 8, "top_k": 3, "capacity_factor": 1.0, "activation": "swiglu", "batch_priority": True},
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_fast_dispatch_matches_reference(kw: dict, impl: str) -> None:
    m = MoE(C, H, seed=0, dispatch=impl, **kw)
    m.train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, C, generator=gen, requires_grad=True)
    g = torch.randn(3, 7, C, generator=gen)
    out = m(x)
    ref, ref_index = reference_forward(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(m.expert_index, ref_index)
    for a, b in zip(_grads(m, x, out, g), _grads(m, x, ref, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    dropped = int((ref_index < 0).sum())
    assert m.stats.dropped_tokens == dropped
    if kw.get("capacity_factor", 1.0) < 1.0:
        assert dropped > 0


def test_eval_capacity_factor_applies_in_eval_only() -> None:
    m = MoE(C, H, 4, 2, capacity_factor=0.25, eval_capacity_factor=0.5, seed=0)
    x = torch.randn(40, C)
    m.train()
    with torch.no_grad():
        m(x)
        _, ref_index = reference_forward(m, x)
    assert torch.equal(m.expert_index, ref_index) and m.stats.dropped_tokens >= 80 - 4 * 5
    m.eval()
    with torch.no_grad():
        out = m(x)
        ref, ref_index = reference_forward(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(m.expert_index, ref_index)
    m2 = MoE(C, H, 4, 2, capacity_factor=0.25, seed=0).eval()  # eval default: dropless
    m2(x)
    assert m2.stats.dropped_tokens == 0 and bool((m2.expert_index >= 0).all())


def test_upcycled_single_expert_equals_timm_mlp() -> None:
    from timm.layers import Mlp

    torch.manual_seed(0)
    dense = Mlp(C, H)  # fc1 -> nn.GELU() (exact erf) -> fc2
    m = MoE(C, H, num_experts=1, top_k=1, activation="gelu")
    m.load_dense(dense.fc1.weight, dense.fc1.bias, dense.fc2.weight, dense.fc2.bias)
    x = torch.randn(2, 9, C)
    torch.testing.assert_close(m(x), dense(x), rtol=1e-6, atol=1e-6)
    seq = nn.Sequential(nn.Linear(C, H), nn.GELU(), nn.Linear(H, C))
    m.load_dense(seq[0].weight, seq[0].bias, seq[2].weight, seq[2].bias)
    torch.testing.assert_close(m(x), seq(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_upcycled_identical_experts_with_renormalize_equal_dense(activation: str) -> None:
    from timm.layers import Mlp, SwiGLU

    torch.manual_seed(0)
    if activation == "gelu":
        dense = Mlp(C, H)
        fc1_w, fc1_b = dense.fc1.weight, dense.fc1.bias
    else:
        dense = SwiGLU(C, H)
        nn.init.normal_(dense.fc1_g.weight, std=0.3)  # timm's own init makes the gate ~constant
        fc1_w = torch.cat([dense.fc1_g.weight, dense.fc1_x.weight])
        fc1_b = torch.cat([dense.fc1_g.bias, dense.fc1_x.bias])
    m = MoE(C, H, num_experts=4, top_k=2, activation=activation, renormalize=True, router="cosine")
    m.load_dense(fc1_w, fc1_b, dense.fc2.weight, dense.fc2.bias)
    x = torch.randn(2, 5, C)
    torch.testing.assert_close(m(x), dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_split_upcycling_sums_to_dense(activation: str) -> None:
    E = 4
    g = 2 if activation == "swiglu" else 1
    fc1_w, fc1_b = torch.randn(g * H, C), torch.randn(g * H)
    fc2_w, fc2_b = torch.randn(C, H), torch.randn(C)
    x = torch.randn(6, C)
    h = x @ fc1_w.t() + fc1_b
    h = F.gelu(h) if activation == "gelu" else F.silu(h[:, :H]) * h[:, H:]
    dense = h @ fc2_w.t() + fc2_b
    m = MoE(C, H, num_experts=E, top_k=E, activation=activation, expert_width="split")
    m.load_dense(fc1_w, fc1_b, fc2_w, fc2_b)
    ex = m.experts
    total = 0
    for e in range(E):
        he = ex.activate(x @ ex.fc1_weight[e].t() + ex.fc1_bias[e])
        total = total + he @ ex.fc2_weight[e].t() + ex.fc2_bias[e]
    torch.testing.assert_close(total, dense, rtol=1e-4, atol=1e-4)


def test_load_dense_shape_errors() -> None:
    m = MoE(C, H, 4, 2)
    with pytest.raises(ConfigError, match="fc1_weight.*expected"):
        m.load_dense(torch.zeros(H + 1, C), None, torch.zeros(C, H), None)
    with pytest.raises(ConfigError, match="fc2_bias"):
        m.load_dense(torch.zeros(H, C), None, torch.zeros(C, H), torch.zeros(C + 1))
    sw = MoE(C, H, 4, 2, activation="swiglu")
    with pytest.raises(ConfigError, match="SwiGLU"):
        sw.load_dense(torch.zeros(H, C), None, torch.zeros(C, H), None)
    nb = MoE(C, H, 4, 2, bias=False)
    with pytest.raises(ConfigError, match="bias=False"):
        nb.load_dense(torch.zeros(H, C), torch.ones(H), torch.zeros(C, H), None)
    nb.load_dense(torch.zeros(H, C), None, torch.zeros(C, H), None)  # no bias given: fine


@pytest.mark.skipif(len(IMPLS) < 2, reason="F.grouped_mm unavailable on this CPU build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_mm_equals_loop(dtype: torch.dtype) -> None:
    x = torch.randn(4, 10, C, dtype=dtype, requires_grad=True)
    outs, grads = [], []
    for impl in ("grouped_mm", "loop"):
        m = MoE(C, H, 8, 2, activation="swiglu", seed=3, dispatch=impl).to(dtype)
        out = m(x)
        outs.append(out)
        grads.append(_grads(m, x, out, None))  # out.sum(): a stride-0 upstream gradient
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(outs[0], outs[1], **tol)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_close_to_fp32(impl: str) -> None:
    m = MoE(C, H, 4, 2, seed=0, dispatch=impl, capacity_factor=2.0)
    x = torch.randn(2, 12, C, requires_grad=True)
    ref = m(x)
    index_fp32 = m.expert_index.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(m.expert_index, index_fp32)  # the router runs in fp32 under autocast
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)
    (out.float().square().sum() + m.aux_loss).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert m.experts.fc1_weight.grad.dtype == torch.float32
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0


def test_bf16_parameters_and_inputs() -> None:
    m = MoE(C, H, 4, 2, seed=0, router="mlp").to(torch.bfloat16)
    x = torch.randn(3, 5, C, dtype=torch.bfloat16, requires_grad=True)
    out = m(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    out.float().sum().backward()
    assert m.experts.fc2_weight.grad.dtype == torch.bfloat16
    assert m.aux_loss.dtype == torch.float32


def test_leading_shapes_and_seed_determinism() -> None:
    a, b = MoE(C, H, 4, 2, seed=7), MoE(C, H, 4, 2, seed=7)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    c = MoE(C, H, 4, 2, seed=8)
    assert not torch.equal(a.experts.fc1_weight, c.experts.fc1_weight)
    x = torch.randn(2, 3, 4, C)  # NHWC
    out = a(x)
    assert out.shape == x.shape and a.expert_index.shape == (2, 3, 4, 2)
    flat = a(x.reshape(2, 12, C))  # [B, N, C]
    torch.testing.assert_close(out.reshape(2, 12, C), flat)
    assert a.expert_index.shape == (2, 12, 2)
    torch.testing.assert_close(a(x.reshape(-1, C)), flat.reshape(-1, C))


def test_init_scratch_vs_identical() -> None:
    s = MoE(C, H, 4, 2, seed=0)
    assert not torch.equal(s.experts.fc1_weight[0], s.experts.fc1_weight[1])
    bound = 1 / math.sqrt(C)
    assert s.experts.fc1_weight.abs().max() <= bound and s.experts.fc1_weight.std() > bound / 3
    i = MoE(C, H, 4, 2, init="identical", seed=0)
    for p in (i.experts.fc1_weight, i.experts.fc1_bias, i.experts.fc2_weight, i.experts.fc2_bias):
        assert all(torch.equal(p[0], p[e]) for e in range(4))


def test_stats() -> None:
    m = MoE(C, H, 8, 2, seed=0)
    with torch.no_grad():  # route every token to experts 0 and 1
        m.router.weight.zero_()
    m.router.weight.data[0, 0], m.router.weight.data[1, 0] = 10.0, 5.0
    x = torch.randn(50, C).abs() + 0.5
    m(x)
    st = m.stats
    assert isinstance(st, RouterStats)
    assert st.num_tokens == 50 and st.dead_experts == 6 and st.dropped_tokens == 0
    torch.testing.assert_close(st.tokens_per_expert, torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0]))
    assert 0 <= st.entropy < math.log(8)
    m.capacity_factor = 1.0  # capacity ceil(1.0 * 50 * 2 / 8) = 13 per expert
    m(x)
    st = m.stats
    assert st.dropped_tokens == 100 - 26 and int((m.expert_index == -1).sum()) == 74
    torch.testing.assert_close(st.tokens_per_expert.sum(), torch.tensor(1.0))
    u = MoE(C, H, 4, 1, seed=0)
    with torch.no_grad():
        u.router.weight.zero_()  # uniform softmax: entropy log(E)
    u(torch.randn(10, C))
    assert u.stats.entropy == pytest.approx(math.log(4), rel=1e-6)


def test_router_noise_training_only() -> None:
    m = MoE(C, H, 8, 2, router_noise=1.0, seed=0)
    x = torch.randn(64, C)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    idx_a = m.expert_index.clone()
    b = m(x)
    assert not torch.allclose(a, b) or not torch.equal(idx_a, m.expert_index)


@pytest.mark.parametrize("router", ["linear", "cosine", "mlp"])
def test_routers_fp32_and_cosine_scale_clamp(router: str) -> None:
    m = MoE(C, H, 4, 2, router=router, seed=0)
    x = torch.randn(5, C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m.router(x)
    assert logits.dtype == torch.float32 and logits.shape == (5, 4)
    if router == "linear":
        assert m.router.weight.shape == (4, C) and len(list(m.router.parameters())) == 1
    if router == "cosine":
        assert m.router.proj.out_features == 256
        assert logits.abs().max() <= 1 / 0.5 + 1e-5  # |cos| <= 1 times 1/temperature (init 0.5)
        with torch.no_grad():
            m.router.log_scale.fill_(10.0)
        assert m.router(x).abs().max() <= 100 + 1e-3
        assert m.router(x).abs().max() > 2


def test_active_parameter_count() -> None:
    m = MoE(C, H, 8, 2)
    assert m.num_active_params_per_token == 8 * C + 2 * (C * H + H + H * C + C)
    s = MoE(C, H, 8, 2, expert_width="split", activation="swiglu", bias=False)
    assert s.num_active_params_per_token == 8 * C + 2 * (2 * (H // 8) * C + (H // 8) * C)
    total = sum(p.numel() for p in m.parameters())
    assert total == 8 * C + 8 * (C * H + H + H * C + C)


def test_empty_input() -> None:
    m = MoE(C, H, 4, 2, capacity_factor=1.0, z_loss_weight=0.1)
    x = torch.zeros(0, 3, C, requires_grad=True)
    out = m(x)
    assert out.shape == x.shape and m.expert_index.shape == (0, 3, 2)
    assert float(m.aux_loss) == 0.0 and m.stats.num_tokens == 0
    out.sum().backward()


def test_moe_layers_and_collect_aux_loss() -> None:
    model = nn.Sequential(nn.Linear(C, C), MoE(C, H, 4, 2), nn.Sequential(MoE(C, H, 4, 1, z_loss_weight=0.1)))
    assert list(moe_layers(model)) == ["1", "2.0"]
    assert float(collect_aux_loss(nn.Linear(2, 2))) == 0.0
    model(torch.randn(6, C)).sum()
    total = collect_aux_loss(model)
    torch.testing.assert_close(total, model[1].aux_loss + model[2][0].aux_loss)
    assert total.requires_grad
    total.backward()
    assert model[1].router.weight.grad is not None


BAD = [
    ({"top_k": 9}, "top_k=9 must satisfy 1 <= top_k <= num_experts=8"),
    ({"top_k": 0}, "top_k=0"),
    ({"num_experts": 0, "top_k": 1}, "num_experts=0"),
    ({"expert_width": "split", "num_experts": 5, "top_k": 1}, "hidden_dim=32 must be divisible by num_experts=5"),
    ({"expert_width": "half"}, "expert_width='half'"),
    ({"load_weight": 0.1}, "load_weight=0.1 needs router_noise > 0"),
    ({"router": "topk"}, "router='topk' is not allowed; choose one of"),
    ({"activation": "relu"}, "activation='relu'"),
    ({"init": "zeros"}, "init='zeros'"),
    ({"capacity_factor": 0.0}, "capacity_factor=0.0"),
    ({"eval_capacity_factor": -1.0}, "eval_capacity_factor=-1.0"),
    ({"router_noise": -1.0}, "router_noise=-1.0"),
    ({"z_loss_weight": -0.1}, "z_loss_weight=-0.1"),
    ({"batch_priority": True}, "batch_priority=True needs capacity_factor"),
    ({"dispatch": "triton"}, "dispatch='triton'"),
]


@pytest.mark.parametrize("kw,message", BAD, ids=[m.split("=")[0] for _, m in BAD])
def test_config_errors(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        MoE(C, H, **kw)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bad_input_width() -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., 16\]"):
        MoE(C, H)(torch.randn(2, C + 1))


def test_meta_init_then_reset_parameters_matches_seeded_init() -> None:
    ref = MoE(C, H, 4, 2, router="cosine", init="identical", seed=5)
    with torch.device("meta"):
        m = MoE(C, H, 4, 2, router="cosine", init="identical", seed=5)
    assert m.experts.fc1_weight.is_meta
    m.to_empty(device="cpu")
    m.reset_parameters()
    for (name, a), b in zip(ref.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), name


def test_loop_blocks_smaller_than_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    from litlab.models.moe import dispatch

    monkeypatch.setattr(dispatch, "LOOP_BLOCK_ROWS", 3)  # several blocks per expert segment
    m = MoE(C, H, 4, 2, activation="swiglu", seed=0, dispatch="loop", capacity_factor=0.9)
    x = torch.randn(2, 11, C, requires_grad=True)
    g = torch.randn(2, 11, C)
    out = m(x)
    ref, _ = reference_forward(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(m, x, out, g), _grads(m, x, ref, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("capacity", [None, 4])
def test_gather_and_combine_index_add_equal_unpermute_sum(capacity: int | None) -> None:
    from litlab.models.moe.dispatch import combine, gather, plan_dispatch

    T, E, k = 12, 4, 2
    index = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
    plan = plan_dispatch(index, E, capacity)
    M = int(plan.counts.sum())
    results = []
    for index_add in (True, False):
        y = torch.randn(M, C, generator=torch.Generator().manual_seed(0), requires_grad=True)
        w = torch.rand(T, k, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out = combine(y, w, plan, index_add=index_add)
        out.backward(torch.arange(T * C, dtype=torch.float32).reshape(T, C) / (T * C))
        results.append((out, y.grad, w.grad))
        expected = torch.zeros(T, C)
        for row in range(M):  # the definition, row by row
            t, s = divmod(int(plan.slot_index[row]), k)
            expected[t] += w[t, s] * y[row]
        torch.testing.assert_close(out, expected)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    tokens_grads = []
    for index_add in (True, False):  # gather's backward: sum of the gradients of each token's kept copies
        tokens = torch.randn(T, C, generator=torch.Generator().manual_seed(2), requires_grad=True)
        rows = gather(tokens, plan, k, index_add=index_add)
        torch.testing.assert_close(rows, tokens.detach()[plan.token_index])
        rows.backward(torch.arange(M * C, dtype=torch.float32).reshape(M, C))
        tokens_grads.append(tokens.grad)
    expected = torch.zeros(T, C)
    for row in range(M):
        expected[int(plan.token_index[row])] += torch.arange(row * C, (row + 1) * C, dtype=torch.float32)
    torch.testing.assert_close(tokens_grads[0], expected)
    torch.testing.assert_close(tokens_grads[1], expected)
    if capacity is not None:
        dropped = torch.ones(T * k, dtype=torch.bool)
        dropped[plan.slot_index] = False
        assert bool((results[0][2].reshape(-1)[dropped] == 0).all())  # dropped slots get no gradient
