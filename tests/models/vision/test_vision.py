import pytest
import timm
import torch
from timm.layers import ConvMlp, Mlp

from litlab.errors import ConfigError, DataError
from litlab.models.moe import MoE, collect_aux_loss, moe_layers
from litlab.models.vision.surgery import MoEMlp, create_model, find_blocks

VIT = {"model_name": "test_vit", "num_classes": 5, "img_size": 32}  # 6 blocks, dim 64, hidden 192, 5 tokens
CNX = {"model_name": "test_convnext", "num_classes": 5, "img_size": 32}  # depths [1, 2, 4, 2], dims 24..64


def build(seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model(**kwargs)


def timm_model(seed=0, img_size=None, **kwargs):
    torch.manual_seed(seed)
    if img_size is not None:
        kwargs["img_size"] = img_size
    return timm.create_model(pretrained=False, **kwargs)


@pytest.mark.parametrize(
    "surgery",
    [{}, {"moe": None}, {"moe": {"num_experts": 0}}, {"moe": {"num_experts": 4}, "placement": "none"},
     {"moe": {"num_experts": 4}, "placement": "dense"}],
)
@pytest.mark.parametrize("arch", ["vit", "convnext"])
def test_without_moe_the_model_is_timms(arch, surgery):
    cfg = VIT if arch == "vit" else CNX
    ours = build(**cfg, **surgery)
    ref = timm_model(model_name=cfg["model_name"], num_classes=5, img_size=cfg["img_size"] if arch == "vit" else None)
    assert type(ours) is type(ref)
    assert repr(ours) == repr(ref)
    assert ours.moe_blocks == [] and not moe_layers(ours)
    sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(sd) == list(ref_sd)
    assert all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    x = torch.randn(2, 3, cfg["img_size"], cfg["img_size"])
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


CASES = {
    "vit": dict(**VIT),
    "convnext_nhwc": dict(**CNX, act_layer="gelu"),
    "convnext_nchw": dict(**CNX, act_layer="gelu", conv_mlp=True),
    "convnext_isotropic_nchw": {
        "model_name": "test_convnext_isotropic", "num_classes": 5, "img_size": 32, "conv_mlp": True
    },
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    ("moe", "placement"),
    [
        ({"num_experts": 1, "top_k": 1}, "all"),
        # identical experts + weights renormalised over k: again exactly the dense MLP
        ({"num_experts": 4, "top_k": 2, "renormalize": True, "router": "cosine"}, "every-2"),
    ],
)
def test_upcycled_moe_computes_the_dense_function(case, moe, placement):
    cfg = CASES[case]
    dense = build(**cfg).eval()
    model = build(**cfg, moe=moe, placement=placement, upcycle=True).eval()
    assert model.moe_blocks and all(isinstance(m, MoE) for m in moe_layers(model).values())
    if case == "convnext_nchw":
        assert not model.stages[0].blocks[0].mlp.channels_last if placement == "all" else True
    x = torch.randn(2, 3, cfg["img_size"], cfg["img_size"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)


def test_upcycle_warns_when_the_dense_activation_differs():
    with pytest.warns(UserWarning, match="GELUTanh"):
        build(**CNX, moe={"num_experts": 2, "top_k": 1}, upcycle=True)  # test_convnext uses gelu_tanh


def test_moe_without_upcycle_differs_from_dense():
    dense = build(**VIT).eval()
    model = build(**VIT, moe={"num_experts": 1, "top_k": 1}, placement="all").eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(model(x), dense(x))


@pytest.mark.parametrize(
    ("cfg", "placement", "scope", "blocks", "index_shapes"),
    [
        (VIT, "every-2", "global", ["blocks.1.mlp", "blocks.3.mlp", "blocks.5.mlp"], [(2, 5, 2)] * 3),
        (VIT, "last-2", "global", ["blocks.3.mlp", "blocks.5.mlp"], [(2, 5, 2)] * 2),
        # global index over [1, 2, 4, 2] = 9 blocks: last-2 -> 5, 7 -> stage 2 block 2, stage 3 block 0
        # 32x32 input: stages at 8x8, 4x4, 2x2, 1x1
        (CNX, "last-2", "global", ["stages.2.blocks.2.mlp", "stages.3.blocks.0.mlp"], [(2, 2, 2, 2), (2, 1, 1, 2)]),
        (dict(CNX, conv_mlp=True), "last-2", "global", ["stages.2.blocks.2.mlp", "stages.3.blocks.0.mlp"],
         [(2, 2, 2, 2), (2, 1, 1, 2)]),
        (CNX, "every-2", "per-stage",
         ["stages.1.blocks.1.mlp", "stages.2.blocks.1.mlp", "stages.2.blocks.3.mlp", "stages.3.blocks.1.mlp"],
         [(2, 4, 4, 2), (2, 2, 2, 2), (2, 2, 2, 2), (2, 1, 1, 2)]),
        (dict(CNX, conv_mlp=True), [0, -1], "global", ["stages.0.blocks.0.mlp", "stages.3.blocks.1.mlp"],
         [(2, 8, 8, 2), (2, 1, 1, 2)]),
    ],
)
def test_moe_forward_backward(cfg, placement, scope, blocks, index_shapes):
    model = build(**cfg, moe={"num_experts": 4, "top_k": 2}, placement=placement, placement_scope=scope)
    assert model.moe_blocks == blocks
    layers = moe_layers(model)
    assert list(layers) == [b + ".moe" for b in blocks]
    assert model.moe_config["placement_scope"] == scope
    x = torch.randn(2, 3, cfg["img_size"], cfg["img_size"])
    logits = model(x)
    assert logits.shape == (2, 5)
    aux = collect_aux_loss(model)
    assert aux.ndim == 0 and aux.item() > 0 and aux.requires_grad
    (logits.logsumexp(-1).mean() + aux).backward()
    for m, shape in zip(layers.values(), index_shapes):
        assert tuple(m.expert_index.shape) == shape
        assert ((m.expert_index >= 0) & (m.expert_index < 4)).all()
        assert m.stats.num_tokens == shape[0] * (shape[1] * shape[2] if len(shape) == 4 else shape[1])
        assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0
        assert m.experts.fc1_weight.grad is not None


def test_moe_mlp_adapter_layouts():
    moe = MoE(8, 16, num_experts=2, top_k=1, seed=0)
    x = torch.randn(2, 3, 4, 8)  # NHWC
    nchw = MoEMlp(moe, channels_last=False)
    torch.testing.assert_close(nchw(x.permute(0, 3, 1, 2)), MoEMlp(moe)(x).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="NCHW"):
        nchw(torch.randn(2, 5, 8))


def test_moe_kwargs_reach_the_layer_and_seeds_are_per_layer():
    moe = {"num_experts": 4, "top_k": 1, "router": "cosine", "expert_width": "split", "seed": 7}
    a = build(seed=0, **VIT, moe=moe, placement="every-2")
    b = build(seed=1, **VIT, moe=moe, placement="every-2")
    la, lb = moe_layers(a), moe_layers(b)
    for name in la:
        m = la[name]
        assert (m.dim, m.hidden_dim, m.num_experts, m.top_k, m.experts.hidden_dim) == (64, 192, 4, 1, 48)
        # the MoE seed makes the layer reproducible whatever the global RNG ...
        assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), lb[name].state_dict().values()))
    # ... and it is offset by the block index, so layers differ
    first, second = list(la.values())[:2]
    assert not torch.equal(first.experts.fc1_weight, second.experts.fc1_weight)


