"""Tests for explain.py: Grad-CAM heatmaps (pytorch-grad-cam) and the localisation score."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from nexperia_utils.config import CAM_LAYERS, get_profile
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.analysis.localisation import (
    grid_peak_pixels,
    localisation_scores,
    map_box_to_input,
    mass_in_box,
    pointing_bound,
    pointing_game,
)
from nexperia_utils.analysis.explain import (
    DefectScoreTarget,
    auto_cam_layer,
    cam_layers,
    compute_heatmaps,
    feature_map_side,
    heatmaps_to_input_space,
    overlay,
    profile_cam_layer,
    target_layers,
)
from nexperia_utils.models.builders import ARCHITECTURES, build_model

NEGATIVE = 4  # index of "good" in the 10-class order; looked up by name in real code


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _is_degenerate(maps: np.ndarray) -> list[bool]:
    flat = maps.reshape(len(maps), -1)
    return [bool(~np.isfinite(m).all() or m.max() == m.min()) for m in flat]


# --------------------------------------------------------------------------- heatmaps
@pytest.fixture(scope="module")
def random_models() -> Callable[[str], torch.nn.Module]:
    """Randomly initialised models, built once per module (VGG19_bn takes seconds to build)."""
    cache: dict[str, torch.nn.Module] = {}

    def get(arch: str) -> torch.nn.Module:
        if arch not in cache:
            torch.manual_seed(0)
            cache[arch] = build_model(arch, num_classes=10)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_heatmap_shape_and_range_for_every_arch(arch: str, random_models) -> None:
    model = random_models(arch)
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 48)
    maps = compute_heatmaps(model, images, arch, negative_index=NEGATIVE)
    assert maps.shape == (2, 64, 48) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert model.training  # mode restored (grad-cam's constructor switched to eval)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("arch", ["resnet18_stn", "vgg19_bn_stn", "resnet18_att2"])
def test_stn_and_attention_heatmaps_are_not_degenerate(arch: str, random_models) -> None:
    """Random weights still give real maps (not all zero / NaN / constant) at 128 px.

    At 48-64 px plain Grad-CAM on a *random* ResNet often gives all-zero maps (layer4 is 2x2 and
    every weighted activation can be negative); at 128 px and more it did not happen in our runs.
    """
    model = random_models(arch)
    torch.manual_seed(2)
    images = torch.randn(2, 3, 128, 128)
    maps = compute_heatmaps(model, images, arch, negative_index=NEGATIVE)
    assert not any(_is_degenerate(maps)), arch
    assert np.allclose(maps.reshape(2, -1).max(axis=1), 1.0, atol=1e-3)
    assert (maps > 0.5).mean() < 0.9  # localised, not flat


def test_gradcam_plus_plus_and_bad_arguments(random_models) -> None:
    model = random_models("resnet18")
    torch.manual_seed(2)
    images = torch.randn(3, 3, 64, 64)
    maps = compute_heatmaps(model, images, "resnet18", negative_index=0, method="gradcam++", batch_size=2)
    assert maps.shape == (3, 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0
    with pytest.raises(ConfigError, match="Unknown CAM method"):
        compute_heatmaps(model, images, "resnet18", negative_index=0, method="scorecam")
    with pytest.raises(DataError, match=r"\(N, 3, H, W\)"):
        compute_heatmaps(model, images[0], "resnet18", negative_index=0)
    with pytest.raises(ConfigError, match="out of range"):
        compute_heatmaps(model, images, "resnet18", negative_index=10)


def test_target_layer_choice(random_models) -> None:
    resnet = random_models("resnet34")
    assert target_layers(resnet, "resnet34") == [resnet.layer4[-1]]
    stn = random_models("resnet18_stn")
    assert target_layers(stn, "resnet18_stn") == [stn.backbone.layer4[-1]]
    vgg = random_models("vgg19_bn")
    assert target_layers(vgg, "vgg19_bn") == [vgg.features[-2]]  # last ReLU, before the last max pool
    att = random_models("resnet18_att2")
    assert target_layers(att, "resnet18_att2") == [att.backbone.layer3[-1], att.backbone.layer4[-1]]


def test_named_target_layers(random_models) -> None:
    resnet = random_models("resnet34")
    assert target_layers(resnet, "resnet34", "layer2") == [resnet.layer2[-1]]
    att = random_models("resnet18_att2")
    assert target_layers(att, "resnet18_att2", "layer3") == [att.backbone.layer3[-1]]
    vgg = random_models("vgg19_bn")
    pools = [i for i, m in enumerate(vgg.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert target_layers(vgg, "vgg19_bn", "block5") == [vgg.features[pools[4] - 1]]
    assert target_layers(vgg, "vgg19_bn", "block4") == [vgg.features[pools[3] - 1]]
    assert isinstance(target_layers(vgg, "vgg19_bn", "block3")[0], torch.nn.ReLU)
    assert target_layers(vgg, "vgg19_bn", "block2") == [vgg.features[pools[1] - 1]]
    with pytest.raises(ConfigError, match="layer2"):
        target_layers(vgg, "vgg19_bn", "layer2")
    with pytest.raises(ConfigError, match="block3"):
        target_layers(resnet, "resnet34", "block3")


@pytest.mark.parametrize("arch, size, expected", [
    ("resnet18", 224, "layer4"),   # 7x7, the report's layer
    ("resnet50", 128, "layer3"),   # layer4 4x4, layer3 8x8
    ("resnet18", 64, "layer2"),    # layer4 2x2, layer3 4x4, layer2 8x8
    ("resnet18_stn", 96, "layer2"),  # layer3 6x6
    ("resnet18", 32, "layer1"),    # 8x8
    ("resnet18", 16, "layer1"),    # nothing reaches 7: the finest candidate
    ("resnet18", 200, "layer4"),   # ResNet rounds up: layer4 7x7 (200 // 32 would say 6)
    ("vgg19_bn", 224, "block5"),   # 14x14 before the last pool
    ("vgg19_bn", 64, "block4"),    # block5 4x4, block4 8x8
])
def test_auto_cam_layer_keeps_at_least_a_7x7_map(arch: str, size: int, expected: str) -> None:
    assert auto_cam_layer(arch, size) == expected


def test_profile_cam_layer_falls_back_to_auto_for_an_architecture_without_it() -> None:
    assert profile_cam_layer("resnet34", "layer2") == "layer2"
    assert profile_cam_layer("vgg19_bn", "layer2") == "auto"  # a ResNet stage named for a VGG run
    assert profile_cam_layer("resnet18", "block4") == "auto"
    assert profile_cam_layer("vgg19_bn", "auto") == "auto"


def test_profiles_name_only_layers_grad_cam_can_read() -> None:
    assert set(CAM_LAYERS) == {"auto", *cam_layers("resnet18"), *cam_layers("vgg19_bn")}
    assert (get_profile("quick").cam_layer, get_profile("full").cam_layer) == ("layer2", "auto")
    with pytest.raises(ConfigError, match="cam_layer must be one of"):
        get_profile("quick", cam_layer="layer5")


@pytest.mark.parametrize("arch", ["resnet18", "vgg19_bn"])
@pytest.mark.parametrize("size", [33, 64, 200])
def test_feature_map_side_matches_a_forward_pass(random_models, arch: str, size: int) -> None:
    model = random_models(arch)
    training = model.training
    sides = {}
    hooks = [layer.register_forward_hook(lambda m, i, out, name=name: sides.__setitem__(name, out.shape[-1]))
             for name in cam_layers(arch) for layer in target_layers(model, arch, name)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    assert sides == {name: feature_map_side(arch, name, size) for name in cam_layers(arch)}


def test_feature_map_side_rejects_an_unknown_layer() -> None:
    with pytest.raises(ConfigError, match="block9"):
        feature_map_side("resnet18", "block9", 64)


def test_auto_layer_reads_layer2_at_64px(random_models) -> None:
    model = random_models("resnet18")
    torch.manual_seed(5)
    images = torch.randn(2, 3, 64, 64)
    coarse = compute_heatmaps(model, images, "resnet18", NEGATIVE)
    fine = compute_heatmaps(model, images, "resnet18", NEGATIVE, layer="auto")
    direct = compute_heatmaps(model, images, "resnet18", NEGATIVE, layer="layer2")
    np.testing.assert_array_equal(fine, direct)
    assert fine.shape == coarse.shape == (2, 64, 64)
    assert np.abs(fine - coarse).max() > 0.05


def _direct_cam(model: torch.nn.Module, images: torch.Tensor, layer: torch.nn.Module, method: str) -> np.ndarray:
    """Grad-CAM / LayerCAM of the defect score written out: activations A and gradients G of the layer,
    Grad-CAM = ReLU(sum_k mean(G_k) A_k), LayerCAM = ReLU(sum_k ReLU(G_k) A_k); upsampled, min-max scaled."""
    import cv2

    kept: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, out: kept.update(a=out))
    model.eval()
    try:
        logits = model(images)
    finally:
        handle.remove()
    activation = kept["a"]
    score = (1.0 - torch.softmax(logits, dim=1)[:, NEGATIVE]).sum()
    (grad,) = torch.autograd.grad(score, activation)
    weights = grad.mean(dim=(2, 3), keepdim=True) if method == "gradcam" else grad.clamp_min(0)
    cams = (weights * activation).sum(dim=1).clamp_min(0).detach().numpy()
    out = []
    for cam in cams:
        cam = cv2.resize(cam, (images.shape[3], images.shape[2]))
        cam = cam - cam.min()
        out.append(cam / (cam.max() + 1e-7))
    return np.stack(out)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_cam_formulas_against_a_direct_computation(method: str, random_models) -> None:
    model = random_models("resnet18")
    torch.manual_seed(6)
    images = torch.randn(2, 3, 64, 64)
    maps = compute_heatmaps(model, images, "resnet18", NEGATIVE, method=method, layer="layer2")
    expected = _direct_cam(model, images, model.layer2[-1], method)
    assert not any(_is_degenerate(maps))
    np.testing.assert_allclose(maps, expected, atol=5e-3)
    other = _direct_cam(model, images, model.layer2[-1], "layercam" if method == "gradcam" else "gradcam")
    assert np.abs(maps - other).max() > 0.1  # the two formulas differ: the comparison can fail


def test_stn_heatmap_with_identity_transform_equals_backbone_heatmap(random_models) -> None:
    model = random_models("resnet18_stn")
    torch.manual_seed(3)
    images = torch.randn(2, 3, 96, 96)
    via_stn = compute_heatmaps(model, images, "resnet18_stn", NEGATIVE)
    backbone_only = compute_heatmaps(model.backbone, images, "resnet18", NEGATIVE)
    assert not any(_is_degenerate(backbone_only))
    assert np.abs(via_stn - backbone_only).max() < 1e-3


def test_heatmaps_mapped_back_through_the_stn_transform() -> None:
    size = 32
    # translation: output column c shows input column c + 4 (tx = 2 * 4 / size)
    heat = np.zeros((1, size, size), dtype=np.float32)
    heat[0, 10:14, 6:10] = 1.0
    theta = torch.tensor([[[1.0, 0.0, 8.0 / size], [0.0, 1.0, 0.0]]])
    back = heatmaps_to_input_space(heat, theta)
    expected = np.zeros_like(heat)
    expected[0, 10:14, 10:14] = 1.0
    assert np.abs(back - expected).max() < 1e-4

    # zoom: theta = 0.5 * I shows the central half of the input; a flat output heatmap covers it
    flat = np.ones((1, size, size), dtype=np.float32)
    back = heatmaps_to_input_space(flat, torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]]))[0]
    assert np.allclose(back[9:23, 9:23], 1.0, atol=1e-4)  # well inside [8, 24)
    assert np.allclose(back[:7], 0.0) and np.allclose(back[:, 25:], 0.0)

    # a collapsed (non-invertible) transform gives zeros, not NaN
    collapsed = heatmaps_to_input_space(flat, torch.zeros(1, 2, 3))
    assert np.isfinite(collapsed).all() and collapsed.max() == 0.0


def test_defect_score_target_by_hand() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0])
    expected = 1.0 - math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(3.0))
    assert math.isclose(float(DefectScoreTarget(1)(logits)), expected, rel_tol=1e-6)
    # = sum of the other classes' probabilities
    p = torch.softmax(logits, 0)
    assert math.isclose(float(DefectScoreTarget(1)(logits)), float(p[0] + p[2]), rel_tol=1e-6)
    batch = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert torch.allclose(DefectScoreTarget(0)(batch), torch.tensor([0.5, 0.25]))
    with pytest.raises(ConfigError):
        DefectScoreTarget(-1)
    with pytest.raises(ConfigError, match="out of range"):
        DefectScoreTarget(5)(logits)


# --------------------------------------------------------------------------- overlay
def test_overlay_grayscale_and_rgb() -> None:
    image = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    heat = np.zeros((3, 4), dtype=np.float32)
    heat[0, 0] = 1.0
    only_image = overlay(image, heat, alpha=0.0)
    assert only_image.shape == (3, 4, 3) and only_image.dtype == np.uint8
    assert np.array_equal(only_image[..., 0], np.uint8(255 * image))
    assert not overlay(np.zeros((3, 4)), heat, alpha=0.0).any()  # black stays black, no NaN
    colours = overlay(np.zeros((3, 4, 3), dtype=np.float32), heat, alpha=1.0)
    assert colours[0, 0, 0] > colours[0, 0, 2]  # hot = red (jet), RGB order
    assert colours[2, 3, 2] > colours[2, 3, 0]  # cold = blue
    with pytest.raises(DataError, match="does not match"):
        overlay(image, np.zeros((4, 3)))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        overlay(image * 255, heat)


# --------------------------------------------------------------------------- boxes
def test_map_box_to_input_by_hand() -> None:
    # 267 x 275 (h x w) image: Resize(73) -> 73 x int(73 * 275 / 267) = 73 x 75;
    # CenterCrop(64): top = round(4.5) = 4, left = round(5.5) = 6
    x, y, w, h = map_box_to_input((100, 50, 20, 30), (267, 275), resize=73, crop=64)
    assert math.isclose(x, 100 * 75 / 275 - 6)
    assert math.isclose(y, 50 * 73 / 267 - 4)
    assert math.isclose(w, 20 * 75 / 275)
    assert math.isclose(h, 30 * 73 / 267)
    # clipped at the crop border, and a box outside the crop has no area
    x, y, w, h = map_box_to_input((0, 0, 30, 267), (267, 275), resize=73, crop=64)
    assert (x, y) == (0.0, 0.0) and math.isclose(w, 30 * 75 / 275 - 6) and h == 64.0
    assert map_box_to_input((0, 0, 10, 10), (267, 275), resize=73, crop=64)[2] == 0.0
    # crop larger than the resized image: torchvision pads, the box moves right/down
    x, y, _, _ = map_box_to_input((0, 0, 10, 10), (100, 100), resize=50, crop=64)
    assert (x, y) == (7.0, 7.0)


def test_map_box_to_input_matches_torchvision() -> None:
    height, width = 120, 90
    box = (30, 44, 24, 36)
    array = np.zeros((height, width), dtype=np.uint8)
    array[44:80, 30:54] = 255
    pipeline = transforms.Compose([transforms.Resize(70), transforms.CenterCrop(64)])
    out = np.asarray(pipeline(Image.fromarray(array))) > 127
    rows, cols = np.nonzero(out)
    x, y, w, h = map_box_to_input(box, (height, width), resize=70, crop=64)
    assert abs(cols.min() - x) <= 1 and abs(cols.max() + 1 - (x + w)) <= 1
    assert abs(rows.min() - y) <= 1 and abs(rows.max() + 1 - (y + h)) <= 1


def test_pointing_game_hit_miss_and_edges() -> None:
    heat = np.zeros((10, 10))
    heat[3, 7] = 1.0
    assert pointing_game(heat, (6, 2, 3, 3))  # columns 6-8, rows 2-4
    assert not pointing_game(heat, (0, 0, 5, 5))
    assert pointing_game(heat, (7, 3, 1, 1))  # exactly that pixel
    assert pointing_game(heat, (7.5, 3.5, 0.0, 0.0))  # degenerate box through the pixel centre
    assert not pointing_game(heat, (7.6, 3, 1, 1))  # pixel centre 7.5 just outside
    assert not pointing_game(np.full((5, 5), 0.3), (0, 0, 5, 5))  # constant map points nowhere
    plateau = np.zeros((8, 8))
    plateau[0:4, 0:4] = 1.0  # tie: the point is the plateau's centre, (1, 1) or nearby
    assert pointing_game(plateau, (1, 1, 2, 2))
    assert not pointing_game(plateau, (0, 0, 1, 1))
    with pytest.raises(DataError):
        pointing_game(-heat, (0, 0, 1, 1))
    with pytest.raises(DataError):
        pointing_game(heat, (0, 0, -1, 1))


def test_grid_peak_pixels_by_hand() -> None:
    # 8 -> 64 px: an inner node k sits between pixels 8k + 3 and 8k + 4 (cv2's half-pixel centres); a
    # border node owns the pixels between it and the border (the interpolation is clamped there)
    mask = grid_peak_pixels(8, 64)
    rows = np.flatnonzero(mask.any(axis=1))
    assert rows.tolist() == [0, 1, 2, 3, *[r for k in range(1, 7) for r in (8 * k + 3, 8 * k + 4)], 60, 61, 62, 63]
    assert np.array_equal(mask, mask.T) and mask.sum() == len(rows) ** 2
    assert not grid_peak_pixels(1, 64).any()  # a 1x1 map gives a constant heatmap: no peak
    # every heatmap of an 8x8 map, upsampled as pytorch-grad-cam does, peaks on the mask
    from pytorch_grad_cam.utils.image import scale_cam_image
    rng = np.random.default_rng(0)
    for _ in range(50):
        heat = scale_cam_image(rng.random((1, 8, 8)).astype(np.float32), (64, 64))[0]
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        assert mask[r, c]


def test_pointing_bound_by_hand() -> None:
    # 2x2 map at 64 px: the peak is always in a 16 px corner square
    assert pointing_bound([(24, 24, 16, 16)], 2, 64) == 0.0  # a central box cannot be hit
    assert pointing_bound([(0, 0, 4, 4), (24, 24, 16, 16), None, (5, 5, 0, 0)], 2, 64) == 0.5
    # 8x8 map: a 2 px box on pixels 3-4 holds a node's pixels, one on pixels 5-6 does not
    assert pointing_bound([(3, 3, 2, 2)], 8, 64) == 1.0
    assert pointing_bound([(5.2, 5.2, 1.5, 1.5)], 8, 64) == 0.0
    assert math.isnan(pointing_bound([None], 8, 64))


def test_mass_in_box_by_hand() -> None:
    heat = np.zeros((4, 4))
    heat[0, 0], heat[1, 1], heat[3, 3] = 1.0, 2.0, 1.0
    assert math.isclose(mass_in_box(heat, (0, 0, 2, 2)), 3.0 / 4.0)
    assert math.isclose(mass_in_box(heat, (0, 0, 4, 4)), 1.0)
    assert mass_in_box(heat, (2, 0, 2, 2)) == 0.0
    assert mass_in_box(np.zeros((4, 4)), (0, 0, 4, 4)) == 0.0
    assert math.isclose(mass_in_box(np.ones((4, 4)), (1, 1, 2, 3)), 6.0 / 16.0)


def test_localisation_scores() -> None:
    maps = np.zeros((4, 6, 6))
    maps[0, 1, 1] = 1.0  # hit, all mass inside
    maps[1, 5, 5] = 1.0  # miss
    maps[1, 0, 0] = 0.5
    maps[2, 2, 2] = 1.0  # no box
    maps[3, 3, 3] = 1.0  # empty box
    boxes = [(0, 0, 2, 2), (0, 0, 2, 2), None, (1, 1, 0, 0)]
    scores = localisation_scores(maps, boxes)
    assert scores["n"] == 2 and scores["n_skipped_empty_box"] == 1
    assert math.isclose(scores["pointing_game"], 0.5)
    assert math.isclose(scores["mass_in_box"], (1.0 + 0.5 / 1.5) / 2)
    nothing = localisation_scores(maps[:1], [None])
    assert nothing["n"] == 0 and math.isnan(nothing["pointing_game"])
    with pytest.raises(DataError, match="one box"):
        localisation_scores(maps, boxes[:2])
