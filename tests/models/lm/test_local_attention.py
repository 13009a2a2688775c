"""Block-local sliding-window attention equals the full band-masked attention (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from litlab.models.lm.local_attention import (
    LocalWindow,
    block_masks,
    local_window_attention,
)
from litlab.models.lm.transformer import window_mask


@pytest.mark.parametrize("length, window", [(64, 16), (70, 16), (17, 16), (33, 8), (5, 2), (48, 47)])
def test_equals_full_band_mask_forward_and_backward(length, window):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pos = torch.arange(length)
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(pos, pos, window))
    local = LocalWindow(window, block_masks(-(-length // window), window))
    ours = local_window_attention(q, k, v, local)
    torch.testing.assert_close(ours, full)
    grads_full = torch.autograd.grad(full.square().sum(), (q, k, v))
    grads_ours = torch.autograd.grad(ours.square().sum(), (q, k, v))
    for a, b in zip(grads_ours, grads_full):
        torch.testing.assert_close(a, b)


def test_block_masks_see_exactly_the_window():
    masks = block_masks(3, 4)
    for n in range(3):
        for r in range(4):
            i = 4 * n + r
            seen = {4 * (n - 1) + c for c in range(8) if masks[n, r, c]}
            assert seen == {j for j in range(i - 3, i + 1) if j >= 0}