def test_bias_follows_the_dense_mlp():
    mlp = Mlp(8, 32, bias=False)
    adapter = MoEMlp.from_dense(mlp, {"num_experts": 2, "top_k": 1, "renormalize": True}, upcycle=True)
    assert adapter.moe.experts.fc1_bias is None and adapter.moe.experts.fc2_bias is None
    x = torch.randn(3, 8)
    torch.testing.assert_close(adapter(x), mlp(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="only one of fc1/fc2"):
        MoEMlp.from_dense(Mlp(8, 32, bias=(True, False)), {"num_experts": 2})


def test_conv_mlp_adapter_from_timm_conv_mlp():
    mlp = ConvMlp(8, 32, act_layer=torch.nn.GELU)
    adapter = MoEMlp.from_dense(mlp, {"num_experts": 1, "top_k": 1}, upcycle=True)
    assert not adapter.channels_last
    x = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(adapter(x), mlp(x), rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="ReLU"):  # ConvMlp's default activation is not the experts' GELU
        MoEMlp.from_dense(ConvMlp(8, 32), {"num_experts": 2})


def test_meta_device_paper_scale():
    with torch.device("meta"):
        vit = create_model("vit_base_patch16_224", num_classes=1000, moe={"num_experts": 8, "top_k": 2},
                           placement="every-2", upcycle=True)
        cnx = create_model("convnext_tiny", num_classes=1000, img_size=224, moe={"num_experts": 8, "top_k": 2},
                           placement="last-2")
    assert vit.moe_blocks == [f"blocks.{i}.mlp" for i in (1, 3, 5, 7, 9, 11)]
    assert cnx.moe_blocks == ["stages.3.blocks.0.mlp", "stages.3.blocks.2.mlp"]
    assert all(p.is_meta for p in vit.parameters()) and all(p.is_meta for p in cnx.parameters())
    assert find_blocks(cnx) == ([3, 3, 9, 3], True) and find_blocks(vit) == ([12], False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model_name": "test_resnet", "num_classes": 5}, "not supported for MoE surgery"),
        ({"model_name": "no_such_model", "num_classes": 5}, "model_name='no_such_model'"),
        (dict(**VIT, placement="first-2"), "placement='first-2'"),
        (dict(**VIT, placement="last-4"), "only 3"),
        (dict(**VIT, placement=[6]), "out of range"),
        (dict(**VIT, placement_scope="stage"), "placement_scope"),
        (dict(**VIT, moe={"num_experts": 4, "dim": 8}), "taken from the MLP"),
        (dict(**VIT, moe={"num_experts": 4, "n_experts": 8}), "unknown MoE arguments"),
        (dict(**VIT, moe=[4]), "expected a dict"),
        (dict(**VIT, moe={"num_experts": 4, "top_k": 5}), "top_k=5"),
        (dict(**VIT, moe={"num_experts": 4, "activation": "swiglu"}, upcycle=True), "upcycle=True"),
        (dict(**VIT, proj_drop_rate=0.1), "hidden dropout"),
        (dict(**VIT, scale_mlp_norm=True), "norm layer"),
        (dict(**CNX, use_grn=True), "GlobalResponseNormMlp"),
        (dict(**VIT, pretrained=True), "pretrained"),
    ],
)
def test_config_errors(kwargs, match):
    kwargs.setdefault("moe", {"num_experts": 4, "top_k": 2})
    with pytest.raises(ConfigError, match=match):
        create_model(**kwargs)


