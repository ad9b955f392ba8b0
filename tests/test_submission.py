"""Unlabelled test prediction and Kaggle submission writing (nexperia_utils.kaggle.submission), and the
synthetic Kaggle exports read back as competition folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from nexperia_utils.kaggle import layouts as kaggle
from nexperia_utils.kaggle import submission_file

from nexperia_utils.kaggle import submission

from nexperia_utils.data import synthetic
from nexperia_utils.config import get_profile
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.evaluation.predict import predict_proba
from nexperia_utils.models.builders import build_model
from nexperia_utils.training.loop import TrainConfig
from nexperia_utils.training.checkpoints import load_checkpoint

STAGE1 = ["bad_1", "good_0"]  # sorted, as the training code stores them: index 1 is *good*


def _layout(root: Path, stage: int = 1, n_test: int = 7) -> Path:
    """A small competition folder with structured grey images (43 x 44 px)."""
    rng = np.random.default_rng(stage)
    neg, pos = kaggle.CLASS_NAMES[stage]
    ext = ".jpg" if stage == 1 else ".bmp"
    folders = {neg: kaggle.TRAIN_FOLDERS[stage] / neg, pos: kaggle.TRAIN_FOLDERS[stage] / pos}
    for name, folder in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (43, 44), dtype=np.uint8)).save(root / folder / f"{name}{i}{ext}")
    test = root / kaggle.TEST_FOLDERS[stage]
    test.mkdir(parents=True)
    for i in range(n_test):
        Image.fromarray(rng.integers(0, 255, (43, 44), dtype=np.uint8)).save(test / f"t{i:02d}{ext}")
    return root


def _checkpoint(run_dir: Path, epoch: int, val_auc: float, classes=STAGE1, negative="good_0", seed=0) -> Path:
    """Save an untrained (randomly initialised) resnet18 checkpoint like training.train does."""
    torch.manual_seed(seed)
    model = build_model("resnet18", len(classes), weights="none")
    config = TrainConfig(arch="resnet18", image_size=32, epochs=2, device="cpu")
    path = run_dir / "checkpoints" / f"epoch_{epoch:03d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "epoch": epoch - 1, "val_auc": val_auc, "config": config.to_dict(),
                "classes": list(classes), "negative_class": negative, "split_hash": "h",
                "display_name": "ResNet18"}, path)
    index = run_dir / "checkpoints" / "index.csv"
    rows = pd.read_csv(index).to_dict("records") if index.exists() else []
    rows.append({"epoch": epoch, "val_auc": val_auc, "file": path.name})
    pd.DataFrame(rows).sort_values("val_auc", ascending=False).to_csv(index, index=False)
    return path


@pytest.fixture()
def stage1(tmp_path) -> kaggle.KaggleData:
    return kaggle.read_kaggle_layout(_layout(tmp_path / "comp"))


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    run = tmp_path / "runs" / "resnet18-ce-kaggle1"
    _checkpoint(run, epoch=2, val_auc=0.9, seed=1)
    _checkpoint(run, epoch=1, val_auc=0.7, seed=2)
    return run


# ---------------------------------------------------------------- options and class sets


@pytest.mark.parametrize(("value", "expected"), [("best", 1), ("top-k", None), ("TOP-K", None), (3, 3), ("2", 2)])
def test_parse_ensemble(value, expected):
    assert submission.parse_ensemble(value) == expected


@pytest.mark.parametrize("value", [0, -1, "mean", True, 1.5])
def test_parse_ensemble_rejects(value):
    with pytest.raises(ConfigError, match="ensemble"):
        submission.parse_ensemble(value)


def test_check_class_set_accepts_the_stage_classes_in_any_order():
    assert submission.check_class_set({"classes": STAGE1, "negative_class": "good_0"}, 1) == "good_0"
    assert submission.check_class_set({"classes": ["good_all", "defect"], "negative_class": "good_all"}, 2) == "good_all"


def test_check_class_set_rejects_other_class_sets():
    ten = {"classes": synthetic.CLASSES, "negative_class": "good"}
    with pytest.raises(DataError) as info:
        submission.check_class_set(ten, 1, source="run/epoch_002.pt")
    msg = str(info.value)
    assert "run/epoch_002.pt" in msg and "['good_0', 'bad_1']" in msg and "allow_other_classes" in msg
    assert submission.check_class_set(ten, 1, allow_other_classes=True) == "good"
    with pytest.raises(DataError, match="stage-2"):  # a stage-1 model for a stage-2 submission
        submission.check_class_set({"classes": STAGE1, "negative_class": "good_0"}, 2)
    with pytest.raises(DataError, match="negative class 'bad_1'"):
        submission.check_class_set({"classes": STAGE1, "negative_class": "bad_1"}, 1)
    with pytest.raises(DataError, match="damaged"):
        submission.check_class_set({"classes": STAGE1, "negative_class": "good"}, 1, allow_other_classes=True)


def test_defect_probability_looks_the_negative_class_up_by_name():
    probs = np.array([[0.9, 0.1], [0.25, 0.75], [0.0, 1.0]])
    # classes sorted as an image-folder loader sorts them: bad_1 first, so good_0 is column 1
    np.testing.assert_allclose(submission.defect_probability(probs, STAGE1, "good_0"), [0.9, 0.25, 0.0])
    np.testing.assert_allclose(submission.defect_probability(probs, ["good_all", "defect"], "good_all"), [0.1, 0.75, 1.0])
    assert submission.defect_probability(np.array([[1.0 + 1e-12, 0.0]]), ["good", "x"], "good")[0] == 0.0  # clipped
    with pytest.raises(DataError, match="do not match"):
        submission.defect_probability(probs, ["a", "b", "c"], "a")
    with pytest.raises(DataError, match="not among"):
        submission.defect_probability(probs, STAGE1, "good")


# ---------------------------------------------------------------- prediction


def test_unlabelled_part(stage1):
    part = submission.unlabelled_part(stage1, image_size=32, progress=False)
    assert part.name == submission.TEST_PART_NAME
    assert (part.labels == -1).all() and len(part) == 7
    assert part.images.shape == (7, 36, 37) and part.images.dtype == np.uint8  # resize 32 * 255 / 224 = 36
    assert part.frame["image_id"].tolist() == kaggle.test_ids(stage1)
    image, label, index = part.dataset(lambda x: x)[3]
    assert label == -1 and index == 3


def test_predict_test_ensembles_checkpoints(stage1, run_dir, tmp_path):
    top = submission.predict_test(run_dir, stage1, ensemble="top-k", device="cpu", cache_dir=tmp_path / "cache",
                                  progress=False)
    assert top.frame["image_id"].tolist() == kaggle.test_ids(stage1)
    assert list(top.frame.columns) == ["image_id", "path", "defect_score", "score_epoch002", "score_epoch001"]
    assert top.checkpoints["epoch"].tolist() == [2, 1]
    # each column is 1 - p(good_0) of that checkpoint, computed by hand
    part = submission.unlabelled_part(stage1, 32, progress=False)
    for epoch in (1, 2):
        model, meta = load_checkpoint(run_dir / "checkpoints" / f"epoch_{epoch:03d}.pt")
        probs = predict_proba(model, part, 32, "center", device="cpu")
        np.testing.assert_allclose(top.frame[f"score_epoch{epoch:03d}"], 1.0 - probs[:, 1], atol=1e-6)
    np.testing.assert_allclose(top.scores, top.frame[["score_epoch002", "score_epoch001"]].mean(axis=1))
    assert ((top.scores >= 0) & (top.scores <= 1)).all()

    best = submission.predict_test(run_dir, stage1, ensemble="best", device="cpu", progress=False)
    assert best.checkpoints["epoch"].tolist() == [2]  # highest validation AUC
    np.testing.assert_allclose(best.scores, top.frame["score_epoch002"])
    assert "best checkpoint" in best.describe() and "mean of 2" in top.describe()

    ten = submission.predict_test(run_dir, stage1, crop="ten", ensemble=1, device="cpu", progress=False)
    assert not np.allclose(ten.scores, best.scores)  # another crop style, other numbers


def test_predict_test_refuses_a_model_of_other_classes(stage1, tmp_path):
    run = tmp_path / "runs" / "resnet18-ce"
    _checkpoint(run, 1, 0.8, classes=synthetic.CLASSES, negative="good")
    with pytest.raises(DataError, match="trained on the classes"):
        submission.predict_test(run, stage1, device="cpu", progress=False)
    allowed = submission.predict_test(run, stage1, device="cpu", progress=False, allow_other_classes=True)
    assert len(allowed.frame) == 7
    with pytest.raises(DataError, match="no checkpoints"):
        submission.predict_test(tmp_path / "runs" / "empty", stage1, progress=False)
    with pytest.raises(ConfigError, match="crop"):
        submission.predict_test(run, stage1, crop="six", progress=False)


# ---------------------------------------------------------------- writing


def test_write_kaggle_submission(stage1, run_dir, tmp_path):
    prediction = submission.predict_test(run_dir, stage1, device="cpu", progress=False)
    path = submission.write_kaggle_submission(tmp_path / "out" / "submission.csv", prediction, stage1)
    written = pd.read_csv(path, dtype={"id": str})
    assert list(written.columns) == ["id", "label"]
    assert written["id"].tolist() == kaggle.test_ids(stage1)
    np.testing.assert_allclose(written["label"], prediction.scores)
    submission_file.validate_submission(written, kaggle.test_ids(stage1), 1)


@pytest.mark.parametrize("damage", ["missing", "duplicate", "nan", "range"])
def test_write_kaggle_submission_writes_nothing_when_invalid(stage1, run_dir, tmp_path, damage):
    prediction = submission.predict_test(run_dir, stage1, device="cpu", progress=False)
    frame = prediction.frame
    if damage == "missing":
        frame = frame.iloc[1:]
    elif damage == "duplicate":
        frame = pd.concat([frame, frame.iloc[[0]]])
    elif damage == "nan":
        frame.loc[2, "defect_score"] = np.nan
    else:
        frame.loc[2, "defect_score"] = 1.5
    prediction.frame = frame.reset_index(drop=True)
    target = tmp_path / "out" / "submission.csv"
    with pytest.raises(DataError, match="Invalid stage-1 submission"):
        submission.write_kaggle_submission(target, prediction, stage1)
    assert not target.exists()


def test_write_kaggle_submission_refuses_another_stage(stage1, run_dir, tmp_path):
    prediction = submission.predict_test(run_dir, stage1, device="cpu", progress=False)
    stage2 = kaggle.read_kaggle_layout(_layout(tmp_path / "comp2", stage=2))
    with pytest.raises(DataError, match="stage 1 but the data is stage 2"):
        submission.write_kaggle_submission(tmp_path / "s.csv", prediction, stage2)
    assert not (tmp_path / "s.csv").exists()


def test_key_labels_and_score_distribution(tmp_path):
    key = tmp_path / "key.csv"
    pd.DataFrame({"id": ["b", "a", "c"], "label": [1, 0, 1], "true_class": ["scratch", "good", "chipping"]}).to_csv(key, index=False)
    assert submission.key_labels(key, ["a", "b", "c"]).tolist() == [0, 1, 1]
    with pytest.raises(DataError, match="another export"):
        submission.key_labels(key, ["a", "z"])
    fig = submission.plot_score_distribution(np.array([0.1, 0.8, 0.9]), np.array([0, 1, 1]), title="t")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["good (n=1)", "defect (n=2)"]
    fig = submission.plot_score_distribution(np.array([0.1, 0.8]))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["test images (n=2)"]


# ---------------------------------------------------------------- synthetic exports as competition folders


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    synthetic.generate_dataset(root, synthetic.SyntheticConfig(scale=0.001, seed=0), progress=False)
    return root


@pytest.mark.parametrize("stage", [1, 2])
def test_synthetic_export_reads_back_as_a_competition_folder(tiny_source, tmp_path, stage):
    from nexperia_utils.data.folders import load_dataset

    out = synthetic.export_kaggle(tiny_source, tmp_path / f"kaggle{stage}", stage=stage)
    assert kaggle.detect_stage(out) == stage
    data = kaggle.read_kaggle_layout(out)
    neg, pos = kaggle.CLASS_NAMES[stage]
    annotations = synthetic.read_annotations(tiny_source)
    key = pd.read_csv(submission.answer_key_for(out), dtype={"id": str})
    assert sorted(kaggle.test_ids(data)) == sorted(key["id"])  # the hidden key covers exactly the test folder
    assert not (set(data.train["image_id"]) & set(key["id"]))
    assert len(data.train) + len(data.test) == len(annotations)
    filed = annotations.set_index("image_id")["label"]
    train = data.train.set_index("image_id")["label"]
    assert ((train == neg) == (filed.loc[train.index] == "good")).all()  # filed (noisy) labels, by name
    assert set(train) == {neg, pos}
    if stage == 2:
        assert data.boxes is not None and set(data.boxes["image_id"]) <= set(train.index[train == pos])
    frame, negative = load_dataset(out)  # the experiment loader detects the layout too
    assert negative == neg and len(frame) == len(data.train)
    # a submission of the key's own labels scores AUC 1
    perfect = submission_file.write_submission(tmp_path / "perfect.csv", key["id"], key["label"].astype(float), stage,
                                      expected_ids=kaggle.test_ids(data))
    assert submission_file.score_submission(perfect, submission.answer_key_for(out)) == 1.0


def test_prepare_kaggle_root_exports_once_and_replaces_a_stale_export(tiny_source, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("NEXPERIA_WORKDIR", str(tmp_path))
    profile = get_profile("smoke", data_dir=str(tmp_path / "data" / "synthetic-tiny"))
    shutil.copytree(tiny_source, profile.data_root())
    root = submission.prepare_kaggle_root(profile, progress=False)
    assert root == tmp_path / "data" / "kaggle-stage1-synthetic-tiny" == submission.default_kaggle_root(profile)
    assert kaggle.detect_stage(root) == 1 and submission.answer_key_for(root) is not None
    assert submission.export_is_current(profile.data_root(), root, 1)
    stamp = submission.answer_key_for(root).stat().st_mtime_ns
    assert submission.prepare_kaggle_root(profile, progress=False) == root
    assert submission.answer_key_for(root).stat().st_mtime_ns == stamp  # reused, not re-exported

    next((root / "test" / "all_tests").iterdir()).unlink()  # damaged export: re-exported
    assert not submission.export_is_current(profile.data_root(), root, 1)
    submission.prepare_kaggle_root(profile, progress=False)
    assert submission.export_is_current(profile.data_root(), root, 1)

    stage2 = submission.prepare_kaggle_root(profile, stage=2, progress=False)
    assert stage2.name == "kaggle-stage2-synthetic-tiny" and kaggle.detect_stage(stage2) == 2

    given = tmp_path / "given"
    given.mkdir()
    assert submission.prepare_kaggle_root(profile, given) == given
    with pytest.raises(DataError, match="does not exist"):
        submission.prepare_kaggle_root(profile, tmp_path / "missing")


def test_with_synthetic_scale(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXPERIA_WORKDIR", str(tmp_path))
    smoke = get_profile("smoke")
    assert submission.with_synthetic_scale(smoke, None) is smoke
    assert submission.with_synthetic_scale(smoke, smoke.data_scale) is smoke
    bigger = submission.with_synthetic_scale(smoke, 0.02)
    assert bigger.name == "smoke" and bigger.data_scale == 0.02 and bigger.data_dir == "data/synthetic-smoke-scale0.02"
    assert submission.default_kaggle_root(bigger) == tmp_path / "data" / "kaggle-stage1-synthetic-smoke-scale0.02"
    assert submission.default_kaggle_root(smoke, 2) == tmp_path / "data" / "kaggle-stage2-synthetic-smoke"
    with pytest.raises(ConfigError, match="data_scale"):
        submission.with_synthetic_scale(smoke, 2.0)
