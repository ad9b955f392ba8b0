"""Unit tests for variants.py and variant_plots.py (the STN / attention analyses and Table 2).

``tests/test_models.py`` already covers the models themselves (identity initialisation, both STN
parameterisations, attention maps summing to one, every architecture's forward/backward); this
module adds what it does not: the STN variants with the ``scale_translation`` transform through
``build_model``, the conv6 gradient of the two compatibility functions, and the functions the
notebooks 03/04 call.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_part
from nexperia_utils.models.attention import ResNetAtt2
from nexperia_utils.data.boxes import box_lookup, input_boxes
from nexperia_utils.config import get_profile
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.analysis.localisation import map_box_to_input
from nexperia_utils.models.builders import build_model
from nexperia_utils.evaluation.pixel_reference import REFERENCE_NAME
from nexperia_utils.reporting.published import ROW_KEYS
from nexperia_utils.models.stn import warp
from nexperia_utils.data.transforms import resize_size_for
from nexperia_utils.reporting.variant_figures import plot_attention_maps, plot_stn_examples, plot_theta_distribution
from nexperia_utils.analysis.model_variants import (
    MEMORY_ROW, STN_MOMENTUM, TABLE2_ROWS, TIME_ROW, require_finished_runs, run_overview, stn_lr_factor,
    stn_run_name, stn_training_settings, table2, table2_caption, table2_runs,
)
from nexperia_utils.analysis.variant_inspection import (
    att2_layer_table, attention_maps, conv6_gradient_norm, eval_inputs, example_indices, stn_health, stn_thetas,
    stn_views, theta_frame, view_coverage,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread", "torch_seed")


# --------------------------------------------------------------------------- models not covered elsewhere
def test_scale_translation_stn_model_forward_backward() -> None:
    # (VGG19_bn_stn shares the STN module; test_models.py runs it with the affine transform)
    model = build_model("resnet18_stn", num_classes=10, stn_transform="scale_translation")
    x = torch.randn(2, 3, 32, 32)
    # an untrained STN is the identity: the model equals its backbone on the raw input
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model.backbone(x), atol=1e-5)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 9])).backward()
    last = model.stn.fc_loc[-1]
    assert last.out_features == 3
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0


def test_concat_compatibility_gives_conv6_no_gradient_and_dot_does() -> None:
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    concat = conv6_gradient_norm(ResNetAtt2(3, compatibility="concat"), x, y)
    dot = conv6_gradient_norm(ResNetAtt2(3, compatibility="dot"), x, y)
    assert concat["layer4 (conv5)"] > 1e-4 and dot["layer4 (conv5)"] > 1e-4
    assert concat["conv6"] < 1e-6 * concat["layer4 (conv5)"]
    assert dot["conv6"] > 1e-3 * dot["layer4 (conv5)"]


# --------------------------------------------------------------------------- settings and runs
def test_stn_training_settings_follow_section_3_3() -> None:
    quick = get_profile("quick")
    for arch, momentum in (("resnet18_stn", 0.6), ("vgg19_bn_stn", 0.5)):
        settings = stn_training_settings(arch, quick)
        assert settings["augment"] is False
        assert settings["momentum"] == momentum == STN_MOMENTUM[arch]
        assert settings["epochs"] == quick.stn_epochs
        assert settings["stn_transform"] == "affine"
    assert stn_training_settings("resnet18_stn", quick, epochs=3, stn_transform="scale_translation")["epochs"] == 3
    with pytest.raises(ConfigError, match="STN models"):
        stn_training_settings("resnet18", quick)
    with pytest.raises(ConfigError, match="stn_transform"):
        stn_training_settings("resnet18_stn", quick, stn_transform="rotation")
    with pytest.raises(ConfigError, match="epochs"):
        stn_training_settings("resnet18_stn", quick, epochs=0)


def test_stn_lr_factor_is_passed_where_the_training_loop_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import nexperia_utils.analysis.model_variants as variants

    quick = get_profile("quick", lr=0.01)
    monkeypatch.setattr(variants, "_train_config_fields", lambda: {"epochs", "stn_lr_factor"})
    assert variants.stn_training_settings("resnet18_stn", quick)["stn_lr_factor"] == pytest.approx(0.1)
    monkeypatch.setattr(variants, "_train_config_fields", lambda: {"epochs"})
    assert "stn_lr_factor" not in variants.stn_training_settings("resnet18_stn", quick)


def test_stn_lr_factor_caps_the_localisation_rate_at_the_reports() -> None:
    assert stn_lr_factor(0.001) == 1.0
    assert stn_lr_factor(0.0001) == 1.0
    assert math.isclose(stn_lr_factor(0.01), 0.1)
    with pytest.raises(ConfigError):
        stn_lr_factor(0.0)


def test_run_names_and_make_targets() -> None:
    assert stn_run_name("resnet18_stn") == "resnet18_stn-ce"
    assert stn_run_name("vgg19_bn_stn", "scale_translation") == "vgg19_bn_stn-ce-scale_translation"
    runs = table2_runs()
    assert [r.model for r in runs] == ["ResNet18", "VGG19_bn", "ResNet18_stn", "VGG19_bn_stn", "ResNet_att_2"]
    assert [r.run for r in runs] == ["resnet18-ce", "vgg19_bn-ce", "resnet18_stn-ce", "vgg19_bn_stn-ce",
                                     "resnet18_att2-ce"]
    assert [r.make_target for r in runs] == ["make baseline-resnet18", "make baseline-vgg19_bn",
                                             "make stn-resnet18_stn", "make stn-vgg19_bn_stn", "make attention"]
    other = table2_runs(stn_transform="scale_translation")
    assert other[2].run == "resnet18_stn-ce-scale_translation"
    assert other[2].make_target == "make stn-resnet18_stn STN_TRANSFORM=scale_translation"
    assert table2_runs(weights="imagenet")[0].run == "resnet18-ce"


def _fake_run(runs_dir: Path, name: str, arch: str, epochs: int, time_s: float, memory: float,
              momentum: float = 0.9) -> Path:
    run = runs_dir / name
    run.mkdir(parents=True)
    config = {"arch": arch, "epochs": epochs, "momentum": momentum, "augment": not arch.endswith("_stn"),
              "weights": "none", "image_size": 32, "stn_transform": "affine"}
    (run / "config.json").write_text(json.dumps({"config": config, "classes": ["a", "good"]}))
    (run / "done.json").write_text(json.dumps({"best_epoch": 1, "best_val_auc": 0.9, "train_time_s": time_s,
                                               "peak_memory_mb": memory, "device": "cpu", "epochs": epochs}))
    return run


def test_require_finished_runs_names_missing_runs_and_targets(tmp_path: Path) -> None:
    runs = table2_runs()
    _fake_run(tmp_path, "resnet18-ce", "resnet18", 2, 60, 1000)
    (tmp_path / "vgg19_bn_stn-ce").mkdir()  # started, never finished
    with pytest.raises(FileNotFoundError) as info:
        require_finished_runs(tmp_path, runs, "quick")
    message = str(info.value)
    assert "4 of the 5 runs" in message
    for target in ("make baseline-vgg19_bn PROFILE=quick", "make stn-resnet18_stn PROFILE=quick",
                   "make stn-vgg19_bn_stn PROFILE=quick", "make attention PROFILE=quick",
                   "make reproduce-table2 PROFILE=quick"):
        assert target in message
    assert "make baseline-resnet18" not in message
    (tmp_path / "vgg19_bn_stn-ce").rmdir()
    for run in runs[1:]:
        _fake_run(tmp_path, run.run, run.arch, 2, 60, 1000)
    assert [d.name for d in require_finished_runs(tmp_path, runs, "quick")] == [r.run for r in runs]


def _results(models: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for model, aucs in models.items():
        for i, auc in enumerate(aucs):
            rows.append({"model": model, "checkpoint": f"epoch_{i:03d}.pt", **{k: 0.1 for k in ROW_KEYS}, "auc": auc})
    return pd.DataFrame(rows)


def test_table2_adds_time_and_memory_rows(tmp_path: Path) -> None:
    dirs = {"ResNet18": _fake_run(tmp_path, "resnet18-ce", "resnet18", 4, 90.0, 1234.4),
            "VGG19_bn_stn": _fake_run(tmp_path, "vgg19_bn_stn-ce", "vgg19_bn_stn", 6, 600.0, 5000.6, 0.5)}
    overview = run_overview(dirs)
    assert list(overview.index) == ["ResNet18", "VGG19_bn_stn"]
    assert overview.loc["VGG19_bn_stn", "momentum"] == 0.5
    assert overview.loc["VGG19_bn_stn", "stn_transform"] == "affine"
    assert overview.loc["ResNet18", "stn_transform"] == ""
    assert overview.loc["ResNet18", "optimizer"] == "sgd"  # configs written before the optimizer field
    assert math.isnan(overview.loc["ResNet18", "stn_lr_factor"])
    assert overview.loc["VGG19_bn_stn", "stn_lr_factor"] == 1.0
    results = _results({"ResNet18": [0.99, 0.97], "VGG19_bn_stn": [0.95]})
    table = table2(results, overview, ["ResNet18", "VGG19_bn_stn"])
    assert list(table.index) == list(TABLE2_ROWS)
    assert list(table.columns) == ["ResNet18", "VGG19_bn_stn"]
    assert table.loc["auc", "ResNet18"] == "98.00 (1.41)"
    assert table.loc["auc", "VGG19_bn_stn"] == "95.00"
    assert table.loc[TIME_ROW].tolist() == ["1.50", "10.00"]
    assert table.loc[MEMORY_ROW].tolist() == ["1234", "5001"]
    with pytest.raises(DataError, match="no training record"):
        table2(results, overview.drop(index="ResNet18"), ["ResNet18", "VGG19_bn_stn"])
    reference = _results({REFERENCE_NAME: [0.6]})
    with_reference = table2(pd.concat([results, reference], ignore_index=True), overview, ["ResNet18", "VGG19_bn_stn"])
    assert list(with_reference.columns) == ["ResNet18", "VGG19_bn_stn", REFERENCE_NAME]
    assert with_reference.loc["auc", REFERENCE_NAME] == "60.00"
    assert with_reference.loc[[TIME_ROW, MEMORY_ROW], REFERENCE_NAME].tolist() == ["-", "-"]  # not a trained network
    caption = table2_caption(get_profile("smoke"), overview, 2, "affine", 18, 9, "synthetic-smoke")
    assert "ResNet18 4, VGG19_bn_stn 6" in caption and "resident memory" in caption and "Device: cpu" in caption


def test_run_overview_needs_done_json(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    with pytest.raises(FileNotFoundError, match="done.json"):
        run_overview({"ResNet18": tmp_path / "r"})


# --------------------------------------------------------------------------- inputs
def test_example_indices_take_classes_in_turn() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    chosen = example_indices(labels, 5, seed=1)
    assert [labels[i] for i in chosen] == [0, 1, 2, 0, 1]
    assert len(set(chosen)) == 5
    assert example_indices(labels, 20) and len(example_indices(labels, 20)) == 9
    only = example_indices(labels, 3, classes=[2, 5])
    assert [labels[i] for i in only] == [2, 2, 2]
    assert example_indices(labels, 0) == []


def test_eval_inputs_are_centre_crops() -> None:
    part = make_part("test", 6, seed=0)
    x = eval_inputs(part, [0, 3], 32)
    assert x.shape == (2, 3, 32, 32)
    assert eval_inputs(part, [], 32).shape == (0, 3, 32, 32)


# --------------------------------------------------------------------------- STN analysis
def test_untrained_stn_thetas_and_views_are_the_identity() -> None:
    part = make_part("test", 5, seed=1)
    model = build_model("resnet18_stn", num_classes=3)
    thetas = stn_thetas(model, part, 32, batch_size=2)
    assert thetas.shape == (5, 2, 3)
    assert np.allclose(thetas, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    inputs, transformed = stn_views(model, eval_inputs(part, [0, 1], 32))
    assert inputs.shape == transformed.shape == (2, 32, 32)
    assert np.abs(inputs - transformed).max() < 1e-5
    assert model.training  # mode restored
    with pytest.raises(ConfigError, match="spatial transformer"):
        stn_thetas(build_model("resnet18", 3), part, 32)


def test_view_coverage() -> None:
    thetas = np.array([
        [[1, 0, 0], [0, 1, 0]],      # identity
        [[0.5, 0, 0.2], [0, 0.5, 0]],  # zoom in, inside the image
        [[1, 0, 5], [0, 1, 0]],      # looking far outside
        [[2, 0, 0], [0, 2, 0]],      # zoom out 2x: the image fills a quarter
    ], dtype=float)
    assert np.allclose(view_coverage(thetas), [1.0, 1.0, 0.0, 0.25], atol=1e-6)
    assert "collapsed" in stn_health(np.array([0.0, 0.01, 1.0]))
    assert "collapsed" not in stn_health(np.array([1.0, 1.0, 0.0]))
    with pytest.raises(DataError):
        view_coverage(np.zeros((2, 3, 3)))


def test_theta_frame_affine_derived_values() -> None:
    angle = math.radians(30)
    rotation = [[math.cos(angle), -math.sin(angle), 0.1], [math.sin(angle), math.cos(angle), -0.2]]
    zoom = [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]
    frame = theta_frame(np.array([rotation, zoom]), "affine", labels=np.array([1, 0]), negative_index=1)
    assert list(frame.columns) == ["theta11", "theta12", "theta13", "theta21", "theta22", "theta23",
                                   "area_scale", "rotation_deg", "coverage", "group"]
    assert frame["rotation_deg"].round(6).tolist() == [30.0, 0.0]
    assert frame["area_scale"].round(6).tolist() == [1.0, 0.25]
    assert frame["theta13"].tolist() == [0.1, 0.0] and frame["theta23"].tolist() == [-0.2, 0.0]
    assert frame["group"].tolist() == ["good", "defect"]


def test_positive_rotation_turns_the_content_counter_clockwise() -> None:
    # a bright dot right of the centre; after a +90 degree transform it must appear above the centre
    image = torch.zeros(1, 1, 21, 21)
    image[0, 0, 10, 17] = 1.0
    angle = math.radians(90)
    theta = torch.tensor([[[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]]])
    out = warp(image, theta)[0, 0]
    row, col = divmod(int(out.argmax()), out.shape[1])
    assert (row, col) == (3, 10)
    assert theta_frame(theta.numpy().astype(float), "affine")["rotation_deg"].round(6).iloc[0] == 90.0


def test_theta_frame_scale_translation_and_errors() -> None:
    thetas = np.array([[[0.8, 0.0, 0.1], [0.0, 0.8, -0.3]]])
    frame = theta_frame(thetas, "scale_translation")
    assert list(frame.columns) == ["scale", "tx", "ty", "coverage"]
    assert frame.iloc[0][["scale", "tx", "ty"]].tolist() == [0.8, 0.1, -0.3]
    with pytest.raises(DataError, match=r"\(N, 2, 3\)"):
        theta_frame(np.zeros((1, 3, 3)), "affine")
    with pytest.raises(ConfigError):
        theta_frame(thetas, "projective")
    with pytest.raises(ConfigError, match="negative_index"):
        theta_frame(thetas, "affine", labels=np.array([0]))


# --------------------------------------------------------------------------- attention analysis
def test_attention_maps_upsampled_to_the_input() -> None:
    model = ResNetAtt2(num_classes=4).eval()
    x = torch.randn(3, 3, 64, 64)
    probs, maps, grids = attention_maps(model, x, batch_size=2)
    assert probs.shape == (3, 4) and np.allclose(probs.sum(axis=1), 1.0)
    assert grids == [(4, 4), (2, 2)]
    assert [m.shape for m in maps] == [(3, 64, 64), (3, 64, 64)]
    with torch.no_grad():
        _, raw = model.forward_with_attention(x)
    for upsampled, attention in zip(maps, raw):
        n = attention.shape[1] * attention.shape[2]
        expected = F.interpolate(attention[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0] * n
        assert np.allclose(upsampled, expected.numpy(), atol=1e-5)
        assert (upsampled >= 0).all()
        # the brightest input position is the brightest grid cell's area
        cell = 64 // attention.shape[1]
        r, c = divmod(int(attention[0].argmax()), attention.shape[2])
        assert upsampled[0, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].max() == pytest.approx(upsampled[0].max())
    with pytest.raises(ConfigError, match="forward_with_attention"):
        attention_maps(build_model("resnet18", 3), x)


def test_att2_layer_table_shapes_at_64_px() -> None:
    table = att2_layer_table(ResNetAtt2(num_classes=10), 64)
    shapes = table["output shape (C, H, W)"]
    assert shapes["conv4"] == "(256, 4, 4)"
    assert shapes["conv5"] == "(512, 2, 2)"
    assert shapes["conv6 max pool (g)"] == "(512, 1, 1)"
    assert shapes["attention after conv4"] == "(512,) + (4, 4)"
    assert shapes["output (fc)"] == "(10,)"


def test_input_boxes_map_annotations_to_model_pixels(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((267, 275), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((267, 275), dtype=np.uint8)).save(tmp_path / "b.png")
    frame = pd.DataFrame({"image_id": ["a", "b", "c"], "path": ["a.png", "b.png", "missing.png"]})
    annotations = pd.DataFrame({"image_id": ["a", "b"], "x": [100.0, np.nan], "y": [120.0, np.nan],
                                "w": [20.0, np.nan], "h": [10.0, np.nan]})
    assert resize_size_for(64) == 73
    boxes = input_boxes(frame, box_lookup(annotations), tmp_path, 64)
    assert boxes[0] == pytest.approx(map_box_to_input((100, 120, 20, 10), (267, 275), 73, 64))
    assert boxes[1] is None and boxes[2] is None
    assert input_boxes(frame, box_lookup(None), tmp_path, 64) == [None, None, None]
    with pytest.raises(DataError, match="lack the column"):
        box_lookup(annotations.drop(columns="w"))


# --------------------------------------------------------------------------- figures
def _png_size(fig) -> int:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    return buffer.tell()


def test_plot_stn_examples() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 16, 16)), rng.random((3, 16, 16))
    fig = plot_stn_examples(a, b, ["x", "y", "z"])
    assert len(fig.axes) == 6
    assert fig.axes[0].get_ylabel() == "input"
    assert _png_size(fig) > 1000
    with pytest.raises(DataError):
        plot_stn_examples(a, b[:2], ["x", "y", "z"])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        plot_stn_examples(a * 3, b, ["x", "y", "z"])


def test_plot_theta_distribution_marks_the_identity() -> None:
    thetas = np.tile(np.array([[1.0, 0, 0], [0, 1, 0]]), (6, 1, 1)) + np.random.default_rng(0).normal(0, 0.05, (6, 2, 3))
    frame = theta_frame(thetas, "affine", labels=np.array([0, 1, 0, 1, 0, 1]), negative_index=1)
    fig = plot_theta_distribution(frame)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 9  # 6 entries, area, rotation, coverage
    assert any(line.get_xdata()[0] == 1.0 for line in visible[0].get_lines())  # identity theta11 = 1
    assert _png_size(fig) > 1000
    constant = theta_frame(np.tile(np.array([[1.0, 0, 0], [0, 1, 0]]), (3, 1, 1)), "scale_translation")
    assert len([ax for ax in plot_theta_distribution(constant).axes if ax.get_visible()]) == 4
    with pytest.raises(DataError):
        plot_theta_distribution(pd.DataFrame())


def test_plot_attention_maps() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((2, 32, 32))
    maps = [rng.random((2, 32, 32)) * 3, np.ones((2, 32, 32))]
    fig = plot_attention_maps(images, maps, [(4.0, 5.0, 10.0, 6.0), None], ["a", "b"], ["conv4", "conv5"])
    assert len(fig.axes) == 6
    assert len(fig.axes[0].patches) == 1 and len(fig.axes[1].patches) == 0  # the box of image 0 only
    assert fig.axes[0].get_ylabel() == "input" and fig.axes[2].get_ylabel() == "conv4"
    assert "max 1x uniform" in [t.get_text() for t in fig.axes[5].texts]
    assert _png_size(fig) > 1000
    with pytest.raises(DataError, match="shape"):
        plot_attention_maps(images, [maps[0][:, :16]], [None, None], ["a", "b"], ["conv4"])
    with pytest.raises(DataError, match="one box"):
        plot_attention_maps(images, maps, [None], ["a", "b"], ["conv4", "conv5"])
    empty = plot_attention_maps(np.zeros((0, 32, 32)), [], [], [], [])
    assert empty.axes[0].texts
