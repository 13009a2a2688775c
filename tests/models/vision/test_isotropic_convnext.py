"""The isotropic ConvNeXt (ConvNeXt paper Sec. 3.3) registered with timm by ``litlab.models``."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import Mlp

import litlab.models.vision  # noqa: F401  (registers the timm names)
from litlab.models.vision.isotropic_convnext import IsotropicConvNeXt


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _formula(depth: int, dim: int, num_classes: int = 1000, patch: int = 16, in_chans: int = 3) -> int:
    """Parameters of the architecture: stem + blocks (dwconv 7x7, LayerNorm, MLP 8C^2+5C) + head (LayerNorm, fc)."""
    stem = in_chans * patch * patch * dim + dim
    block = (49 * dim + dim) + 2 * dim + (8 * dim * dim + 5 * dim)
    head = 2 * dim + dim * num_classes + num_classes
    return stem + depth * block + head


@pytest.mark.parametrize(
    "name, depth, dim, expected, paper_millions",
    [
        ("convnext_isotropic_small", 18, 384, 22_308_712, 22),
        ("convnext_isotropic_base", 18, 768, 87_083_752, 87),
        ("convnext_isotropic_large", 36, 1024, 305_905_640, 306),
    ],
)
def test_paper_variants_parameter_counts(name, depth, dim, expected, paper_millions):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=1000)
    assert isinstance(model, IsotropicConvNeXt)
    assert len(model.blocks) == depth and model.num_features == dim
    assert _count(model) == expected == _formula(depth, dim)
    assert round(expected / 1e6) == paper_millions  # ConvNeXt paper, isotropic table: 22M / 87M / 306M


def test_forward_shapes_and_interface():
    torch.manual_seed(0)
    model = timm.create_model("test_convnext_isotropic", num_classes=7, in_chans=1)
    x = torch.randn(2, 1, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, 32, 8, 8)  # patch 8, no downsampling after the stem
    assert model.forward_head(features, pre_logits=True).shape == (2, 32)
    assert model(x).shape == (2, 7)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)
    final, inter = model.forward_intermediates(x, indices=2)
    assert final.shape == (2, 32, 8, 8) and [t.shape for t in inter] == [(2, 32, 8, 8)] * 2


def test_blocks_are_timm_convnext_blocks_with_nhwc_mlp():
    model = timm.create_model("test_convnext_isotropic", num_classes=10)
    assert not hasattr(model, "stages")  # vision.find_blocks must see it as isotropic (model.blocks[i].mlp)
    for block in model.blocks:
        assert isinstance(block.mlp, Mlp) and isinstance(block.mlp.fc1, torch.nn.Linear)
        assert block.gamma is None  # no layer scale by default (the paper's isotropic models)
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = inputs[0].shape

    model.blocks[0].mlp.register_forward_hook(hook)
    model(torch.randn(2, 3, 64, 64))
    assert seen["shape"] == (2, 8, 8, 32)  # NHWC
    conv = timm.create_model("test_convnext_isotropic", num_classes=10, conv_mlp=True)
    assert isinstance(conv.blocks[0].mlp.fc1, torch.nn.Conv2d)
    assert conv(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_drop_path_is_linear_over_depth_and_stochastic_in_training():
    model = timm.create_model("test_convnext_isotropic", num_classes=5, drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        outs = [model(x) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_layer_scale_option_and_argument_errors():
    model = timm.create_model("test_convnext_isotropic", num_classes=5, ls_init_value=1e-6)
    assert model.blocks[0].gamma is not None
    assert _count(model) == _formula(4, 32, 5, patch=8) + 4 * 32
    with pytest.raises(ValueError, match="drop_path_rate"):
        IsotropicConvNeXt(drop_path_rate=1.5)
    with pytest.raises(ValueError, match="depth"):
        IsotropicConvNeXt(depth=0)
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("convnext_isotropic_small", pretrained=True)


def test_backward_and_gradient_checkpointing_agree():
    torch.manual_seed(0)
    model = timm.create_model("test_convnext_isotropic", num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_moe_surgery_on_isotropic_convnext(conv_mlp):
    from litlab.models.moe import MoE
    from litlab.models.vision.surgery import create_model

    torch.manual_seed(0)
    dense = create_model("test_convnext_isotropic", num_classes=10, img_size=64, conv_mlp=conv_mlp)
    model = create_model(
        "test_convnext_isotropic", num_classes=10, img_size=64, conv_mlp=conv_mlp,
        moe={"num_experts": 4, "top_k": 2}, placement="last-2",
    )
    assert model.moe_blocks == ["blocks.1.mlp", "blocks.3.mlp"]
    assert isinstance(model.blocks[3].mlp.moe, MoE)
    c, e = 32, 4
    assert _count(model) - _count(dense) == 2 * ((e - 1) * (8 * c * c + 5 * c) + c * e)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    assert model.blocks[3].mlp.moe.expert_index.shape == (2, 8, 8, 2)  # leading dims [B, H, W]
    out.sum().backward()
    moe_params = list(model.blocks[3].mlp.parameters())
    assert moe_params and all(p.grad is not None for p in moe_params)  # router and experts get gradients
