"""Multi-linear upsampling: the one-matmul + gather form against the reference's loop and the formula."""

from __future__ import annotations

import pytest
import torch

from litlab.errors import ConfigError
from litlab.models.lm.pooling import pooling_plan
from litlab.models.lm.upsampling import MultiLinearUpsampling, reference_upsample


def _inputs(batch: int = 3, length: int = 80, pooled: int = 30, positions: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # sparse boundaries so that long segments use many of the position matrices (offsets ≥ P wrap around)
    levels = (torch.rand(batch, length, generator=gen) < 0.08).long()
    plan = pooling_plan(levels, [pooled], positions)
    y = torch.randn(batch, pooled, 24, generator=gen)
    return y, plan.coarse_index[0], plan.offset[0]


@pytest.mark.parametrize("impl", ["folded", "grouped_mm"])
def test_vectorised_matches_reference_loop_forward_and_backward(impl: str) -> None:
    torch.manual_seed(0)
    module = MultiLinearUpsampling(24, 16, positions=16, impl=impl)
    y, coarse, offset = _inputs()
    assert offset.max() == 15  # every position matrix is exercised
    y1 = y.clone().requires_grad_(True)
    y2 = y.clone().requires_grad_(True)
    out_fast = module(y1, coarse, offset)
    grad_out = torch.randn_like(out_fast)
    (out_fast * grad_out).sum().backward()
    fast_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    out_ref = reference_upsample(module, y2, coarse, offset)
    (out_ref * grad_out).sum().backward()
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y1.grad, y2.grad, atol=1e-5, rtol=1e-5)
    for (name, p), g in zip(module.named_parameters(), fast_grads, strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-4, rtol=1e-5, msg=name)


def test_matches_the_formula_position_by_position() -> None:
    torch.manual_seed(1)
    module = MultiLinearUpsampling(8, 6, positions=4)
    y, coarse, offset = _inputs(batch=2, length=30, pooled=12, positions=4, seed=1)
    y = y[..., :8]
    out = module(y, coarse, offset)
    z = module.norm(y)
    for b in range(2):
        for t in range(30):
            k, j = coarse[b, t], offset[b, t]
            expected = module.up.weight @ z[b, k] + module.position_weight[j] @ z[b, k]
            torch.testing.assert_close(out[b, t], expected, atol=1e-5, rtol=1e-5)


def test_step_matches_forward() -> None:
    torch.manual_seed(2)
    module = MultiLinearUpsampling(24, 20)
    y, coarse, offset = _inputs(seed=2)
    out = module(y, coarse, offset)
    for t in (0, 5, 41, 79):
        k, j = coarse[1, t], int(offset[1, t])
        torch.testing.assert_close(module.step(y[1:2, k : k + 1], j)[0, 0], out[1, t], atol=1e-6, rtol=1e-5)


def test_compiles_fullgraph() -> None:
    torch.manual_seed(3)
    module = MultiLinearUpsampling(24, 16)
    y, coarse, offset = _inputs(seed=3)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(y, coarse, offset), module(y, coarse, offset))


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_autocast(dtype: torch.dtype) -> None:
    module = MultiLinearUpsampling(24, 16)
    y, coarse, offset = _inputs(seed=4)
    with torch.autocast("cpu", dtype=dtype):
        out = module(y, coarse, offset)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), module(y, coarse, offset), atol=0.1, rtol=0.05)


def test_grouped_mm_backend_matches_folded_and_falls_back_when_compiled() -> None:
    torch.manual_seed(5)
    folded = MultiLinearUpsampling(24, 16, impl="folded")
    grouped = MultiLinearUpsampling(24, 16)  # auto: grouped_mm on the CPU in eager fp32
    grouped.load_state_dict(folded.state_dict())
    y, coarse, offset = _inputs(seed=5)
    y1, y2 = y.clone().requires_grad_(True), y.clone().requires_grad_(True)
    out1, out2 = folded(y1, coarse, offset), grouped(y2, coarse, offset)
    torch.testing.assert_close(out2, out1, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(out1)
    out1.backward(grad_out)
    out2.backward(grad_out)
    torch.testing.assert_close(y2.grad, y1.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grouped.position_weight.grad, folded.position_weight.grad, atol=1e-4, rtol=1e-5)
    compiled = torch.compile(grouped, fullgraph=True, backend="aot_eager")  # fp32: folded fallback
    torch.testing.assert_close(compiled(y, coarse, offset), out1.detach(), atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: grouped_mm also under compile
        compiled_bf16 = torch.compile(grouped, fullgraph=True, backend="aot_eager")(y, coarse, offset)
        torch.testing.assert_close(compiled_bf16, grouped(y, coarse, offset))
    assert MultiLinearUpsampling(20, 12).grouped is False  # auto with unaligned widths: folded
    with pytest.raises(ConfigError, match="divisible by 8"):
        MultiLinearUpsampling(20, 12, impl="grouped_mm")
    with pytest.raises(ConfigError, match="upsample_impl"):
        MultiLinearUpsampling(24, 16, impl="loop")
