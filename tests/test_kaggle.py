"""Tests for nexperia_utils.kaggle.layouts and .submission_file: layouts of both competitions, submissions, scoring."""
from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nexperia_utils.kaggle import layouts as kaggle
from nexperia_utils.kaggle import submission_file
from nexperia_utils.errors import ConfigError, DataError

STAGE1_TEST_IDS = ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210", "00000000000000000000000000000001"]


def _image(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[path.suffix.lower()]
    Image.new("L", (16, 16), color=value).save(path, format=fmt)


def make_stage1(root: Path) -> Path:
    for name in ("g1", "g2", "g3"):
        _image(root / "train" / "good_0" / f"{name}.jpg")
    for name in ("b1", "b2"):
        _image(root / "train" / "bad_1" / f"{name}.jpg", value=20)
    for i, name in enumerate(STAGE1_TEST_IDS):
        _image(root / "test" / "all_tests" / f"{name}{['.jpg', '.png', '.jpeg'][i]}")
    return root


def make_stage2(root: Path, sample: bool = True, boxes: bool = True) -> Path:
    base = root / "train" / "train_contest"
    for name in ("good_a", "good_b"):
        _image(base / "good_all" / f"{name}.bmp")
    for name in ("def_a", "def_b"):
        _image(base / "defect" / f"{name}.bmp", value=10)
    for name in ("t3", "t1", "t2"):
        _image(root / "test" / "test_contest" / "test" / f"{name}.bmp")
    if sample:
        pd.DataFrame({"id": ["t2", "t3", "t1"], "defect_score": [0.5, 0.5, 0.5]}).to_csv(
            root / "submission_sample.csv", index=False
        )
    if boxes:
        pd.DataFrame({"id": ["def_a", "def_b"], "x_1": [2, 5], "y_1": [3, 1], "x_2": [10, 6], "y_2": [7, 15]}).to_csv(
            root / "defect_area.csv", index=False
        )
    return root


# ---------------------------------------------------------------- layouts


def test_detect_stage(tmp_path: Path) -> None:
    assert kaggle.detect_stage(make_stage1(tmp_path / "s1")) == 1
    assert kaggle.detect_stage(make_stage2(tmp_path / "s2")) == 2
    (tmp_path / "other" / "train" / "good").mkdir(parents=True)
    assert kaggle.detect_stage(tmp_path / "other") is None
    assert kaggle.detect_stage(tmp_path / "does-not-exist") is None
    # only one of the two class folders is not enough
    (tmp_path / "half" / "train" / "good_0").mkdir(parents=True)
    assert kaggle.detect_stage(tmp_path / "half") is None


def test_detect_stage_ambiguous(tmp_path: Path) -> None:
    make_stage1(tmp_path)
    make_stage2(tmp_path)
    with pytest.raises(DataError, match="both"):
        kaggle.detect_stage(tmp_path)
    assert kaggle.read_kaggle_layout(tmp_path, stage=2).stage == 2


def test_read_stage1(tmp_path: Path) -> None:
    root = make_stage1(tmp_path)
    data = kaggle.read_kaggle_layout(root)
    assert data.stage == 1 and data.root == root
    assert data.negative_class == "good_0" and data.positive_class == "bad_1"
    assert data.competition == "semi-conductor-image-classification-first"
    assert list(data.train.columns) == ["image_id", "path", "label"]
    labels = dict(zip(data.train["image_id"], data.train["label"]))
    assert labels == {"g1": "good_0", "g2": "good_0", "g3": "good_0", "b1": "bad_1", "b2": "bad_1"}
    # paths are POSIX, relative to root, and point at real files
    assert set(data.train.loc[data.train["label"] == "bad_1", "path"]) == {"train/bad_1/b1.jpg", "train/bad_1/b2.jpg"}
    for rel in data.train["path"]:
        assert (root / rel).is_file() and "\\" not in rel
    assert list(data.test.columns) == ["image_id", "path"]
    assert sorted(kaggle.test_ids(data)) == sorted(STAGE1_TEST_IDS)
    assert "test/all_tests/fedcba9876543210fedcba9876543210.png" in set(data.test["path"])
    assert data.boxes is None


def test_read_stage2(tmp_path: Path) -> None:
    root = make_stage2(tmp_path)
    data = kaggle.read_kaggle_layout(root)
    assert data.stage == 2 and data.negative_class == "good_all" and data.positive_class == "defect"
    labels = dict(zip(data.train["image_id"], data.train["label"]))
    assert labels == {"good_a": "good_all", "good_b": "good_all", "def_a": "defect", "def_b": "defect"}
    assert "train/train_contest/defect/def_a.bmp" in set(data.train["path"])
    # test frame follows submission_sample.csv's order
    assert kaggle.test_ids(data) == ["t2", "t3", "t1"]
    assert list(data.boxes.columns) == ["image_id", "x", "y", "w", "h"]
    box = data.boxes.set_index("image_id")
    assert box.loc["def_a"].tolist() == [2, 3, 8, 4]
    assert box.loc["def_b"].tolist() == [5, 1, 1, 14]


def test_read_stage2_without_optional_files(tmp_path: Path) -> None:
    data = kaggle.read_kaggle_layout(make_stage2(tmp_path, sample=False, boxes=False), stage=2)
    assert data.boxes is None
    assert sorted(kaggle.test_ids(data)) == ["t1", "t2", "t3"]


def test_read_defect_area_rejects_inverted_boxes(tmp_path: Path) -> None:
    csv = tmp_path / "defect_area.csv"
    pd.DataFrame({"id": ["a", "b"], "x_1": [1, 9], "y_1": [1, 1], "x_2": [4, 3], "y_2": [5, 5]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"defect_area\.csv.*x_2 < x_1.*line\(s\) 3"):
        kaggle.read_defect_area(csv)
    pd.DataFrame({"id": ["a"], "x_1": [1], "y_1": [1], "x_2": [4]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="y_2"):
        kaggle.read_defect_area(csv)


def test_sample_submission_must_match_test_folder(tmp_path: Path) -> None:
    root = make_stage2(tmp_path)
    pd.DataFrame({"id": ["t1", "t2", "zz"], "defect_score": [0.5] * 3}).to_csv(root / "submission_sample.csv", index=False)
    with pytest.raises(DataError) as info:
        kaggle.read_kaggle_layout(root)
    msg = str(info.value)
    assert "submission_sample.csv" in msg and "'zz'" in msg and "'t3'" in msg


def test_layout_not_recognised(tmp_path: Path) -> None:
    (tmp_path / "train" / "cats").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        kaggle.read_kaggle_layout(tmp_path)
    msg = str(info.value)
    for expected in ("train/good_0/", "train/bad_1/", "train/train_contest/good_all/", "test/test_contest/test/", "cats/"):
        assert expected in msg
    with pytest.raises(DataError, match="does not exist"):
        kaggle.read_kaggle_layout(tmp_path / "missing")


def test_root_pointing_inside_train_gets_a_hint(tmp_path: Path) -> None:
    make_stage1(tmp_path)
    with pytest.raises(DataError, match="points inside train/"):
        kaggle.read_kaggle_layout(tmp_path / "train")


def test_missing_test_folder(tmp_path: Path) -> None:
    root = make_stage1(tmp_path)
    for f in (root / "test" / "all_tests").iterdir():
        f.unlink()
    (root / "test" / "all_tests").rmdir()
    with pytest.raises(DataError, match=r"test folder .*all_tests is missing"):
        kaggle.read_kaggle_layout(root)


def test_empty_class_folder(tmp_path: Path) -> None:
    root = make_stage2(tmp_path)
    for f in (root / "train" / "train_contest" / "defect").iterdir():
        f.unlink()
    (root / "train" / "train_contest" / "defect" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"defect.*contains no images"):
        kaggle.read_kaggle_layout(root)


def test_explicit_wrong_stage(tmp_path: Path) -> None:
    root = make_stage1(tmp_path)
    with pytest.raises(DataError, match=r"train_contest.*missing"):
        kaggle.read_kaggle_layout(root, stage=2)
    with pytest.raises(ConfigError):
        kaggle.read_kaggle_layout(root, stage=3)


def test_duplicate_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_stage1(tmp_path / "a")
    _image(root / "train" / "bad_1" / "g1.jpg")  # same id in both class folders
    with pytest.raises(DataError, match=r"duplicate image id.*'g1'"):
        kaggle.read_kaggle_layout(root)

    root = make_stage1(tmp_path / "b")
    _image(root / "test" / "all_tests" / f"{STAGE1_TEST_IDS[0]}.bmp")  # same id, other extension
    with pytest.raises(DataError, match=r"duplicate image id.*test folder"):
        kaggle.read_kaggle_layout(root)

    root = make_stage1(tmp_path / "c")
    _image(root / "test" / "all_tests" / "g2.jpg")  # an id in train and test: allowed, warned
    with caplog.at_level(logging.WARNING, logger="nexperia_utils.kaggle.layouts"):
        data = kaggle.read_kaggle_layout(root)
    assert "g2" in kaggle.test_ids(data)
    assert any("both train and test" in r.getMessage() and "g2" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- submissions

IDS = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("frame", "fragments"),
    [
        (pd.DataFrame({"id": ["a", "b", "c"], "label": [0.1, 0.2, 0.3]}), ["1 of 4 expected id(s) missing", "'d'"]),
        (pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "label": [0.1] * 5}), ["unexpected id", "'e'"]),
        (pd.DataFrame({"id": ["a", "b", "c", "d", "d"], "label": [0.1] * 5}), ["duplicate id", "'d'"]),
        (pd.DataFrame({"id": IDS, "label": [0.1, np.nan, 0.3, 0.4]}), ["1 NaN"]),
        (pd.DataFrame({"id": IDS, "label": [0.1, np.inf, 0.3, 0.4]}), ["1 infinite"]),
        (pd.DataFrame({"id": IDS, "label": [0.1, 1.5, -0.2, 0.4]}), ["2 'label' value(s) outside [0, 1]", "1.5", "-0.2"]),
        (pd.DataFrame({"id": IDS, "label": [0.1, "high", 0.3, 0.4]}), ["non-numeric", "'high'"]),
        (pd.DataFrame({"id": IDS, "defect_score": [0.1] * 4}), ["columns must be exactly ['id', 'label']", "stage-2"]),
        (pd.DataFrame({"id": IDS, "label": [0.1] * 4, "extra": 1}), ["columns must be exactly", "'extra'"]),
        (pd.DataFrame({"image": IDS, "label": [0.1] * 4}), ["columns must be exactly"]),
    ],
)
def test_validator_rejects(frame: pd.DataFrame, fragments: list[str]) -> None:
    with pytest.raises(DataError) as info:
        submission_file.validate_submission(frame, IDS, stage=1)
    msg = str(info.value)
    assert "semi-conductor-image-classification-first" in msg
    for fragment in fragments:
        assert fragment in msg


def test_validator_collects_all_problems() -> None:
    frame = pd.DataFrame({"id": ["a", "a", "x"], "label": [np.nan, 2.0, 0.5]})
    with pytest.raises(DataError) as info:
        submission_file.validate_submission(frame, IDS, stage=1)
    msg = str(info.value)
    assert "5 problem(s)" in msg
    for fragment in ("duplicate id", "expected id(s) missing", "unexpected id", "NaN", "outside [0, 1]"):
        assert fragment in msg


def test_validator_accepts_good_frame() -> None:
    submission_file.validate_submission(pd.DataFrame({"label": [0.0, 1.0, 0.5, 0.25], "id": IDS[::-1]}), IDS, stage=1)
    submission_file.validate_submission(pd.DataFrame({"id": IDS, "defect_score": [0.0, 1.0, 0.5, 0.25]}), IDS, stage=2)


@pytest.mark.parametrize(
    ("ids", "scores", "expected"),
    [
        (["a", "b", "c", "d"], [0.1, 0.2, float("nan"), 0.4], None),
        (["a", "b", "c", "d"], [0.1, 0.2, 1.3, 0.4], None),
        (["a", "b", "b", "d"], [0.1, 0.2, 0.3, 0.4], None),
        (["a", "b", "c"], [0.1, 0.2, 0.3], IDS),
        (["a", "b", "c", "d"], [0.1, 0.2, 0.3], None),
    ],
)
def test_write_submission_writes_nothing_on_failure(tmp_path: Path, ids, scores, expected) -> None:
    fresh = tmp_path / "fresh" / "submission.csv"
    with pytest.raises(DataError):
        submission_file.write_submission(fresh, ids, scores, stage=2, expected_ids=expected)
    assert not fresh.exists()
    assert not fresh.parent.exists() or list(fresh.parent.iterdir()) == []

    existing = tmp_path / "submission.csv"
    existing.write_text("id,defect_score\nold,0.5\n")
    with pytest.raises(DataError):
        submission_file.write_submission(existing, ids, scores, stage=2, expected_ids=expected)
    assert existing.read_text() == "id,defect_score\nold,0.5\n"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["submission.csv"]


@pytest.mark.parametrize("stage", [1, 2])
def test_submission_round_trip(tmp_path: Path, stage: int) -> None:
    ids = ["0123456789abcdef0123456789abcdef", "007", "x"]
    scores = np.array([0.1234567891, 0.1234567892, 1.0])  # differ only beyond 6 decimals: no artificial tie
    path = submission_file.write_submission(tmp_path / "sub.csv", ids, scores, stage=stage, expected_ids=ids)
    id_col, score_col = kaggle.SUBMISSION_COLUMNS[stage]
    assert path.read_text().splitlines()[0] == f"{id_col},{score_col}"
    back = pd.read_csv(path, dtype={"id": str})
    assert back["id"].tolist() == ids  # leading zeros kept
    assert back[score_col].tolist() == scores.tolist()
    submission_file.validate_submission(back, ids, stage)


def test_submit_command() -> None:
    cmd = submission_file.submit_command(Path("out/my sub.csv"), 2, message='run "A"')
    args = shlex.split(cmd)
    assert args[:3] == ["kaggle", "competitions", "submit"]
    assert args[args.index("-c") + 1] == "semi-conductor-image-classification-second-stage"
    assert args[args.index("-f") + 1] == "out/my sub.csv"
    assert args[args.index("-m") + 1] == 'run "A"'
    assert submission_file.submit_command(Path("s.csv"), 1) == (
        'kaggle competitions submit -c semi-conductor-image-classification-first -f s.csv -m "nexperia"'
    )
    with pytest.raises(ConfigError):
        submission_file.submit_command(Path("s.csv"), 3)


def test_score_submission(tmp_path: Path) -> None:
    key = tmp_path / "out-answer-key.csv"
    pd.DataFrame(
        {"id": ["a", "b", "c", "d", "e"], "label": [0, 1, 0, 1, 0], "true_class": ["good", "scratch", "good", "chipping", "good"]}
    ).to_csv(key, index=False)
    perfect = submission_file.write_submission(tmp_path / "p.csv", ["e", "d", "c", "b", "a"], [0.1, 0.9, 0.2, 0.8, 0.3], stage=1)
    assert submission_file.score_submission(perfect, key) == 1.0
    reversed_ = submission_file.write_submission(tmp_path / "r.csv", list("abcde"), [0.9, 0.1, 0.8, 0.2, 0.7], stage=2)
    assert submission_file.score_submission(reversed_, key) == 0.0
    # hand computation: positives {b: 0.6, d: 0.3}, negatives {a: 0.5, c: 0.2, e: 0.3};
    # pairs won: b beats all 3, d beats c and ties e (0.5) -> (3 + 1 + 0.5) / 6 = 0.75
    mixed = submission_file.write_submission(tmp_path / "m.csv", list("abcde"), [0.5, 0.6, 0.2, 0.3, 0.3], stage=1)
    assert math.isclose(submission_file.score_submission(mixed, key), 0.75)
    # a submission missing an id of the key is rejected, not scored
    short = submission_file.write_submission(tmp_path / "s.csv", list("abcd"), [0.5] * 4, stage=1)
    with pytest.raises(DataError, match="'e'"):
        submission_file.score_submission(short, key)


def test_module_does_not_import_data() -> None:
    import ast

    tree = ast.parse(Path(kaggle.__file__).read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [getattr(n, "module", None) or "" for n in top_level] + [a.name for n in top_level for a in n.names]
    assert not any(name.endswith("data") and "nexperia" in name for name in names)
    assert "data" not in [a.name for n in top_level if isinstance(n, ast.ImportFrom) for a in n.names]
