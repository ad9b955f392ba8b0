"""Tests of nexperia_utils.data.split: the report's per-class split, its files, hash and reuse."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.data.split import (
    SPLITS,
    default_split_path,
    load_or_create_split,
    make_split,
    read_split,
    read_split_info,
    sidecar_path,
    split_classes,
    split_counts,
    split_hash,
    split_sizes,
)

# Batch-2 class counts (methods.md) and the published split (report section 3.1, methods.md).
BATCH2_COUNTS = {
    "chipping": 3681,
    "device_flip": 135,
    "empty_pocket": 203,
    "foreign_material": 1952,
    "good": 30523,
    "lead_defect": 254,
    "lead_glue": 625,
    "marking_defect": 175,
    "pocket_damage": 5,
    "scratch": 749,
}


def synthetic_frame(counts: dict[str, int]) -> pd.DataFrame:
    """A data set frame with ``counts[label]`` images per class (no files needed to split)."""
    rows = [
        (f"{label}_{i:05d}", f"{label}/{label}_{i:05d}.png", label) for label, n in counts.items() for i in range(n)
    ]
    return pd.DataFrame(rows, columns=["image_id", "path", "label"])


SMALL = {"good": 40, "scratch": 12, "pocket_damage": 5}


# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, expected",
    [
        (3, (1, 1, 1)),
        (5, (3, 1, 1)),  # fewer than 10 images: exactly one test and one val image
        (9, (7, 1, 1)),
        (10, (8, 1, 1)),  # test round(1.0) = 1, val round(0.9) = 1
        (15, (12, 1, 2)),  # test round(1.5) = 2 (half to even), val round(1.3) = 1
        (25, (21, 2, 2)),  # test round(2.5) = 2 (half to even), val round(0.1 * 23) = round(2.3) = 2
        (135, (109, 12, 14)),  # test round(13.5) = 14, val round(12.1) = 12
        (625, (507, 56, 62)),  # test round(62.5) = 62, val round(56.3) = 56
    ],
)
def test_split_sizes_by_hand(n, expected):
    assert split_sizes(n) == expected


def test_split_sizes_refuses_tiny_classes_and_bad_fractions():
    with pytest.raises(DataError, match="at least 3 images"):
        split_sizes(2)
    with pytest.raises(ConfigError, match="test_fraction"):
        split_sizes(100, test_fraction=0.0)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_sizes(100, val_fraction=1.5)


def test_published_batch2_split_sizes_are_reproduced():
    split = make_split(synthetic_frame(BATCH2_COUNTS), seed=0)
    counts = split_counts(split)
    # Published: train 31,025 (good 24,724), val 3,447 (good 2,747), test 3,830 (good 3,052),
    # pocket_damage 3/1/1. Round-half-to-even of 10 % per class matches every one of them.
    assert counts.loc["total"].to_dict() == {"train": 31025, "val": 3447, "test": 3830, "total": 38302}
    assert counts.loc["good"].to_dict() == {"train": 24724, "val": 2747, "test": 3052, "total": 30523}
    assert counts.loc["pocket_damage", ["train", "val", "test"]].tolist() == [3, 1, 1]
    defects = counts.drop(index=["good", "total"]).sum()
    assert (defects["train"], defects["val"], defects["test"]) == (6301, 700, 778)
    # the half-way classes: device_flip 13.5 -> 14, lead_glue 62.5 -> 62 (half to even)
    assert counts.loc["device_flip", "test"] == 14 and counts.loc["lead_glue", "test"] == 62


# --------------------------------------------------------------------------------------------
# make_split
# --------------------------------------------------------------------------------------------
def test_make_split_per_class_sizes_and_small_class():
    split = make_split(synthetic_frame(SMALL), seed=3)
    assert set(split["split"]) == set(SPLITS)
    counts = split_counts(split)
    assert counts.loc["pocket_damage", ["train", "val", "test"]].tolist() == [3, 1, 1]
    assert counts.loc["good", ["train", "val", "test"]].tolist() == [32, 4, 4]
    assert counts.loc["scratch", ["train", "val", "test"]].tolist() == [10, 1, 1]
    assert len(split) == sum(SMALL.values())
    assert list(split["image_id"]) == sorted(split["image_id"])


def test_make_split_is_deterministic_and_independent_of_row_order():
    frame = synthetic_frame(SMALL)
    first = make_split(frame, seed=7)
    again = make_split(frame, seed=7)
    shuffled = make_split(frame.sample(frac=1.0, random_state=1).reset_index(drop=True), seed=7)
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, shuffled)
    other = make_split(frame, seed=8)
    assert not first["split"].equals(other["split"])
    assert split_counts(first).equals(split_counts(other))  # same sizes, different members


def test_make_split_keeps_extra_columns_and_refuses_bad_frames():
    frame = synthetic_frame({"good": 10, "bad": 3}).assign(extra=1)
    assert "extra" in make_split(frame).columns
    with pytest.raises(DataError, match="duplicate image id"):
        make_split(pd.concat([frame, frame.iloc[:1]]))
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['path'\]"):
        make_split(frame.drop(columns="path"))
    with pytest.raises(DataError, match="at least 3 images"):
        make_split(synthetic_frame({"good": 10, "bad": 2}))


# --------------------------------------------------------------------------------------------
# hash and counts
# --------------------------------------------------------------------------------------------
def test_split_hash_changes_with_a_label_and_ignores_row_order():
    split = make_split(synthetic_frame(SMALL), seed=0)
    digest = split_hash(split)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert split_hash(split.iloc[::-1]) == digest
    relabelled = split.copy()
    relabelled.loc[0, "label"] = "scratch" if relabelled.loc[0, "label"] != "scratch" else "good"
    assert split_hash(relabelled) != digest
    moved = split.copy()
    moved.loc[0, "split"] = "val" if moved.loc[0, "split"] != "val" else "test"
    assert split_hash(moved) != digest


def test_split_counts_table_shape():
    split = pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "path": list("abcdef"),
            "label": ["good", "good", "good", "bad", "bad", "bad"],
            "split": ["train", "train", "val", "test", "train", "val"],
        }
    )
    counts = split_counts(split)
    assert list(counts.columns) == ["train", "val", "test", "total"]
    assert list(counts.index) == ["bad", "good", "total"]
    assert counts.loc["bad"].tolist() == [1, 1, 1, 3]
    assert counts.loc["good"].tolist() == [2, 1, 0, 3]
    assert counts.loc["total"].tolist() == [3, 2, 1, 6]


def test_default_split_path(tmp_path):
    assert default_split_path(tmp_path / "batch2", 3) == Path("data/splits/batch2-seed3.csv")
    assert default_split_path(tmp_path / "b", 0, tmp_path / "s") == tmp_path / "s" / "b-seed0.csv"


# --------------------------------------------------------------------------------------------
# files: create, reuse, mismatch, overwrite
# --------------------------------------------------------------------------------------------
def test_create_writes_csv_and_sidecar(tmp_path):
    csv = tmp_path / "splits" / "small-seed0.csv"
    split = load_or_create_split(synthetic_frame(SMALL), csv, seed=0, data_root=tmp_path / "small")
    assert csv.is_file() and sidecar_path(csv) == tmp_path / "splits" / "small-seed0.json"
    info = json.loads(sidecar_path(csv).read_text())
    assert info["classes"] == ["good", "pocket_damage", "scratch"]
    assert info["negative_class"] == "good" and info["seed"] == 0
    assert info["data_root"] == (tmp_path / "small").as_posix()
    assert info["hash"] == split_hash(split)
    assert info["created"]
    assert split_classes(csv) == info["classes"]
    assert list(pd.read_csv(csv).columns) == ["image_id", "path", "label", "split"]
    pd.testing.assert_frame_equal(read_split(csv).astype(str), split.astype(str))


def test_existing_split_is_reused_even_with_another_seed(tmp_path):
    csv = tmp_path / "s.csv"
    frame = synthetic_frame(SMALL)
    first = load_or_create_split(frame, csv, seed=0)
    before = (csv.read_bytes(), sidecar_path(csv).read_bytes())
    second = load_or_create_split(frame.iloc[::-1], csv, seed=99)
    assert split_hash(second) == split_hash(first)
    pd.testing.assert_frame_equal(second.astype(str), first.astype(str))
    assert (csv.read_bytes(), sidecar_path(csv).read_bytes()) == before
    assert not make_split(frame, seed=99)["split"].equals(first["split"])  # a redraw would differ


def test_mismatch_is_refused_with_counts_and_nothing_is_written(tmp_path):
    csv = tmp_path / "s.csv"
    frame = synthetic_frame(SMALL)
    load_or_create_split(frame, csv, seed=0)
    before = (csv.read_bytes(), sidecar_path(csv).read_bytes())

    changed = frame.copy()
    changed.loc[changed["image_id"] == "good_00000", "label"] = "scratch"  # relabelled
    changed = changed[changed["image_id"] != "good_00001"]  # removed
    changed = pd.concat(
        [changed, pd.DataFrame([("new_1", "good/new_1.png", "good"), ("new_2", "good/new_2.png", "good")],
                               columns=changed.columns)]
    )  # added
    with pytest.raises(DataError) as error:
        load_or_create_split(changed, csv, seed=0)
    message = str(error.value)
    assert "2 added, 1 removed, 1 relabelled, 0 moved" in message
    assert "good_00000: good -> scratch" in message and "new_1" in message and "good_00001" in message
    assert "overwrite=True" in message and str(csv) in message
    assert (csv.read_bytes(), sidecar_path(csv).read_bytes()) == before

    with pytest.raises(DataError, match="negative class 'good'"):
        load_or_create_split(frame, csv, negative_class="ok")


def test_overwrite_redraws_and_replaces(tmp_path):
    csv = tmp_path / "s.csv"
    frame = synthetic_frame(SMALL)
    first = load_or_create_split(frame, csv, seed=0)
    changed = frame.assign(label=frame["label"].replace({"pocket_damage": "scratch"}))
    redrawn = load_or_create_split(changed, csv, seed=5, overwrite=True)
    assert split_hash(redrawn) != split_hash(first)
    assert read_split_info(csv)["seed"] == 5
    assert split_classes(csv) == ["good", "scratch"]
    assert split_hash(read_split(csv)) == split_hash(redrawn)
    pd.testing.assert_frame_equal(redrawn.astype(str), make_split(changed, seed=5)[list(redrawn.columns)].astype(str))


def test_nothing_written_on_failure(tmp_path):
    csv = tmp_path / "out" / "s.csv"
    with pytest.raises(ConfigError, match="negative class 'ok'"):
        load_or_create_split(synthetic_frame(SMALL), csv, negative_class="ok")
    with pytest.raises(DataError, match="at least 3 images"):
        load_or_create_split(synthetic_frame({"good": 20, "rare": 2}), csv)
    assert not csv.exists() and not sidecar_path(csv).exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------
# read_split validation
# --------------------------------------------------------------------------------------------
@pytest.fixture
def saved_split(tmp_path) -> Path:
    csv = tmp_path / "s.csv"
    load_or_create_split(synthetic_frame(SMALL), csv, seed=0)
    return csv


def rewrite(csv: Path, edit) -> None:
    """Edit a split CSV and keep the sidecar hash in step (so only the targeted check can fail)."""
    frame = edit(pd.read_csv(csv, dtype=str, keep_default_na=False))
    frame.to_csv(csv, index=False)
    info = json.loads(sidecar_path(csv).read_text())
    if set(["image_id", "path", "label", "split"]) <= set(frame.columns):
        info["hash"] = split_hash(frame)
    sidecar_path(csv).write_text(json.dumps(info))


def test_read_split_missing_file_and_sidecar(tmp_path, saved_split):
    with pytest.raises(DataError, match="nope.csv.*does not exist"):
        read_split(tmp_path / "nope.csv")
    sidecar_path(saved_split).unlink()
    with pytest.raises(DataError, match=r"no sidecar .*s\.json"):
        read_split(saved_split)
    with pytest.raises(DataError, match="overwrite=True"):
        load_or_create_split(synthetic_frame(SMALL), saved_split)


def test_read_split_missing_columns(saved_split):
    rewrite(saved_split, lambda f: f.drop(columns="split"))
    with pytest.raises(DataError, match=r"s\.csv lacks the column\(s\) \['split'\]"):
        read_split(saved_split)


def test_read_split_unknown_split_name(saved_split):
    rewrite(saved_split, lambda f: f.assign(split=f["split"].where(f.index != 3, "validation")))
    with pytest.raises(DataError, match="unknown split name") as error:
        read_split(saved_split)
    assert "line 5: 'validation'" in str(error.value)


def test_read_split_unknown_classes(saved_split):
    rewrite(saved_split, lambda f: f.assign(label=f["label"].where(f.index != 0, "martian")))
    with pytest.raises(DataError, match=r"Unknown classes in a split.*\['martian'\]"):
        read_split(saved_split)


def test_read_split_duplicate_ids(saved_split):
    rewrite(saved_split, lambda f: pd.concat([f, f.iloc[[2]]]))
    with pytest.raises(DataError, match="more than once") as error:
        read_split(saved_split)
    assert "good_00002" in str(error.value)


def test_read_split_detects_edits_by_hash(saved_split):
    frame = pd.read_csv(saved_split, dtype=str, keep_default_na=False)
    frame.loc[0, "split"] = "val" if frame.loc[0, "split"] != "val" else "test"
    frame.to_csv(saved_split, index=False)
    with pytest.raises(DataError, match="does not match the hash"):
        read_split(saved_split)


def test_numeric_looking_ids_stay_text(tmp_path):
    frame = pd.DataFrame(
        {"image_id": [f"{i:04d}" for i in range(12)], "path": [f"g/{i:04d}.png" for i in range(12)], "label": "good"}
    )
    csv = tmp_path / "n.csv"
    load_or_create_split(frame, csv)
    assert sorted(read_split(csv)["image_id"]) == [f"{i:04d}" for i in range(12)]
    load_or_create_split(frame, csv)  # reused without a spurious mismatch


def test_seed_must_be_a_non_negative_integer_and_numpy_ints_are_stored(tmp_path):
    import numpy as np

    frame = synthetic_frame(SMALL)
    with pytest.raises(ConfigError, match="seed"):
        make_split(frame, seed=-1)
    with pytest.raises(ConfigError, match="seed"):
        make_split(frame, seed=1.5)
    csv = tmp_path / "s.csv"
    load_or_create_split(frame, csv, seed=np.int64(4))
    assert read_split_info(csv)["seed"] == 4
