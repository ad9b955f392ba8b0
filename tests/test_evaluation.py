"""Evaluation refuses a part its checkpoint does not fit and never reads back another model's predictions."""
from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from nexperia_utils.evaluation import metrics
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.training.checkpoints import prediction_file
from nexperia_utils.evaluation.predict import evaluate_run
from nexperia_utils.evaluation.operating_points import BootstrapConfig, run_operating_points
from nexperia_utils.training.loop import TrainConfig, train
from nexperia_utils.training.checkpoints import list_checkpoints

from conftest import CLASSES, make_part, tiny_train_config


def _config(**kw) -> TrainConfig:
    return tiny_train_config(**{"epochs": 1, "top_k": 1, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch run trained on the split 'hash0'; its test part comes from the same split."""
    parts = [dataclasses.replace(make_part(name, n, seed), split_hash="hash0")
             for name, n, seed in (("train", 24, 0), ("val", 12, 1), ("test", 12, 2))]
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    train(_config(), parts[0], parts[1], CLASSES, "good", "hash0", run_dir, progress=False)
    return run_dir, parts[2], parts[1]


def test_a_part_with_other_classes_or_class_order_is_refused(run):
    run_dir, test, _ = run
    renamed = test.frame.assign(label=test.frame["label"].replace({"scratch": "crack"}))
    with pytest.raises(DataError, match=r"label\(s\) \['crack'\] it does not know"):
        evaluate_run(run_dir, dataclasses.replace(test, frame=renamed), progress=False)
    # the same names numbered with another class order (e.g. a data set with one more class folder)
    reordered = dataclasses.replace(test, labels=np.array([2 - k for k in test.labels]))
    with pytest.raises(DataError, match="another order"):
        evaluate_run(run_dir, reordered, progress=False)


def test_a_part_decoded_for_another_image_size_is_refused(run):
    run_dir, test, _ = run
    bigger = dataclasses.replace(test, images=np.repeat(np.repeat(test.images, 2, axis=1), 2, axis=2))
    with pytest.raises(ConfigError, match=r"decoded at 72 px .* takes 32 px inputs \(36 px decoded\)"):
        evaluate_run(run_dir, bigger, progress=False)


def test_a_part_of_another_split_is_refused_and_one_outside_any_split_is_scored(run):
    run_dir, test, _ = run
    with pytest.raises(DataError, match="trained on the split hash0.*comes from the split other"):
        evaluate_run(run_dir, dataclasses.replace(test, split_hash="other"), progress=False)
    rows = evaluate_run(run_dir, dataclasses.replace(test, split_hash=""), progress=False, save_predictions=False)
    assert len(rows) == 1


def test_cached_predictions_are_reused_only_for_the_same_weights_and_images(run, caplog):
    run_dir, test, _ = run
    first = evaluate_run(run_dir, test, progress=False)
    epoch = list_checkpoints(run_dir)[0]["epoch"]
    cache = prediction_file(run_dir, "test", "center", epoch)
    frame = pd.read_csv(cache, dtype={"image_id": str, "checkpoint": str})
    assert frame["checkpoint"].nunique() == 1 and len(frame["checkpoint"].iloc[0]) == 16

    # a cache written by other weights (tampered scores, other fingerprint) is not read back
    forged = frame.assign(checkpoint="0" * 16, p_good=1.0, p_chipping=0.0, p_scratch=0.0)
    forged.to_csv(cache, index=False)
    with caplog.at_level(logging.WARNING, logger="nexperia_utils.evaluation.predict"):
        again = evaluate_run(run_dir, test, progress=False)
    assert "written by other weights" in caplog.text
    assert again["auc"].iloc[0] == first["auc"].iloc[0]
    assert pd.read_csv(cache, dtype={"checkpoint": str})["checkpoint"].iloc[0] == frame["checkpoint"].iloc[0]

    # the same weights but a cache listing other images (another part with the same name)
    shuffled = frame.iloc[::-1]
    shuffled.to_csv(cache, index=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nexperia_utils.evaluation.predict"):
        again = evaluate_run(run_dir, test, progress=False)
    assert "lists other images" in caplog.text
    assert again["auc"].iloc[0] == first["auc"].iloc[0]

    # a valid cache is read back: scores edited in place, fingerprint kept, and the edit shows
    good = (frame["label"] == "good").astype(float)
    edited = frame.assign(p_good=good, p_chipping=1.0 - good, p_scratch=0.0)
    edited.to_csv(cache, index=False)
    assert first["auc"].iloc[0] < 1.0
    assert evaluate_run(run_dir, test, progress=False)["auc"].iloc[0] == 1.0


def test_result_neutral_settings_do_not_block_a_finished_run(tmp_path):
    parts = make_part("train", 24, 0), make_part("val", 12, 1)
    train(_config(), *parts, CLASSES, "good", "h", tmp_path / "run", progress=False)
    again = train(_config(eval_batch_size=7, device="auto"), *parts, CLASSES, "good", "h",
                  tmp_path / "run", progress=False)
    assert len(again.history) == 1
    with pytest.raises(ConfigError, match=r"differs in: num_workers"):
        train(_config(num_workers=1), *parts, CLASSES, "good", "h", tmp_path / "run", progress=False)


def test_run_operating_points_use_the_best_checkpoint_and_validation_thresholds(run):
    run_dir, test, val = run
    points = run_operating_points(run_dir, val, test, config=BootstrapConfig(n_boot=50), device="cpu")
    assert list(points["target_tpr"]) == list(metrics.TPR_LEVELS)
    epoch = list_checkpoints(run_dir)[0]["epoch"]
    val_scores = pd.read_csv(prediction_file(run_dir, "val", "center", epoch))
    y_val = (val_scores["label"] != "good").to_numpy()
    for row in points.itertuples():
        assert row.threshold == metrics.threshold_at_tpr(y_val, val_scores["defect_score"].to_numpy(), row.target_tpr)
    assert set(points["epoch"]) == {epoch} and points["test_auc_low"].iloc[0] <= points["test_auc"].iloc[0]


def test_best_checkpoint_predictions_read_the_cache_of_the_best_checkpoint_and_refuse_a_stale_one(run, tmp_path):
    from nexperia_utils.evaluation.predict import best_checkpoint_predictions
    from nexperia_utils.reporting import kept_checkpoint_metrics, plot_best_checkpoint_roc

    run_dir, test, _ = run
    shutil.rmtree(run_dir / "predictions", ignore_errors=True)  # an earlier test doctors the cache on purpose
    kept = kept_checkpoint_metrics(run_dir, test, top_k=1, device="cpu")
    assert len(kept.per_checkpoint) == 1 and "mean and std" in kept._repr_html_()
    found = best_checkpoint_predictions(kept.results, test, run_dir.parent)
    (model, crop), pred = next(iter(found.items()))
    assert crop == "center" and list(pred["image_id"]) == list(test.frame["image_id"].astype(str))
    expected = kept.results.sort_values("val_auc", ascending=False).iloc[0]
    direct = metrics.roc_auc((pred["label"] != "good").to_numpy(), pred["defect_score"].to_numpy())
    assert direct == pytest.approx(expected["auc"])
    fig = plot_best_checkpoint_roc(kept.results, test, run_dir.parent, "good")
    assert model in fig.axes[0].get_legend().get_texts()[0].get_text()
    # predictions of other images (a test part of 10 images, not the 12 scored) are not passed off as its
    other = dataclasses.replace(make_part("test", 10, 2), split_hash="hash0")
    with pytest.raises(DataError, match=r"was not written by .* for the test part"):
        best_checkpoint_predictions(kept.results, other, run_dir.parent)
    with pytest.raises(DataError, match=r"missing columns"):
        best_checkpoint_predictions(kept.results.drop(columns="run"), test, run_dir.parent)
