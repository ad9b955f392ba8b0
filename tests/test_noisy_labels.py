"""Tests of nexperia_utils.analysis.sat_weights on hand-made SAT snapshots, splits and annotations."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_auc_score

from nexperia_utils.analysis import sat_weight_figures as sat_figures
from nexperia_utils.analysis import sat_weights as nl
from nexperia_utils.errors import DataError
from nexperia_utils.data.split import split_hash

CLASSES = ["chipping", "good", "scratch"]

# Training rows in split-file order (val/test rows interleaved, as a real split has them).
# id, label, part, true class
ROWS = [
    ("a0", "good", "train", "good"),
    ("v0", "good", "val", "good"),
    ("a1", "good", "train", "chipping"),   # noisy: corrected by its soft target
    ("a2", "chipping", "train", "chipping"),
    ("t0", "scratch", "test", "scratch"),
    ("a3", "good", "train", "scratch"),    # noisy: soft target still says good
    ("a4", "scratch", "train", "scratch"),
    ("a5", "good", "train", "good"),       # clean but its soft target moved to chipping
]
# Soft targets of the train rows a0..a5 after epochs 1 (before SAT), 2 and 3.
SOFT = {
    1: np.eye(3)[[1, 1, 0, 1, 2, 1]],
    2: np.array([[0.0, 0.95, 0.05], [0.3, 0.7, 0.0], [0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.0, 0.05, 0.95],
                 [0.2, 0.8, 0.0]]),
    3: np.array([[0.0, 0.9, 0.1], [0.6, 0.4, 0.0], [0.85, 0.15, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0],
                 [0.55, 0.45, 0.0]]),
}


def _split() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [r[0] for r in ROWS],
        "path": [f"{r[1]}/{r[0]}.png" for r in ROWS],
        "label": [r[1] for r in ROWS],
        "split": [r[2] for r in ROWS],
    })


def _annotations() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [r[0] for r in ROWS],
        "label": [r[1] for r in ROWS],
        "true_class": [r[3] for r in ROWS],
        "noisy": [r[1] != r[3] for r in ROWS],
        "severity": [0.0, 0.0, 0.2, 0.7, 0.9, 0.1, 0.5, 0.0],
    })


def _write_run(run_dir: Path, split: pd.DataFrame, soft: dict[int, np.ndarray] = SOFT, loss: str = "sat") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"config": {"arch": "resnet34", "loss": loss, "loss_params": {"alpha": 0.9, "sat_es": 1}, "epochs": 3,
                       "sampler": "none"},
            "classes": CLASSES, "negative_class": "good", "split_hash": split_hash(split)}
    (run_dir / "config.json").write_text(json.dumps(meta))
    (run_dir / "sat").mkdir(exist_ok=True)
    for epoch, targets in soft.items():
        np.savez_compressed(run_dir / "sat" / f"epoch_{epoch:03d}.npz",
                            weights=targets.max(axis=1).astype(np.float16),
                            soft_targets=targets.astype(np.float16))
    return run_dir


@pytest.fixture
def run(tmp_path) -> Path:
    return _write_run(tmp_path / "resnet34-sat-study", _split())


# ------------------------------------------------------------------------------------------ reading
def test_sat_epochs_and_snapshot(run, tmp_path):
    assert nl.sat_epochs(run) == [1, 2, 3]
    assert nl.sat_epochs(tmp_path / "nothing") == []
    snap = nl.load_sat_snapshot(run)
    assert snap.epoch == 3 and snap.weights.dtype == np.float32
    assert snap.soft_targets.shape == (6, 3)
    assert nl.load_sat_snapshot(run, 1).weights.tolist() == [1.0] * 6
    with pytest.raises(DataError, match="no SAT snapshot of epoch 7"):
        nl.load_sat_snapshot(run, 7)
    assert nl.sat_start_epoch(run) == 1
    assert nl.sat_label_mass_floor(run) == pytest.approx(0.81)  # two SAT epochs at alpha 0.9


def test_label_mass_floor_of_other_runs(tmp_path):
    ce = _write_run(tmp_path / "ce", _split(), soft={}, loss="ce")
    assert nl.sat_start_epoch(ce) is None and nl.sat_label_mass_floor(ce) is None
    boot = _write_run(tmp_path / "boot", _split())
    meta = json.loads((boot / "config.json").read_text())
    meta["config"]["sampler"] = "bootstrap"
    (boot / "config.json").write_text(json.dumps(meta))
    assert nl.sat_label_mass_floor(boot) is None


def test_load_snapshot_without_files_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="train the run with a SAT loss"):
        nl.load_sat_snapshot(tmp_path)


def test_train_rows_keep_file_order():
    rows = nl.train_rows(_split())
    assert rows["image_id"].tolist() == ["a0", "a1", "a2", "a3", "a4", "a5"]
    with pytest.raises(DataError, match="whole split"):
        nl.train_rows(_split().drop(columns="split"))


def test_load_sat_weights_joins_ids_and_soft_targets(run):
    frame = nl.load_sat_weights(run, _split())
    assert frame["image_id"].tolist() == ["a0", "a1", "a2", "a3", "a4", "a5"]
    assert (frame["epoch"] == 3).all()
    np.testing.assert_allclose(frame["weight"], [0.9, 0.6, 0.85, 0.7, 1.0, 0.55], atol=1e-3)
    np.testing.assert_allclose(frame["label_mass"], [0.9, 0.4, 0.85, 0.7, 1.0, 0.45], atol=1e-3)
    assert frame["target_class"].tolist() == ["good", "chipping", "chipping", "good", "scratch", "chipping"]
    assert frame["relabelled"].tolist() == [False, True, False, False, False, True]
    assert frame["weight_rank"].tolist() == [5.0, 2.0, 4.0, 3.0, 6.0, 1.0]
    assert "noisy" not in frame.columns


def test_load_sat_weights_with_annotations(run):
    frame = nl.load_sat_weights(run, _split(), annotations=_annotations())
    assert frame["noisy"].tolist() == [False, True, False, True, False, False]
    assert frame["corrected"].tolist() == [False, True, False, False, False, False]
    assert frame["true_class"].tolist()[1] == "chipping"
    early = nl.load_sat_weights(run, _split(), epoch=2, annotations=_annotations())
    assert early["target_class"].tolist()[1] == "good" and not early["corrected"].any()


def test_load_sat_weights_rejects_another_split(run):
    other = _split()
    other.loc[1, "split"] = "train"  # v0 becomes a training image: 7 rows, another hash
    with pytest.raises(DataError, match="another split"):
        nl.load_sat_weights(run, other)
    without_paths = other.drop(columns="path")  # no hash check possible: the row count still catches it
    with pytest.raises(DataError, match="has 6 rows"):
        nl.load_sat_weights(run, without_paths)


def test_annotations_must_cover_every_training_image(run):
    partial = _annotations().iloc[:4]
    with pytest.raises(DataError, match="does not describe 3 training image"):
        nl.load_sat_weights(run, _split(), annotations=partial)
    with pytest.raises(DataError, match="columns"):
        nl.load_sat_weights(run, _split(), annotations=_annotations().drop(columns="noisy"))


def test_annotation_flags_read_from_strings(run):
    ann = _annotations().assign(noisy=lambda f: f["noisy"].map({True: "True", False: "False"}))
    frame = nl.load_sat_weights(run, _split(), annotations=ann)
    assert frame["noisy"].tolist() == [False, True, False, True, False, False]


def test_weight_trajectories(run):
    traj = nl.weight_trajectories(run, _split())
    assert list(traj.columns) == [1, 2, 3]
    assert traj.index.tolist() == ["a0", "a1", "a2", "a3", "a4", "a5"]
    np.testing.assert_allclose(traj.loc["a1"], [1.0, 0.7, 0.6], atol=1e-3)
    mass = nl.weight_trajectories(run, _split(), value="label_mass")
    np.testing.assert_allclose(mass.loc["a5"], [1.0, 0.8, 0.45], atol=1e-3)
    with pytest.raises(DataError):
        nl.weight_trajectories(run, _split(), value="loss")


# ------------------------------------------------------------------------------------------ detection
def test_flag_lowest_includes_ties():
    w = np.array([0.5, 0.9, 0.6, 0.6, 1.0])
    assert nl.flag_lowest(w, 1).tolist() == [True, False, False, False, False]
    assert nl.flag_lowest(w, 2).tolist() == [True, False, True, True, False]
    assert nl.flag_lowest(w, 0).sum() == 0
    assert nl.flag_lowest(w, 99).all()


def test_detection_curve_matches_sklearn():
    rng = np.random.default_rng(0)
    w = np.round(rng.uniform(0.3, 1.0, 200), 2)  # rounded: many ties
    y = rng.uniform(size=200) < 0.1 + 0.5 * (w < 0.5)
    curve = nl.detection_curve(w, y)
    precision, recall, thresholds = precision_recall_curve(y, -w)
    ours = curve.set_index("threshold")
    for p, r, t in zip(precision[:-1], recall[:-1], thresholds):
        assert ours.loc[-t, "precision"] == pytest.approx(p)
        assert ours.loc[-t, "recall"] == pytest.approx(r)
    assert curve["flagged"].iloc[-1] == 200 and curve["recall"].iloc[-1] == 1.0
    assert curve["threshold"].is_monotonic_increasing


def test_detection_curve_without_noisy_has_nan_recall():
    curve = nl.detection_curve([0.2, 0.4], [False, False])
    assert curve["recall"].isna().all() and (curve["precision"] == 0).all()


def test_detection_summary_hand_computed():
    frame = pd.DataFrame({
        "epoch": 5,
        "weight": [0.5, 0.6, 0.9, 0.9, 1.0],
        "noisy": [True, False, True, False, False],
        "relabelled": [True, True, False, False, False],
        "corrected": [True, False, False, False, False],
    })
    frame["weight_rank"] = frame["weight"].rank(method="average")
    s = nl.detection_summary(frame)
    assert s["epoch"] == 5 and s["n_train"] == 5 and s["n_noisy"] == 2
    assert s["noisy_pct"] == pytest.approx(40.0)
    assert s["mean_weight_noisy"] == pytest.approx(0.7)
    assert s["mean_weight_clean"] == pytest.approx(2.5 / 3)
    assert s["auc"] == pytest.approx(0.75)  # 4.5 of 6 (noisy, clean) pairs ordered, the tie counts half
    assert s["auc"] == pytest.approx(roc_auc_score(frame["noisy"], -frame["weight"]))
    assert s["precision_at_n_noisy"] == pytest.approx(0.5)
    assert s["recall_at_n_noisy"] == pytest.approx(0.5)
    assert s["recall_at_lowest_pct"] == pytest.approx(0.5)  # lowest 5 % of 5 images: 1 image
    assert s["median_rank_pct_noisy"] == pytest.approx(45.0)  # ranks 1 and 3.5 of 5
    assert (s["noisy_relabelled"], s["noisy_corrected"], s["clean_relabelled"]) == (1, 1, 1)


def test_detection_summary_label_companions_against_a_direct_computation():
    # the noisy labels are all "good"; the defect-labelled images keep weight 1 as under SAT bad 1
    frame = pd.DataFrame({
        "label": ["good", "good", "good", "good", "scratch", "scratch"],
        "weight": [0.3, 0.5, 0.8, 0.9, 1.0, 1.0],
        "noisy": [False, True, False, True, False, False],
    })
    frame["weight_rank"] = frame["weight"].rank(method="average")
    s = nl.detection_summary(frame)
    good = frame["label"] == "good"
    # label only: good scores 0.5, scratch 0: both noisy images beat both scratch images, tie the two clean good
    assert s["auc_label_only"] == pytest.approx((4 + 0.5 * 4) / 8)
    assert s["auc_label_only"] == pytest.approx(roc_auc_score(frame["noisy"], good * 0.5))
    assert s["auc_within_noisy_labels"] == pytest.approx(
        roc_auc_score(frame["noisy"][good], -frame["weight"][good]))
    assert s["auc_within_noisy_labels"] == pytest.approx(0.25)  # of 4 (noisy, clean good) pairs only 0.5 < 0.8
    assert s["auc"] == pytest.approx(5 / 8)  # the scratch images at weight 1 add 4 easy pairs


def test_detection_summary_without_label_has_no_companions():
    frame = pd.DataFrame({"weight": [0.1, 0.9], "noisy": [True, False], "weight_rank": [1.0, 2.0]})
    assert "auc_label_only" not in nl.detection_summary(frame)


def test_detection_summary_without_noisy_labels(run):
    ann = _annotations().assign(noisy=False, true_class=lambda f: f["label"])
    s = nl.detection_summary(nl.load_sat_weights(run, _split(), annotations=ann))
    assert s["n_noisy"] == 0
    assert np.isnan(s["auc"]) and np.isnan(s["recall_at_n_noisy"]) and np.isnan(s["median_rank_pct_noisy"])


def test_detection_table_and_noisy_ranks(run):
    frame = nl.load_sat_weights(run, _split(), annotations=_annotations())
    table = nl.detection_table({"SAT": nl.detection_summary(frame)})
    assert table.index.tolist() == ["SAT"] and table.loc["SAT", "n_noisy"] == 2
    ranks = nl.noisy_ranks(frame)
    assert ranks["image_id"].tolist() == ["a1", "a3"]
    assert ranks["rank_pct"].tolist() == pytest.approx([2 / 6 * 100, 3 / 6 * 100])
    with pytest.raises(DataError):
        nl.detection_table({})


# ------------------------------------------------------------------------------------------ figures
def _big_run(tmp_path: Path, n: int = 400, n_noisy: int = 12) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A realistic-looking run: noisy images' weights fall after SAT starts, clean ones stay high."""
    rng = np.random.default_rng(1)
    labels = np.where(rng.uniform(size=n) < 0.8, "good", "chipping")
    noisy = np.zeros(n, bool)
    noisy[rng.choice(np.flatnonzero(labels == "good"), n_noisy, replace=False)] = True
    split = pd.DataFrame({"image_id": [f"i{i:04d}" for i in range(n)], "path": [f"{l}/i{i:04d}.png" for i, l in enumerate(labels)],
                          "label": labels, "split": "train"})
    ann = pd.DataFrame({"image_id": split["image_id"], "label": labels,
                        "true_class": np.where(noisy, "scratch", labels), "noisy": noisy,
                        "severity": np.where(noisy, rng.uniform(0, 1, n), 0.0)})
    label_idx = np.array([CLASSES.index(l) for l in labels])
    soft = {}
    t = np.eye(3)[label_idx]
    for epoch in range(1, 7):
        if epoch > 2:
            p = np.full((n, 3), 0.05)
            p[np.arange(n), label_idx] = rng.uniform(0.6, 0.95, n)
            p[noisy] = [0.05, 0.25, 0.7]
            p /= p.sum(axis=1, keepdims=True)
            t = 0.7 * t + 0.3 * p
        soft[epoch] = t.copy()
    return _write_run(tmp_path / "big", split, soft), split, ann


