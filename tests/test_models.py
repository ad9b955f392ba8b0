"""Tests for models.py, stn.py and attention.py (small inputs, CPU only, no downloads)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from nexperia_utils.models.attention import AttentionBlock, ResNetAtt2
from nexperia_utils.errors import ConfigError
from nexperia_utils.models.builders import (
    ARCHITECTURES,
    DISPLAY_NAMES,
    backbone_module,
    backbone_name,
    build_model,
    canonical_arch,
    classifier_head,
    imagenet_weights_path,
)
from nexperia_utils.models.stn import STNClassifier, SpatialTransformer, parameters_to_theta, warp

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


pytestmark = pytest.mark.usefixtures("one_torch_thread", "torch_seed")


# --------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_arch_forward_backward(arch: str) -> None:
    model = build_model(arch, num_classes=10)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    head = classifier_head(model, arch)
    assert head.out_features == 10
    expected_in = {"resnet50": 2048, "vgg19_bn": 4096, "vgg19_bn_stn": 4096, "resnet18_att2": 1024}.get(arch, 512)
    assert head.in_features == expected_in
    nn.functional.cross_entropy(logits, torch.tensor([0, 9])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    # the first convolution of the backbone really learns
    first_conv = backbone_module(model, arch)
    first_conv = first_conv.conv1 if backbone_name(arch).startswith("resnet") else first_conv.features[0]
    assert first_conv.weight.grad.abs().sum() > 0
    if arch.endswith("_stn"):
        # the STN's parameter layer starts at zero but receives a gradient
        assert model.stn.fc_loc[-1].weight.grad.abs().sum() > 0


def test_head_sizes_and_structure() -> None:
    resnet = build_model("resnet50", num_classes=3)
    assert resnet.fc.out_features == 3 and resnet.fc.in_features == 2048
    stn = build_model("resnet18_stn", num_classes=2, stn_transform="scale_translation")
    assert isinstance(stn, STNClassifier)
    assert stn.backbone.fc.out_features == 2 and stn.stn.transform == "scale_translation"
    att = build_model("ResNet_att_2", num_classes=7)  # display name accepted
    assert isinstance(att, ResNetAtt2)
    assert att.classifier.in_features == 1024 and att.classifier.out_features == 7
    assert att(torch.randn(1, 3, 40, 56)).shape == (1, 7)  # non-square input


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet19", num_classes=10)
    message = str(info.value)
    assert "resnet19" in message
    for arch in ARCHITECTURES:
        assert arch in message


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_num_classes(bad) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet18", num_classes=bad)


def test_names() -> None:
    assert set(DISPLAY_NAMES) == set(ARCHITECTURES)
    assert DISPLAY_NAMES["resnet18_att2"] == "ResNet_att_2"
    assert DISPLAY_NAMES["vgg19_bn_stn"] == "VGG19_bn_stn"
    assert backbone_name("resnet18_stn") == "resnet18"
    assert backbone_name("vgg19_bn_stn") == "vgg19_bn"
    assert backbone_name("resnet18_att2") == "resnet18"
    assert canonical_arch("VGG19_bn") == "vgg19_bn"
    with pytest.raises(ConfigError, match="stn_transform"):
        build_model("resnet18_stn", 10, stn_transform="rotation")


# --------------------------------------------------------------------------- weights
def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = build_model("resnet18_stn", num_classes=10)
    with torch.no_grad():  # make the STN non-trivial so its weights matter
        model.stn.fc_loc[-1].bias.copy_(torch.tensor([0.9, 0.1, 0.05, -0.1, 1.1, 0.0]))
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    loaded = build_model("resnet18_stn", num_classes=10, weights=path)
    _assert_same_state(model, loaded)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
    # a checkpoint dict nesting the state dict, and a DataParallel prefix, load too
    nested = tmp_path / "checkpoint.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, nested)
    _assert_same_state(model, build_model("resnet18_stn", 10, weights=str(nested)))


def test_att2_round_trip(tmp_path: Path) -> None:
    model = build_model("resnet18_att2", num_classes=5)
    path = tmp_path / "att.pt"
    torch.save(model.state_dict(), path)
    _assert_same_state(model, build_model("resnet18_att2", num_classes=5, weights=path))


@pytest.mark.parametrize("arch", ["resnet18", "resnet18_stn", "resnet18_att2"])
def test_backbone_state_dict_with_1000_class_head(tmp_path: Path, arch: str) -> None:
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_backbone.pth"
    torch.save(source.state_dict(), path)
    model = build_model(arch, num_classes=10, weights=path)
    backbone = backbone_module(model, arch)
    assert torch.equal(backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert classifier_head(model, arch).out_features == 10


def test_mismatched_state_dict_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ConfigError) as info:
        build_model("resnet18", num_classes=10, weights=path)
    message = str(info.value)
    assert "unexpected keys" in message and "layer1.2.conv1.weight" in message
    assert str(path) in message

    # shape mismatch outside the head
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"conv1\.weight: file \(64, 1, 7, 7\)"):
        build_model("resnet18", num_classes=10, weights=path)


def test_bad_weights_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither 'none', 'imagenet'"):
        build_model("resnet18", 10, weights=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    torch.save([1, 2, 3], junk)
    with pytest.raises(ConfigError, match="does not hold a model state dict"):
        build_model("resnet18", 10, weights=junk)
    text = tmp_path / "text.pt"
    text.write_text("not a torch file")
    with pytest.raises(ConfigError, match="Could not read weights file"):
        build_model("resnet18", 10, weights=text)


def test_imagenet_weights_from_local_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_path("resnet18_stn") == expected
    assert imagenet_weights_path("vgg19_bn").name == "vgg19_bn-c79401a0.pth"

    with pytest.raises(ConfigError) as info:
        build_model("resnet18", num_classes=10, weights="imagenet")
    message = str(info.value)
    assert str(expected) in message
    assert "ResNet18_Weights.IMAGENET1K_V1.get_state_dict()" in message
    assert "weights=<path" in message
    assert not expected.exists()  # nothing was downloaded

    source = torchvision.models.resnet18(weights=None)
    expected.parent.mkdir(parents=True)
    torch.save(source.state_dict(), expected)
    model = build_model("resnet18", num_classes=10, weights="imagenet")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 10
    att = build_model("resnet18_att2", num_classes=10, weights="imagenet")
    assert torch.equal(att.backbone.conv1.weight, source.conv1.weight)


# --------------------------------------------------------------------------- STN
def test_stn_identity_initialisation_leaves_images_unchanged() -> None:
    x = torch.rand(2, 3, 40, 48)
    for transform in ("affine", "scale_translation"):
        stn = SpatialTransformer(3, transform)
        theta = stn.theta(x)
        assert theta.shape == (2, 2, 3)
        assert torch.allclose(theta, IDENTITY.expand(2, 2, 3))
        out = stn(x)
        assert out.shape == x.shape
        assert (out - x).abs().max() < 1e-5


def test_stn_parameter_counts() -> None:
    assert SpatialTransformer(3, "affine").fc_loc[-1].out_features == 6
    assert SpatialTransformer(3, "scale_translation").fc_loc[-1].out_features == 3
    with pytest.raises(ConfigError, match="Unknown STN transform"):
        SpatialTransformer(3, "projective")


def test_scale_translation_theta_by_hand() -> None:
    params = torch.tensor([[0.5, 0.2, -0.3], [1.0, 0.0, 0.0]])
    theta = parameters_to_theta(params, "scale_translation")
    assert torch.equal(theta[0], torch.tensor([[0.5, 0.0, 0.2], [0.0, 0.5, -0.3]]))
    assert torch.equal(theta[1], IDENTITY)
    affine = parameters_to_theta(torch.arange(6.0).unsqueeze(0), "affine")
    assert torch.equal(affine[0], torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]))


def test_hand_set_translation_moves_the_image() -> None:
    height, width, shift = 8, 10, 3
    x = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
    # output pixel (r, c) samples the input at (r, c + shift): content moves left by `shift` pixels
    theta = torch.tensor([[[1.0, 0.0, 2.0 * shift / width], [0.0, 1.0, 0.0]]])
    out = warp(x, theta)
    assert torch.allclose(out[..., : width - shift], x[..., shift:], atol=1e-4)
    assert out[..., width - shift:].abs().max() < 1e-4  # sampled outside: zeros

    # the same through the module: set the identity bias to a vertical translation of 2 pixels
    stn = SpatialTransformer(1, "scale_translation")
    with torch.no_grad():
        stn.fc_loc[-1].bias.copy_(torch.tensor([1.0, 0.0, 2.0 * 2 / 40]))
    image = torch.rand(1, 1, 40, 36)
    moved = stn(image)
    assert torch.allclose(moved[..., :-2, :], image[..., 2:, :], atol=1e-4)
    assert torch.allclose(stn.theta(image)[0], torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.1]]))


def test_stn_classifier_feeds_the_transformed_image() -> None:
    stn = SpatialTransformer(3, "affine")
    seen: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.mean(dim=(2, 3))

    with torch.no_grad():
        stn.fc_loc[-1].bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5, 0.0]))  # zoom in 2x
    model = STNClassifier(stn, Recorder())
    x = torch.rand(1, 3, 32, 32)
    model(x)
    assert torch.allclose(seen[0], stn(x))
    assert not torch.allclose(seen[0], x)


# --------------------------------------------------------------------------- attention
def test_attention_maps_sum_to_one_with_feature_map_shape() -> None:
    model = build_model("resnet18_att2", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits, maps = model.forward_with_attention(x)
        assert torch.allclose(logits, model(x))
    assert logits.shape == (2, 10)
    assert [tuple(m.shape) for m in maps] == [(2, 4, 6), (2, 2, 3)]  # layer3 stride 16, layer4 stride 32
    for attention in maps:
        assert (attention >= 0).all()
        assert torch.allclose(attention.sum(dim=(1, 2)), torch.ones(2), atol=1e-6)


def test_attention_block_by_hand() -> None:
    block = AttentionBlock(local_channels=2, global_channels=2, compatibility="concat")
    assert isinstance(block.projector, nn.Identity)
    with torch.no_grad():
        block.score.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 2.0]]))  # u = [u_l ; u_g]
    # local map (1, 2, 1, 3): positions l_0 = (0, 0), l_1 = (1, 0), l_2 = (0, 2)
    local = torch.tensor([[[[0.0, 1.0, 0.0]], [[0.0, 0.0, 2.0]]]])
    g = torch.tensor([[3.0, -1.0]])
    attended, attention = block(local, g)
    # c_i = <u_l, l_i> + <u_g, g> = (0, 1, -2) + (1.5 - 2) ; the constant cancels in the softmax
    c = torch.tensor([0.0, 1.0, -2.0])
    a = torch.exp(c) / torch.exp(c).sum()
    assert torch.allclose(attention.view(-1), a)
    expected = a[1] * torch.tensor([1.0, 0.0]) + a[2] * torch.tensor([0.0, 2.0])
    assert torch.allclose(attended[0], expected)
    # report's concatenation: g does not change the map; the dot-product variant depends on g
    assert torch.allclose(block(local, 5 * g)[1], attention)
    dot = AttentionBlock(2, 2, compatibility="dot")
    _, a_dot = dot(local, g)
    c_dot = torch.tensor([0.0, 3.0, -2.0])
    assert torch.allclose(a_dot.view(-1), torch.softmax(c_dot, 0))
    assert math.isclose(float(a_dot.sum()), 1.0, rel_tol=1e-6)


def test_attention_projects_layer3_to_512_channels() -> None:
    model = ResNetAtt2(num_classes=3)
    assert model.attention3.projector.in_channels == 256 and model.attention3.projector.out_channels == 512
    assert model.attention3.projector.bias is None
    assert isinstance(model.attention4.projector, nn.Identity)
    assert model.attention3.score.bias is None
    assert model.conv6[0].kernel_size == (3, 3) and model.conv6[0].out_channels == 512
