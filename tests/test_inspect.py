"""The line inspector: thresholds from validation, decisions, bad files, the command line."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nexperia_utils.line import inspect as inspector
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.training.checkpoints import prediction_file
from nexperia_utils.evaluation.predict import evaluate_run
from nexperia_utils.training.loop import TrainConfig, train

from conftest import CLASSES, make_part


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run and its operating point (TPR >= 100 % on validation, 20 % review band)."""
    work = tmp_path_factory.mktemp("inspect")
    train_part, val, test = make_part("train", 36, 0), make_part("val", 24, 1), make_part("test", 24, 2)
    config = TrainConfig(arch="resnet18", epochs=2, batch_size=8, lr=0.05, image_size=32, top_k=1, device="cpu",
                         eval_batch_size=32, scheduler="cosine")
    run_dir = work / "run"
    train(config, train_part, val, CLASSES, "good", "h", run_dir, progress=False)
    point = inspector.choose_operating_point(run_dir, val, test, target_tpr=1.0, review_band=0.2, device="cpu",
                                             n_boot=100)
    folder = work / "images"
    (folder / "line_a").mkdir(parents=True)
    for i, image in enumerate(test.images):
        Image.fromarray(image).save(folder / ("line_a" if i % 2 else "") / f"{test.frame['image_id'][i]}.png")
    return run_dir, point, folder, val, test


def test_threshold_is_chosen_on_validation_and_saved(trained):
    run_dir, point, _, val, _ = trained
    epoch = int(point.checkpoint.split("_")[1].split(".")[0])
    scores = pd.read_csv(prediction_file(run_dir, "val", "center", epoch))
    defects = scores["label"] != "good"
    assert point.threshold == scores.loc[defects, "defect_score"].min()  # TPR = 100 %: the lowest defect score
    assert point.val_tpr == 1.0 and point.n_val_defects == int(defects.sum())
    in_band = (scores["defect_score"] >= point.review_threshold) & (scores["defect_score"] < point.threshold)
    assert point.val_review_share == pytest.approx(in_band.mean())
    assert 0 < point.val_review_share <= 0.2 + 1 / len(scores)
    assert point.test_fpr_interval[0] <= point.test_fpr <= point.test_fpr_interval[1]
    assert inspector.load_operating_point(run_dir) == point
    saved = json.loads((run_dir / inspector.OPERATING_POINT_FILE).read_text())
    assert saved["target_tpr"] == 1.0 and saved["fingerprint"] == point.fingerprint


def test_decisions_follow_the_saved_threshold_and_match_the_evaluation_scores(trained):
    run_dir, point, folder, _, test = trained
    decisions, bad, speed = inspector.score_folder(run_dir, point, folder, device="cpu", progress=False)
    assert bad == [] and speed > 0 and len(decisions) == len(test)
    expected = np.where(decisions["defect_score"] >= point.threshold, "reject",
                        np.where(decisions["defect_score"] >= point.review_threshold, "review", "pass"))
    assert list(decisions["decision"]) == list(expected)
    # the same images through the evaluation path give the same scores
    epoch = int(point.checkpoint.split("_")[1].split(".")[0])
    evaluate_run(run_dir, test, progress=False, device="cpu")
    reference = pd.read_csv(prediction_file(run_dir, "test", "center", epoch)).set_index("image_id")["defect_score"]
    ids = decisions["image"].str.replace("line_a/", "").str.replace(".png", "")
    assert np.allclose(decisions["defect_score"].to_numpy(), reference.loc[ids].to_numpy(), atol=1e-6)


def test_truncated_image_is_named_and_nothing_written_unless_skip_bad(trained, tmp_path, capsys):
    run_dir, _, folder, _, _ = trained
    images = tmp_path / "batch"
    images.mkdir()
    for file in sorted(folder.rglob("*.png"))[:6]:
        (images / file.name).write_bytes(file.read_bytes())
    broken = images / "zz_truncated.png"
    broken.write_bytes((images / sorted(p.name for p in images.iterdir())[0]).read_bytes()[:200])
    out = tmp_path / "decisions.csv"
    args = ["--run", str(run_dir), "--images", str(images), "--out", str(out), "--target-tpr", "1.0",
            "--review-band", "0.2", "--device", "cpu", "--no-progress", "--ood", "none"]
    assert inspector.main(args) == 2
    assert "zz_truncated.png: truncated" in capsys.readouterr().err
    assert not out.exists()

    assert inspector.main(args + ["--skip-bad"]) == 3
    captured = capsys.readouterr()
    assert "zz_truncated.png" in captured.err and "images/s" in captured.out and "underkill" in captured.out
    decisions = pd.read_csv(out)
    assert list(decisions.columns) == ["image", "defect_score", "decision"]
    assert len(decisions) == 6 and "zz_truncated.png" not in set(decisions["image"])
    assert set(decisions["decision"]) <= set(inspector.DECISIONS)


def test_bad_arguments_and_stale_operating_point(trained, tmp_path):
    run_dir, point, folder, _, _ = trained
    with pytest.raises(DataError, match="holds no PNG"):
        inspector.find_images(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        inspector.find_images(tmp_path / "nothing")
    assert inspector.main(["--run", str(run_dir), "--images", str(folder), "--out", str(tmp_path / "x.csv"),
                           "--target-tpr", "1.5"]) == 2
    stale = dataclasses.replace(point, fingerprint="0" * 16)
    with pytest.raises(ConfigError, match="not the checkpoint"):
        inspector.score_folder(run_dir, stale, folder, device="cpu", progress=False)
