import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from litlab.models.moe import MoE, moe_layers
from litlab.models.vision.accounting import (
    count_parameters,
    flops_per_image,
    moe_flops_per_token,
    summarize,
)
from litlab.models.vision.surgery import create_model


def mlp_params(c):  # dense MLP with hidden 4C and biases: 8C^2 + 5C
    return 8 * c * c + 5 * c


def counter_flops(model, img_size, in_chans=3, per_module=False):
    """FlopCounterMode's count for a batch-1 forward of ``model`` built on the meta device."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, in_chans, img_size, img_size, device="meta"))
    return counter.get_flop_counts() if per_module else counter.get_total_flops()


@pytest.mark.parametrize(
    ("name", "img_size", "kwargs"),
    [("test_vit", 32, {}), ("test_convnext", 32, {}), ("test_convnext", 64, {"conv_mlp": True}),
     ("test_convnext_isotropic", 32, {}), ("test_vit", 48, {"in_chans": 1})],
)
def test_dense_flops_equal_flop_counter(name, img_size, kwargs):
    in_chans = kwargs.get("in_chans", 3)
    with torch.device("meta"):
        meta = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    expected = counter_flops(meta, img_size, in_chans)
    torch.manual_seed(0)
    cpu = create_model(name, num_classes=10, **kwargs)  # a real model: counted on meta stand-ins
    for model in (meta, cpu):
        flops = flops_per_image(model, img_size, in_chans)
        assert flops["flops"] == flops["dense_flops"] == expected
        assert flops["moe_router_flops"] == flops["moe_expert_flops"] == 0
        assert flops["moe_tokens"] == {}
    # nothing of the model changed, and it still runs on its device
    assert cpu.training and all(p.device.type == "cpu" for p in cpu.parameters())
    assert cpu(torch.randn(1, in_chans, img_size, img_size)).shape == (1, 10)


def test_vit_b_flops_include_attention():
    with torch.device("meta"):
        model = create_model("vit_base_patch16_224", num_classes=1000)
    flops = flops_per_image(model, 224)["flops"]
    assert flops == counter_flops(model, 224)
    assert flops / 2 == pytest.approx(17.56e9, rel=0.01)  # ViT-B/16: 17.6 GMACs
    attention = 12 * 2 * 2 * 197 * 197 * 768  # q@k^T and attn@v, 2 FLOPs per multiply-add
    linear = 12 * 197 * 2 * (3 * 768**2 + 768**2 + 8 * 768**2) + 2 * 768 * 1000
    patch = 2 * 196 * 768 * 3 * 16 * 16
    assert flops == attention + linear + patch


@pytest.mark.parametrize(
    ("name", "img_size", "kwargs", "placement"),
    [("test_vit", 32, {}, "every-2"), ("test_convnext", 32, {"conv_mlp": True}, "last-2"),
     ("test_convnext", 32, {}, "all")],
)
def test_moe_flops(name, img_size, kwargs, placement):
    torch.manual_seed(0)
    dense = create_model(name, num_classes=10, **kwargs)
    dense_flops = flops_per_image(dense, img_size)["flops"]

    one = create_model(name, num_classes=10, moe={"num_experts": 1, "top_k": 1}, placement=placement, **kwargs)
    f1 = flops_per_image(one, img_size)
    dims = {n: m.dim for n, m in moe_layers(one).items()}
    # E=1, k=1: the dense FLOPs plus the router (2·C·E per token)
    assert f1["dense_flops"] == dense_flops
    assert f1["moe_router_flops"] == sum(t * 2 * dims[n] for n, t in f1["moe_tokens"].items()) > 0
    assert f1["flops"] == dense_flops + f1["moe_router_flops"]
    assert (f1["flops"] - dense_flops) / dense_flops < 0.05

    eight = create_model(name, num_classes=10, moe={"num_experts": 8, "top_k": 2}, placement=placement, **kwargs)
    f8 = flops_per_image(eight, img_size)
    # E=8, k=2: twice FlopCounterMode's FLOPs of the replaced dense MLPs
    with torch.device("meta"):
        meta_dense = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    per_module = counter_flops(meta_dense, img_size, per_module=True)
    prefix = type(meta_dense).__name__
    mlp_flops = sum(sum(per_module[f"{prefix}.{block}"].values()) for block in eight.moe_blocks)
    assert f8["moe_expert_flops"] == 2 * mlp_flops
    assert f8["moe_router_flops"] == 8 * f1["moe_router_flops"]
    assert f8["flops"] == dense_flops + mlp_flops + f8["moe_router_flops"]
    assert f8["dense_flops"] == dense_flops
    assert f8["moe_tokens"] == f1["moe_tokens"]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"router": "cosine"}, {"router": "mlp"}, {"activation": "swiglu"}, {"expert_width": "split"},
     {"bias": False, "top_k": 1}],
)
def test_moe_flops_per_token_match_a_real_forward(kwargs):
    """The analytic per-token cost equals FlopCounterMode on the layer's real (dropless) forward on the CPU."""
    moe = MoE(16, 64, num_experts=4, **{"top_k": 2, "seed": 0, "dispatch": "loop", **kwargs})
    tokens = 37
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        moe(torch.randn(tokens, 16))
    cost = moe_flops_per_token(moe)
    counted = counter.get_total_flops() - tokens * (cost["router"] + cost["experts"])
    # the weighted sum of the k outputs is not part of the convention; FlopCounterMode sees it only if the
    # layer happens to implement it as a batched matmul
    assert counted in (0, tokens * 2 * moe.top_k * moe.dim)
    assert cost["dense"] == (6 if moe.experts.activation == "swiglu" else 4) * 16 * 64