def test_plot_mislabel_detection(tmp_path):
    run_dir, split, ann = _big_run(tmp_path)
    frame = nl.load_sat_weights(run_dir, split, annotations=ann)
    summary = nl.detection_summary(frame)
    assert summary["auc"] > 0.9 and summary["mean_weight_noisy"] < summary["mean_weight_clean"]
    fig = sat_figures.plot_mislabel_detection(frame, nl.weight_trajectories(run_dir, split), sat_es=2, title="test")
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    out = tmp_path / "detect.png"
    fig.savefig(out)
    assert out.stat().st_size > 20_000


def test_plot_mislabel_detection_without_noisy_labels(run, tmp_path):
    ann = _annotations().assign(noisy=False, true_class=lambda f: f["label"])
    frame = nl.load_sat_weights(run, _split(), annotations=ann)
    fig = sat_figures.plot_mislabel_detection(frame, nl.weight_trajectories(run, _split()))
    fig.savefig(tmp_path / "none.png")
    with pytest.raises(DataError, match="annotations"):
        sat_figures.plot_mislabel_detection(nl.load_sat_weights(run, _split()))


def test_lowest_weight_gallery(run, tmp_path):
    data_root = tmp_path / "data"
    for image_id, label, _, _ in ROWS:
        (data_root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 42), 120, np.uint8)).save(data_root / label / f"{image_id}.png")
    frame = nl.load_sat_weights(run, _split(), annotations=_annotations())
    fig = sat_figures.lowest_weight_gallery(frame, data_root, n=4, columns=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4
    assert titles[0].startswith("good -> chipping, w=0.55")          # a5: lowest weight
    assert "NOISY, true class chipping" in titles[1]                # a1: second lowest, noisy
    with pytest.raises(DataError, match="paths"):
        sat_figures.lowest_weight_gallery(frame.drop(columns="path"), data_root)
