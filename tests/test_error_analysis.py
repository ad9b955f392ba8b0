"""Unit tests of nexperia_utils.analysis.interpretation: operating points, ranking, precision/recall, corrections
(Table 5 relabelling), SAT state, boxes, localisation table and embeddings."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from nexperia_utils.data import boxes as bx
from nexperia_utils.analysis import interpretation as ea
from nexperia_utils.analysis import explain
from nexperia_utils.analysis import localisation
from nexperia_utils.analysis import galleries as gal
from nexperia_utils.analysis import mislabels as ml
from nexperia_utils.evaluation import metrics
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.models.builders import build_model, classifier_head

from conftest import CLASSES, make_part


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- operating points
def test_threshold_at_tpr_by_hand() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    s = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05])
    # TPR = 100 %: the lowest defect score; 3 of 4 good images score >= 0.2
    assert ea.threshold_at_tpr(y, s, 1.0) == 0.2
    # TPR >= 0.75 first reached at threshold 0.6 (defects 0.9, 0.8, 0.6), FPR 1/4 there (0.7)
    assert ea.threshold_at_tpr(y, s, 0.75) == 0.6
    points = ea.operating_points(y, s, tpr_levels=(0.75, 1.0))
    assert list(points["operating_point"]) == ["defect score >= 0.5", "TPR >= 75 %", "TPR = 100 %"]
    row = points.set_index("operating_point")
    assert row.loc["defect score >= 0.5", "missed_defects"] == 1 and row.loc["defect score >= 0.5", "false_alarms"] == 1
    assert row.loc["TPR = 100 %", "missed_defects"] == 0 and row.loc["TPR = 100 %", "false_alarms"] == 2
    assert math.isclose(row.loc["TPR = 100 %", "fpr"], metrics.fpr_at_tpr(y, s, 1.0))
    assert math.isclose(row.loc["TPR >= 75 %", "fpr"], metrics.fpr_at_tpr(y, s, 0.75))
    assert row.loc["TPR >= 75 %", "tpr"] == 0.75


def test_operating_points_agree_with_metrics_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.2
    s = np.round(np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1), 2)  # ties on purpose
    points = ea.operating_points(y, s)
    for level, (_, row) in zip(metrics.TPR_LEVELS, points.iloc[1:].iterrows()):
        assert math.isclose(row["fpr"], metrics.fpr_at_tpr(y, s, level))
        assert row["tpr"] >= level


def test_rank_by_score() -> None:
    assert ea.rank_by_score([0.1, 0.9, 0.5, 0.9]).tolist() == [4, 1, 3, 1]
    with pytest.raises(DataError):
        ea.rank_by_score([0.1, float("nan")])


def test_confusion_frame() -> None:
    frame = ea.confusion_frame(["good", "good", "scratch"], ["good", "scratch", "scratch"], CLASSES)
    assert frame.loc["good", "scratch"] == 1 and frame.loc["scratch", "scratch"] == 1
    assert frame.to_numpy().sum() == 3 and list(frame.columns) == CLASSES


# --------------------------------------------------------------------------- ranking
def _predictions() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f", "g"],
        "part": ["test", "test", "test", "train", "train", "val", "test"],
        "label": ["good", "good", "scratch", "good", "good", "good", "good"],
        "defect_score": [0.9, 0.2, 0.99, 0.5, 0.1, 0.6, 0.2],
        "predicted": ["scratch", "good", "scratch", "good", "good", "chipping", "good"],
        "p_chipping": [0.05, 0.1, 0.0, 0.2, 0.05, 0.5, 0.1],
        "p_good": [0.1, 0.8, 0.01, 0.5, 0.9, 0.4, 0.8],
        "p_scratch": [0.85, 0.1, 0.99, 0.3, 0.05, 0.1, 0.1],
    })


def test_suspected_mislabels_ranks_good_images_by_defect_score() -> None:
    ranking = ml.suspected_mislabels(_predictions(), "good")
    assert "c" not in set(ranking["image_id"])  # defect-labelled images are not suspects
    assert ranking["image_id"].tolist() == ["a", "f", "d", "b", "g", "e"]  # tie b/g: by id
    assert ranking["rank"].tolist() == list(range(1, 7))
    assert ranking.set_index("image_id").loc["a", "p_predicted"] == 0.85
    assert ranking[ranking["part"] == "test"]["rank_in_part"].tolist() == [1, 2, 3]
    assert ranking["suspicion"].equals(ranking["defect_score"])
    assert ranking["sat_weight"].isna().all()


def test_suspected_mislabels_with_sat_state() -> None:
    sat = pd.DataFrame({"image_id": ["d", "e", "x"], "sat_weight": [0.6, 0.55, 1.0],
                        "sat_defect_mass": [0.2, 0.9, 0.0], "sat_epoch": 3})
    ranking = ml.suspected_mislabels(_predictions(), "good", sat).set_index("image_id")
    assert math.isclose(ranking.loc["e", "suspicion"], (0.1 + 0.9) / 2)
    assert math.isclose(ranking.loc["d", "suspicion"], (0.5 + 0.2) / 2)
    assert ranking.loc["e", "sat_weight"] == 0.55 and np.isnan(ranking.loc["a", "sat_weight"])
    assert ranking.loc["e", "rank"] == 3  # 0.5 moves it above d (0.35), below a (0.9) and f (0.6)
    with pytest.raises(DataError, match="no SAT state"):
        ml.suspected_mislabels(_predictions(), "good", sat.iloc[:1])


def test_precision_recall_at_k_by_hand() -> None:
    ranked = ["a", "b", "c", "d", "e"]
    positives = {"b", "d", "z"}  # z is not in the ranking: it does not count
    frame = ml.precision_recall_at_k(ranked, positives, [1, 2, 4, 10]).set_index("k")
    assert frame.loc[1, "hits"] == 0 and frame.loc[1, "precision"] == 0.0
    assert frame.loc[2, "precision"] == 0.5 and frame.loc[2, "recall"] == 0.5
    assert frame.loc[4, "precision"] == 0.5 and frame.loc[4, "recall"] == 1.0
    assert 5 in frame.index and frame.loc[5, "precision"] == 0.4  # k clipped to the ranking
    assert (frame["n_positive"] == 2).all()
    none = ml.precision_recall_at_k(ranked, set(), [2])
    assert none["precision"].iloc[0] == 0.0 and np.isnan(none["recall"].iloc[0])
    with pytest.raises(ConfigError):
        ml.precision_recall_at_k(ranked, positives, [0])


def test_ranking_quality_per_scope() -> None:
    ranking = ml.suspected_mislabels(_predictions(), "good")
    quality = ml.ranking_quality(ranking, {"a", "e"}, k=2).set_index("scope")
    assert list(quality.index) == ["all", "train", "val", "test"]
    assert quality.loc["all", "hits"] == 1 and quality.loc["all", "precision"] == 0.5
    assert quality.loc["test", "precision"] == 0.5 and quality.loc["test", "recall"] == 1.0
    assert quality.loc["test", "average_precision"] == 1.0  # a is ranked first among the test images
    assert np.isnan(quality.loc["val", "average_precision"])
    assert math.isclose(quality.loc["all", "base_rate"], 2 / 6)


# --------------------------------------------------------------------------- corrections / Table 5
def test_corrections_from_annotations_only_where_the_class_differs() -> None:
    annotations = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "label": ["good", "good", "scratch", "good"],
                                "true_class": ["scratch", "good", "scratch", "chipping"]})
    all_ = ml.corrections_from_annotations(annotations)
    assert all_.to_dict("list") == {"image_id": ["a", "d"], "corrected_label": ["scratch", "chipping"]}
    assert ml.corrections_from_annotations(annotations, ["d", "b"])["image_id"].tolist() == ["d"]
    assert ml.noisy_ids(annotations) == {"a", "d"} and ml.noisy_ids(None) == set()


def test_apply_corrections_changes_exactly_the_top_k_that_differ() -> None:
    frame = pd.DataFrame({"image_id": [f"i{n}" for n in range(8)], "label": ["good"] * 6 + ["scratch", "chipping"]})
    corrections = pd.DataFrame({
        "image_id": ["i0", "i1", "i2", "i5", "i6"],
        "corrected_label": ["scratch", "good", "chipping", "scratch", "scratch"],
    })
    top = ["i0", "i1", "i2", "i3"]  # K = 4: i1 "corrected" to its own label, i3 has no correction
    labels, applied = ml.apply_corrections(frame, corrections, top)
    changed = np.flatnonzero(labels != frame["label"].to_numpy())
    assert changed.tolist() == [0, 2]  # i5 (outside the top K) and i6 (same label) untouched
    assert labels.tolist() == ["scratch", "good", "chipping", "good", "good", "good", "scratch", "chipping"]
    assert applied.to_dict("list") == {"image_id": ["i0", "i2"], "label": ["good", "good"],
                                       "corrected_label": ["scratch", "chipping"]}
    assert frame["label"].tolist()[0] == "good"  # the input is not modified
    with pytest.raises(DataError, match="not in the part"):
        ml.apply_corrections(frame, corrections, ["nope"])


def test_read_corrections_and_template(tmp_path) -> None:
    file = tmp_path / "c.csv"
    file.write_text("image_id,corrected_label,note\na,scratch,x\nb,,keep\n c , good ,\n")
    frame = ml.read_corrections(file, CLASSES)
    assert frame.to_dict("list") == {"image_id": ["a", "c"], "corrected_label": ["scratch", "good"]}
    file.write_text("image_id,corrected_label\na,crack\n")
    with pytest.raises(DataError, match="unknown class"):
        ml.read_corrections(file, CLASSES)
    file.write_text("image_id,corrected_label\na,good\na,scratch\n")
    with pytest.raises(DataError, match="more than once"):
        ml.read_corrections(file, CLASSES)
    file.write_text("id,label\n")
    with pytest.raises(DataError, match="lacks"):
        ml.read_corrections(file, CLASSES)
    with pytest.raises(DataError, match="does not exist"):
        ml.read_corrections(tmp_path / "missing.csv", CLASSES)
    template = ml.corrections_template(ml.suspected_mislabels(_predictions(), "good"), 2)
    assert template["image_id"].tolist() == ["a", "b"] and (template["corrected_label"] == "").all()


# --------------------------------------------------------------------------- SAT snapshot
def test_sat_train_scores(tmp_path) -> None:
    train = make_part("train", 6, seed=0)
    split = train.frame.drop(columns="path")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"loss": "sat_bad_1"}, "classes": CLASSES,
                                                 "negative_class": "good", "split_hash": "abc"}))
    assert ml.sat_train_scores(run, split, "good") is None
    (run / "sat").mkdir()
    soft = np.eye(3, dtype=np.float16)[train.labels]
    good_rows = np.flatnonzero(train.labels == 1)
    soft[good_rows[0]] = [0.7, 0.3, 0.0]
    for epoch, weights in ((2, np.ones(6)), (10, soft.max(axis=1))):
        np.savez_compressed(run / "sat" / f"epoch_{epoch:03d}.npz", weights=weights.astype(np.float16), soft_targets=soft)
    frame = ml.sat_train_scores(run, split, "good")
    assert (frame["sat_epoch"] == 10).all()  # the latest snapshot
    assert frame["image_id"].tolist() == train.frame["image_id"].iloc[good_rows].tolist()  # good-labelled only
    first = frame.set_index("image_id").loc[train.frame["image_id"].iloc[good_rows[0]]]
    assert math.isclose(first["sat_defect_mass"], 0.7, abs_tol=1e-3) and math.isclose(first["sat_weight"], 0.7, abs_tol=1e-3)
    assert np.allclose(frame["sat_defect_mass"].iloc[1:], 0.0)
    with pytest.raises(DataError):
        ml.sat_train_scores(run, split.iloc[:5], "good")  # the snapshot belongs to another split


# --------------------------------------------------------------------------- boxes and localisation
def test_read_boxes_both_layouts(tmp_path) -> None:
    plain = tmp_path / "boxes.csv"
    plain.write_text("image_id,x,y,w,h\na,10,20,5,6\nb,,,,\nc,0,0,4,4\nc,10,10,2,2\n")
    boxes = bx.box_lookup(bx.read_boxes(plain))
    assert boxes == {"a": (10.0, 20.0, 5.0, 6.0), "c": (0.0, 0.0, 12.0, 12.0)}  # c: enclosing box of two
    kaggle = tmp_path / "defect_area.csv"
    kaggle.write_text("id,x_1,y_1,x_2,y_2\na,10,20,15,26\n")
    assert bx.box_lookup(bx.read_boxes(kaggle)) == {"a": (10.0, 20.0, 5.0, 6.0)}
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,x,y\na,1,2\n")
    with pytest.raises(DataError, match="lacks"):
        bx.read_boxes(bad)


def test_input_boxes_map_to_the_crop(tmp_path) -> None:
    from PIL import Image

    part = make_part("test", 3, seed=0)
    for rel in part.frame["path"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((267, 275), dtype=np.uint8)).save(tmp_path / rel)
    first = part.frame["image_id"].iloc[0]
    boxes = bx.input_boxes(part.frame, {first: (100, 50, 20, 30)}, tmp_path, image_size=64)
    assert boxes[1] is None and boxes[2] is None
    x, y, w, h = boxes[0]
    assert math.isclose(w, 20 * 75 / 275) and math.isclose(h, 30 * 73 / 267)  # Resize(73) -> 73 x 75


def _heatmaps_with_peaks() -> explain.Heatmaps:
    maps = np.zeros((3, 8, 8), dtype=np.float32)
    maps[0, 1, 1] = 1.0  # inside its box
    maps[1, 6, 6] = 1.0  # outside its box
    maps[2, 4, 4] = 1.0  # no box
    return explain.Heatmaps(np.array([0, 2, 3]), np.zeros_like(maps), maps, 8, "gradcam")


def test_localisation_table() -> None:
    heat = _heatmaps_with_peaks()
    boxes = [(0, 0, 2, 2), None, (0, 0, 4, 4), None]  # part positions 0..3; position 1 has no heatmap
    summary, per_image = explain.localisation_table(heat, boxes, ["scratch", "good", "chipping", "good"],
                                               scores=[0.9, 0.1, 0.2, 0.3])
    assert per_image["index"].tolist() == [0, 2]
    assert summary.loc["all", "n"] == 2 and summary.loc["all", "pointing_game"] == 0.5
    assert summary.loc["scratch", "mass_in_box"] == 1.0 and summary.loc["chipping", "mass_in_box"] == 0.0
    assert math.isclose(summary.loc["all", "chance"], (4 / 64 + 16 / 64) / 2)
    assert per_image.set_index("index").loc[2, "defect_score"] == 0.2
    assert summary.loc["all", "constant_maps"] == 0


def test_select_gallery() -> None:
    pred = _predictions()
    assert gal.select_gallery(pred, "good", "highest_good", 2)["image_id"].tolist() == ["a", "f"]
    assert gal.select_gallery(pred, "good", "lowest_defects", 5)["image_id"].tolist() == ["c"]
    assert gal.select_gallery(pred, "good", "missed", 5, threshold=0.5).empty
    assert gal.select_gallery(pred, "good", "false_alarms", 5, threshold=0.5)["image_id"].tolist() == ["a", "f", "d"]
    with pytest.raises(ConfigError):
        gal.select_gallery(pred, "good", "missed", 5)
    with pytest.raises(ConfigError):
        gal.select_gallery(pred, "good", "nope", 5)


# --------------------------------------------------------------------------- embeddings and figures
@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet50", 2048), ("vgg19_bn", 4096),
                                      ("resnet18_att2", 1024), ("resnet18_stn", 512), ("vgg19_bn_stn", 4096)])
def test_penultimate_features_shape(arch: str, dim: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=len(CLASSES))
    part = make_part("test", 5, seed=1, size=36)
    features = ea.penultimate_features(model, arch, part, image_size=32, batch_size=2)
    assert features.shape == (5, dim) and np.isfinite(features).all()
    assert model.training  # mode restored
    head = classifier_head(model, arch)
    assert not head._forward_pre_hooks  # hook removed
    # the features are what the head sees: applying it gives the model's logits
    model.eval()
    from nexperia_utils.data.transforms import eval_transform

    batch = torch.stack([part.dataset(eval_transform(32))[i][0] for i in range(5)])
    with torch.no_grad():
        assert torch.allclose(head(torch.from_numpy(features)), model(batch), atol=1e-4)


def test_embed_2d() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (10, 16)), rng.normal(8, 1, (10, 16))])
    for method in ("pca", "tsne"):
        xy = ea.embed_2d(features, method)
        assert xy.shape == (20, 2) and np.isfinite(xy).all()
        # the two clusters stay apart
        centre_a, centre_b = xy[:10].mean(0), xy[10:].mean(0)
        spread = max(xy[:10].std(0).max(), xy[10:].std(0).max())
        assert np.linalg.norm(centre_a - centre_b) > 2 * spread
    with pytest.raises(ConfigError):
        ea.embed_2d(features, "umap")
    with pytest.raises(DataError):
        ea.embed_2d(features[:2], "pca")


def test_figures_build() -> None:
    pred = _predictions()
    assert isinstance(ea.plot_confusion(ea.confusion_frame(pred["label"], pred["predicted"], CLASSES)), Figure)
    # a model that predicts `good` for everything: every share is 0 or 1, the scale still spans 1-100 %
    everything_good = ea.plot_confusion(ea.confusion_frame(pred["label"], ["good"] * len(pred), CLASSES))
    norm = everything_good.axes[0].collections[0].norm
    assert (norm.vmin, norm.vmax) == (0.01, 1.0)
    fig = ea.plot_score_distributions(pred, CLASSES, {"0.5": 0.5, "TPR = 100 %": 0.99}, marked={"a"})
    assert fig.axes[0].get_xscale() == "logit"
    ranking = ml.suspected_mislabels(pred, "good")
    assert isinstance(ml.plot_precision_recall_at_k(ranking, {"a"}, 2), Figure)
    xy = np.random.default_rng(0).normal(size=(7, 2))
    fig = ea.plot_embeddings({"PCA": xy, "t-SNE": xy}, pred["label"], CLASSES, "good", {0: "true scratch"}, [1])
    assert len(fig.axes) == 2
    heat = _heatmaps_with_peaks()
    rows = pd.DataFrame({"image_id": ["x", "y"], "label": ["good", "scratch"], "defect_score": [0.9, 0.1],
                         "rank": [1, 2]}, index=[0, 3])
    fig = gal.gallery_figure(rows, heat, [(0, 0, 2, 2), None, None, None], "title", flags={"x": "annotated: scratch"})
    assert "annotated: scratch" in fig.axes[0].get_title()


# --------------------------------------------------------------------------- a tiny trained run: Table 5
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from nexperia_utils.training.loop import TrainConfig, train

    parts = make_part("train", 24, 0), make_part("val", 12, 1), make_part("test", 12, 2)
    config = TrainConfig(arch="resnet18", epochs=2, batch_size=8, lr=0.05, image_size=32, top_k=2, device="cpu",
                         eval_batch_size=32, scheduler="cosine")
    run_dir = tmp_path_factory.mktemp("runs") / "resnet18-ce"
    train(config, *parts[:2], CLASSES, "good", "hash0", run_dir, progress=False)
    return run_dir, parts


def test_open_checkpoint_and_cached_predictions(tiny_run) -> None:
    run_dir, (_, _, test) = tiny_run
    analysis = ea.open_checkpoint(run_dir, "best", split_hash="hash0")
    assert analysis.epoch == analysis.top_k_entries[0]["epoch"] and analysis.negative_index == 1
    other = [e["epoch"] for e in analysis.top_k_entries if e["epoch"] != analysis.epoch][0]
    assert ea.open_checkpoint(run_dir, other).epoch == other
    with pytest.raises(ConfigError, match="kept epochs"):
        ea.open_checkpoint(run_dir, 99)
    with pytest.raises(DataError, match="another split"):
        ea.open_checkpoint(run_dir, split_hash="other")
    pred = ea.checkpoint_predictions(analysis, test)
    file = run_dir / "predictions" / f"test-center-epoch{analysis.epoch:03d}.csv"
    assert file.exists() and len(pred) == 12 and set(pred["part"]) == {"test"}
    assert pred["rank"].min() == 1 and np.allclose(pred["defect_score"], 1 - pred["p_good"])
    again = ea.checkpoint_predictions(analysis, test)  # read back from the cache
    assert np.allclose(again["defect_score"], pred["defect_score"])


def test_relabel_results_table5(tiny_run) -> None:
    from nexperia_utils.reporting import summary_table
    from nexperia_utils.training.checkpoints import load_checkpoint

    run_dir, (_, _, test) = tiny_run
    analysis = ea.open_checkpoint(run_dir, "best")
    ranking = ml.suspected_mislabels(ea.checkpoint_predictions(analysis, test), "good")
    top = ranking["image_id"].head(2).tolist()
    corrections = pd.DataFrame({"image_id": top, "corrected_label": ["scratch", "scratch"]})
    corrected, applied = ml.apply_corrections(test.frame, corrections, top)
    assert len(applied) == 2 and (corrected != test.frame["label"].to_numpy()).sum() == 2
    results = ml.relabel_results(analysis, test, corrected, top_k=2)
    assert len(results) == 4 and results["labels"].tolist() == ["original"] * 2 + ["corrected"] * 2
    assert set(results["model"]) == {"ResNet18", "ResNet18 (corrected)"}
    # each row equals metrics.summarize of that checkpoint's probabilities with those labels
    from nexperia_utils.data.dataset import encode_labels
    from nexperia_utils.evaluation.predict import predict_proba

    for row in results.itertuples():
        entry = [e for e in analysis.top_k_entries if e["epoch"] == row.epoch][0]
        model, _ = load_checkpoint(entry["path"])
        probs = predict_proba(model, test, 32)
        labels = test.labels if row.labels == "original" else encode_labels(list(corrected), CLASSES)
        assert math.isclose(row.auc, metrics.summarize(probs, labels, 1)["auc"], abs_tol=1e-6)
    table = summary_table(results, columns=("model",))
    assert list(table.columns) == ["ResNet18", "ResNet18 (corrected)"] and table.shape == (6, 2)
    # no applied correction: both columns are identical
    same = ml.relabel_results(analysis, test, test.frame["label"].to_numpy(), top_k=2)
    numbers = same[list(metrics.METRIC_KEYS)].to_numpy()
    assert np.allclose(numbers[:2], numbers[2:])


def test_compute_gallery_heatmaps_on_the_run(tiny_run) -> None:
    run_dir, (_, _, test) = tiny_run
    analysis = ea.open_checkpoint(run_dir)
    heat = explain.compute_gallery_heatmaps(analysis, test, [3, 1, 3], image_size=32)
    assert heat.indices.tolist() == [1, 3] and heat.maps.shape == (2, 32, 32) and heat.images.shape == (2, 32, 32)
    assert 0.0 <= heat.images.min() and heat.images.max() <= 1.0 and 3 in heat
    with pytest.raises(ConfigError, match="decoded"):
        explain.compute_gallery_heatmaps(analysis, test, [0], image_size=64)
    empty = explain.compute_gallery_heatmaps(analysis, test, [], image_size=32)
    assert empty.maps.shape == (0, 32, 32)


def test_interpretation_object_views_and_heatmaps_computed_once(tiny_run, monkeypatch) -> None:
    run_dir, (_, val, test) = tiny_run
    analysis = ea.open_checkpoint(run_dir, "best", split_hash="hash0")
    interp = ea.Interpretation(analysis, test, ea.checkpoint_predictions(analysis, test))
    pred = interp.predictions
    y = (pred["label"] != "good").to_numpy()
    assert interp.auc == pytest.approx(metrics.roc_auc(y, pred["defect_score"].to_numpy()))
    confusion = interp.confusion()
    assert confusion.to_numpy().sum() == len(test)
    # most_confused: the off-diagonal cells, by a direct count
    pairs = pred.loc[pred["label"] != pred["predicted"], ["label", "predicted"]].value_counts()
    confused = interp.most_confused()
    assert dict(zip(zip(confused["label"], confused["predicted"]), confused["count"])) == pairs.to_dict()
    # top_losses: -log p(filed label), highest first
    losses = interp.top_losses()
    direct = [-math.log(max(row[f"p_{row['label']}"], 1e-12)) for _, row in losses.iterrows()]
    assert np.allclose(losses["loss"], direct) and (np.diff(losses["loss"].to_numpy()) <= 0).all()
    assert len(interp.top_losses(3)) == 3
    # operating points, escapes and false alarms agree with the scores
    points = interp.operating_points()
    assert points is interp.operating_points()  # computed once
    t = interp.thresholds()["TPR >= 99.1 %"]
    assert set(interp.escapes(t)) == set(pred.loc[y & (pred["defect_score"] < t), "image_id"])
    assert set(interp.false_alarms(t)) == set(pred.loc[~y & (pred["defect_score"] >= t), "image_id"])
    assert set(interp.galleries(4)) == {"missed", "lowest_defects", "highest_good"}
    assert isinstance(interp.plot_score_distributions(), Figure) and isinstance(interp.plot_confusion(), Figure)
    # heatmaps: a second call computes only the images not seen yet
    calls = []
    real = ea.compute_gallery_heatmaps
    monkeypatch.setattr(ea, "compute_gallery_heatmaps", lambda a, p, idx, *args, **kw: calls.append(list(idx))
                        or real(a, p, idx, *args, **kw))
    first = interp.heatmaps(test, [3, 1], 32)
    second = interp.heatmaps(test, [1, 5], 32)
    assert calls == [[1, 3], [5]] and second.indices.tolist() == [1, 3, 5]
    assert np.array_equal(second.get(3)[1], first.get(3)[1])
    assert interp.cam_score_agreement(test, second) is None  # heatmaps at the training size
    # other parts and features
    assert set(interp.predictions_of(val)["part"]) == {"val"} and interp.predictions_of(test) is pred
    feats, ids, labels = interp.features([test, val])
    assert feats.shape == (24, 512) and list(ids[:12]) == list(test.frame["image_id"].astype(str))


def test_localisation_by_layer_matches_the_table_of_each_layer(tiny_run) -> None:
    run_dir, (_, _, test) = tiny_run
    analysis = ea.open_checkpoint(run_dir, "best")
    interp = ea.Interpretation(analysis, test, ea.checkpoint_predictions(analysis, test))
    boxes = [(4.0, 6.0, 10.0, 8.0) if i % 3 == 0 else None for i in range(len(test))]
    groups = test.frame["label"].to_numpy()
    table = interp.localisation_by_layer(test, boxes, groups, 32)
    assert table[["layer", "method"]].values.tolist() == [
        [layer, method] for layer in ("layer1", "layer2", "layer3", "layer4") for method in ("gradcam", "layercam")]
    assert table.loc[table["chosen"], "layer"].unique().tolist() == ["layer1"]  # auto: 8x8 at 32 px
    named = interp.localisation_by_layer(test, boxes, groups, 32, layer="layer3")
    assert named.loc[named["chosen"], "layer"].unique().tolist() == ["layer3"]
    assert named.drop(columns="chosen").equals(table.drop(columns="chosen"))
    assert table["feature_map"].tolist()[::2] == ["8x8", "4x4", "2x2", "1x1"]
    assert (table["n"] == 4).all() and np.allclose(table["chance"], 80 / 1024)
    assert (table["pointing_game"] <= table["pointing_bound"]).all()
    assert table["pointing_bound"].tolist()[::2] == [localisation.pointing_bound(boxes, n, 32) for n in (8, 4, 2, 1)]
    assert table["pointing_bound"].iloc[-1] == 0.0  # 1x1: a constant heatmap
    for _, row in table.iterrows():
        heat = interp.heatmaps(test, [i for i, b in enumerate(boxes) if b], 32, row["method"], layer=row["layer"])
        direct, _ = explain.localisation_table(heat, boxes, groups)
        assert row["pointing_game"] == direct.loc["all", "pointing_game"]
        assert row["mass_in_box"] == pytest.approx(direct.loc["all", "mass_in_box"])


def test_relabel_top_k_from_annotations_a_csv_or_nothing(tiny_run, tmp_path) -> None:
    run_dir, (_, _, test) = tiny_run
    analysis = ea.open_checkpoint(run_dir, "best")
    interp = ea.Interpretation(analysis, test, ea.checkpoint_predictions(analysis, test))
    ranking = ml.suspected_mislabels(interp.predictions, "good")
    top = ml.top_test_ids(ranking, 2)
    assert top == ranking[ranking["part"] == "test"].sort_values("rank")["image_id"].head(2).tolist()
    assert ml.relabel_top_k(interp, ranking, 2) is None  # no annotations, no CSV: nothing to relabel
    annotations = pd.DataFrame({"image_id": test.frame["image_id"], "label": test.frame["label"],
                                "true_class": test.frame["label"], "noisy": False})
    annotations.loc[annotations["image_id"] == top[0], "true_class"] = "scratch"
    from_annotations = ml.relabel_top_k(interp, ranking, 2, top_k=1, annotations=annotations)
    assert from_annotations.source == "the synthetic annotations" and from_annotations.top_ids == top
    assert from_annotations.applied["image_id"].tolist() == ([top[0]] if test.frame.set_index("image_id").loc[
        top[0], "label"] != "scratch" else [])
    assert set(from_annotations.results["labels"]) == {"original", "corrected"} and len(from_annotations.results) == 2
    csv = tmp_path / "corrections.csv"
    pd.DataFrame({"image_id": top, "corrected_label": ["scratch", "scratch"]}).to_csv(csv, index=False)
    from_csv = ml.relabel_top_k(interp, ranking, 2, top_k=1, annotations=annotations, corrections_csv=csv)
    assert from_csv.source == f"`{csv}`"  # the CSV wins over the annotations
    filed = test.frame.set_index("image_id").loc[top, "label"]
    assert sorted(from_csv.applied["image_id"]) == sorted(i for i in top if filed[i] != "scratch")


def test_output_tag_names_what_differs_from_the_defaults():
    assert ea.output_tag("resnet18-ce") == "resnet18-ce"
    assert ea.output_tag("resnet18-ce", "best", "center", "gradcam", None) == "resnet18-ce"
    assert ea.output_tag("resnet18-ce", 11) == "resnet18-ce-epoch011"
    assert ea.output_tag("resnet18-ce", "7") == "resnet18-ce-epoch007"
    assert ea.output_tag("resnet18-ce", None) == ea.output_tag("resnet18-ce", "") == "resnet18-ce"  # as open_checkpoint
    assert ea.output_tag("r", 11, "ten", "layercam", "layer1") == "r-epoch011-ten-layercam-layer1"
    # every setting changes the tag, so two analyses of one run never share a file name
    tags = {ea.output_tag("r", c, crop, m, layer) for c in ("best", 10) for crop in ("center", "ten")
            for m in ("gradcam", "layercam") for layer in (None, "layer2")}
    assert len(tags) == 16
    with pytest.raises(ConfigError, match="checkpoint"):
        ea.output_tag("r", "last")
    with pytest.raises(ConfigError, match="run"):
        ea.output_tag("")