def test_init_checkpoint_upcycles_a_trained_dense_model(tmp_path):
    dense = build(seed=1, **VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = dense(x)
    plain = tmp_path / "dense.pth"
    torch.save(dense.state_dict(), plain)
    lightning = tmp_path / "dense.ckpt"  # a LightningModule holding the timm model as self.model
    torch.save({"state_dict": {f"model.{k}": v for k, v in dense.state_dict().items()}, "epoch": 3}, lightning)
    for path in (plain, str(lightning)):
        model = build(seed=2, **VIT, moe={"num_experts": 2, "top_k": 2}, placement="every-2", upcycle=True,
                      init_checkpoint=path).eval()
        assert model.moe_config["init_checkpoint"] == str(path)
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)  # k = E: weights sum to 1


def test_init_checkpoint_with_another_classifier_keeps_a_fresh_head(tmp_path):
    source = build(seed=1, **dict(VIT, num_classes=7))
    torch.save(source.state_dict(), tmp_path / "in21k.pth")
    with pytest.warns(UserWarning, match="classifier"):
        model = build(seed=2, **VIT, init_checkpoint=tmp_path / "in21k.pth")
    assert model.head.weight.shape == (5, 64)
    torch.testing.assert_close(model.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)


def test_init_checkpoint_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        create_model(**VIT, init_checkpoint=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(DataError, match="could not be read"):
        create_model(**VIT, init_checkpoint=tmp_path / "junk.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(DataError, match="no state dict"):
        create_model(**VIT, init_checkpoint=tmp_path / "empty.pth")
    moe = create_model(**VIT, moe={"num_experts": 2}, placement="last-1")
    torch.save(moe.state_dict(), tmp_path / "moe.pth")
    with pytest.raises(ConfigError, match="MoE checkpoint"):
        create_model(**VIT, init_checkpoint=tmp_path / "moe.pth")
    torch.save(create_model(**dict(VIT, model_name="test_vit2")).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not fit"):
        create_model(**VIT, init_checkpoint=tmp_path / "other.pth")


def test_init_checkpoint_of_an_moe_model_is_loaded_after_the_surgery(tmp_path):
    """Fine-tuning an MoE model pre-trained on more classes (ImageNet-21k -> 1k): experts kept, head fresh."""
    moe = {"num_experts": 4, "top_k": 2}
    source = build(seed=1, **dict(VIT, num_classes=7), moe=moe, placement="last-2")
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "in21k.ckpt")
    with pytest.warns(UserWarning, match="classifier"):
        model = build(seed=2, **VIT, moe=moe, placement="last-2", init_checkpoint=tmp_path / "in21k.ckpt")
    assert model.head.weight.shape == (5, 64)
    for name, p in source.named_parameters():
        if not name.startswith("head."):
            torch.testing.assert_close(model.get_parameter(name), p, msg=name)
    with pytest.raises(ConfigError, match="same num_experts and placement"):
        create_model(**VIT, moe=moe, placement="every-2", init_checkpoint=tmp_path / "in21k.ckpt")