def test_count_parameters_formulas_on_meta():
    with torch.device("meta"):
        dense = create_model("vit_base_patch16_224", num_classes=1000)
        moe = create_model("vit_base_patch16_224", num_classes=1000, moe={"num_experts": 8, "top_k": 2},
                           placement="every-2")
        cnx_dense = create_model("convnext_tiny", num_classes=1000)
        cnx = create_model("convnext_tiny", num_classes=1000, moe={"num_experts": 8, "top_k": 2}, placement="last-2")
    d = count_parameters(dense)
    assert d == {"total": 86_567_656, "activated": 86_567_656, "moe_total": 0, "moe_activated": 0,
                 "num_moe_layers": 0}
    c, e, k = 768, 8, 2
    m = count_parameters(moe)
    assert m["num_moe_layers"] == 6
    assert m["total"] - d["total"] == 6 * ((e - 1) * mlp_params(c) + c * e)
    assert m["activated"] - d["total"] == 6 * ((k - 1) * mlp_params(c) + c * e)
    assert m["moe_total"] == 6 * (e * mlp_params(c) + c * e)
    # ConvNeXt-T: global last-2 = blocks 15 and 17 = stage 3 (C = 768)
    assert count_parameters(cnx_dense)["total"] == 28_589_128
    n = count_parameters(cnx)
    assert n["total"] - 28_589_128 == 2 * ((e - 1) * mlp_params(c) + c * e)
    assert n["activated"] - 28_589_128 == 2 * ((k - 1) * mlp_params(c) + c * e)


def test_summarize_paper_scale_on_meta():
    with torch.device("meta"):
        model = create_model("vit_base_patch16_224", num_classes=1000, moe={"num_experts": 8, "top_k": 2},
                             placement="every-2")
    s = summarize(model, 224)
    assert set(s) == {"total_params", "activated_params", "flops_per_image", "dense_flops_per_image", "moe_blocks"}
    assert s["moe_blocks"] == [f"blocks.{i}.mlp" for i in (1, 3, 5, 7, 9, 11)]
    mlp = 197 * 2 * 2 * 768 * 3072
    router = 197 * 2 * 768 * 8
    assert s["flops_per_image"] == s["dense_flops_per_image"] + 6 * (mlp + router)
    assert s["activated_params"] < s["total_params"]
    # a model that is not from create_model: MoE blocks are named after the MoE layers' parents
    del model.moe_blocks
    assert summarize(model, 224)["moe_blocks"] == [f"blocks.{i}.mlp" for i in (1, 3, 5, 7, 9, 11)]


def test_summarize_inside_a_meta_device_context():
    """Paper-scale models are built under ``with torch.device("meta")``; accounting must work there too."""
    moe = {"num_experts": 8, "top_k": 2, "router": "cosine"}
    outside = summarize(create_model("test_vit", num_classes=10, moe=moe, placement="last-2"), 32, 3)
    with torch.device("meta"):
        model = create_model("test_vit", num_classes=10, moe=moe, placement="last-2")
        inside = summarize(model, 32, 3)
    assert inside == outside
