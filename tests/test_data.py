"""Tests of nexperia_utils.data.folders: folder-per-class, manifest and Kaggle readers and their checks."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nexperia_utils.data.folders import class_names, load_dataset, negative_index, read_manifest, scan_image_folder
from nexperia_utils.data.images import IMAGE_EXTENSIONS, find_bad_images, read_grayscale
from nexperia_utils.errors import ConfigError, DataError


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def write_image(path: Path, size: tuple[int, int] = (8, 8), value: int = 128, mode: str = "L") -> Path:
    """A tiny solid image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value // 2, 255 - value)
    Image.new(mode, size, color).save(path)
    return path


def noise_png_bytes(size: int = 64, seed: int = 0) -> bytes:
    """A PNG of random noise: incompressible, so cutting it in half removes image data."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_truncated_png(path: Path) -> Path:
    data = noise_png_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def make_tree(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """root/<class>/<class>_<i><suffix> with ``counts[class]`` images each."""
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_image(root / label / f"{label}_{i}{suffix}", value=10 * i % 256)
    return root


# --------------------------------------------------------------------------------------------
# folder-per-class
# --------------------------------------------------------------------------------------------
def test_scan_derives_sorted_classes_and_ignores_root_files_and_hidden_entries(tmp_path):
    root = make_tree(tmp_path / "data", {"scratch": 2, "good": 3, "chipping": 1})
    (root / "annotations.csv").write_text("x\n")
    (root / ".cache").mkdir()
    write_image(root / ".cache" / "zzz.png")
    (root / "good" / ".DS_Store").write_bytes(b"\0\1")
    write_image(root / "good" / ".hidden" / "h.png")

    frame = scan_image_folder(root)

    assert list(frame.columns) == ["image_id", "path", "label"]
    assert class_names(frame) == ["chipping", "good", "scratch"]
    assert len(frame) == 6
    assert frame.set_index("image_id").loc["good_2", "path"] == "good/good_2.png"
    assert frame.set_index("image_id").loc["scratch_1", "label"] == "scratch"
    assert not frame["path"].str.contains("hidden|cache|zzz").any()
    assert negative_index(class_names(frame), "good") == 1


def test_scan_reads_nested_files_and_every_extension(tmp_path):
    root = tmp_path / "data"
    for i, suffix in enumerate(IMAGE_EXTENSIONS):
        write_image(root / "good" / f"g{i}{suffix}")
    write_image(root / "good" / "sub" / "deep.PNG")
    write_image(root / "bad" / "b0.png")
    frame = scan_image_folder(root)
    assert len(frame) == len(IMAGE_EXTENSIONS) + 2
    assert "good/sub/deep.PNG" in set(frame["path"])


def test_scan_custom_negative_class(tmp_path):
    root = make_tree(tmp_path / "kaggle_like", {"good_0": 2, "bad_1": 2})
    frame = scan_image_folder(root, negative_class="good_0")
    assert class_names(frame) == ["bad_1", "good_0"]
    assert negative_index(class_names(frame), "good_0") == 1


def test_missing_negative_class_lists_folders_and_says_what_to_pass(tmp_path):
    root = make_tree(tmp_path / "data", {"ok": 1, "scratch": 1})
    with pytest.raises(DataError) as error:
        scan_image_folder(root)
    message = str(error.value)
    assert "'good'" in message and "['ok', 'scratch']" in message and "negative_class" in message


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(DataError, match="does not exist") as error:
        scan_image_folder(tmp_path / "nope")
    assert "nope" in str(error.value)
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        scan_image_folder(afile)


def test_root_without_class_folders(tmp_path):
    root = tmp_path / "flat"
    write_image(root / "a.png")
    (root / "annotations.csv").write_text("x\n")
    with pytest.raises(DataError, match="no class folders") as error:
        scan_image_folder(root)
    assert str(root) in str(error.value)


def test_empty_class_folder_is_named(tmp_path):
    root = make_tree(tmp_path / "data", {"good": 2, "scratch": 1})
    (root / "lead_glue").mkdir()
    with pytest.raises(DataError, match="empty class folder") as error:
        scan_image_folder(root)
    assert "lead_glue" in str(error.value)


def test_unsupported_extensions_are_listed_and_skip_bad_drops_them(tmp_path, caplog):
    root = make_tree(tmp_path / "data", {"good": 2, "scratch": 1})
    (root / "good" / "notes.txt").write_text("x")
    (root / "scratch" / "image.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match="unsupported extension") as error:
        scan_image_folder(root)
    assert "good/notes.txt" in str(error.value) and "scratch/image.gif" in str(error.value)

    with caplog.at_level(logging.WARNING, logger="nexperia_utils.data.folders"):
        frame = scan_image_folder(root, skip_bad=True)
    assert len(frame) == 3
    assert "good/notes.txt" in caplog.text


def test_duplicate_ids_across_folders_and_extensions(tmp_path):
    root = make_tree(tmp_path / "data", {"good": 2, "scratch": 1})
    write_image(root / "scratch" / "good_0.png")  # same stem in two folders
    write_image(root / "good" / "x.png")
    write_image(root / "good" / "x.jpg")  # same stem, two extensions
    with pytest.raises(DataError, match="duplicate image id") as error:
        scan_image_folder(root)
    message = str(error.value)
    assert "good_0: good/good_0.png, scratch/good_0.png" in message
    assert "x: good/x.jpg, good/x.png" in message


def test_bad_images_truncated_zero_size_and_not_an_image(tmp_path):
    root = make_tree(tmp_path / "data", {"good": 2, "scratch": 1})
    write_truncated_png(root / "good" / "cut.png")
    (root / "good" / "empty.png").write_bytes(b"")
    (root / "scratch" / "text.jpg").write_text("this is not a JPEG")
    with pytest.raises(DataError) as error:
        scan_image_folder(root)
    message = str(error.value)
    assert "3 bad image(s)" in message
    assert "good/cut.png: truncated" in message
    assert "good/empty.png: zero size" in message
    assert "scratch/text.jpg: not an image" in message
    assert "skip_bad=True" in message
    # without the check the files are listed (the caller chose not to verify them)
    assert len(scan_image_folder(root, check_images=False)) == 6


def test_truncated_png_really_is_detected_and_whole_png_is_not(tmp_path):
    whole = tmp_path / "whole.png"
    whole.write_bytes(noise_png_bytes())
    cut = write_truncated_png(tmp_path / "cut.png")
    result = dict(find_bad_images(tmp_path, ["whole.png", "cut.png", "missing.png"]))
    assert "whole.png" not in result
    assert result["cut.png"].startswith("truncated")
    assert result["missing.png"].startswith("missing")
    with pytest.raises(DataError, match="cut.png"):
        read_grayscale(cut)


def test_all_bad_files_are_collected_into_one_error(tmp_path):
    root = make_tree(tmp_path / "data", {"good": 1, "scratch": 1})
    for i in range(25):
        (root / "good" / f"broken_{i:02d}.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError) as error:
        scan_image_folder(root)
    message = str(error.value)
    assert "25 bad image(s)" in message
    assert "good/broken_00.png" in message and "good/broken_19.png" in message
    assert "good/broken_20.png" not in message  # first 20 listed ...
    assert "... and 5 more" in message  # ... plus a count


def test_skip_bad_drops_bad_images_with_a_warning_that_lists_them(tmp_path, caplog):
    root = make_tree(tmp_path / "data", {"good": 3, "scratch": 2})
    write_truncated_png(root / "scratch" / "cut.png")
    (root / "good" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="nexperia_utils.data.folders"):
        frame = scan_image_folder(root, skip_bad=True)
    assert len(frame) == 5
    assert not frame["path"].isin(["scratch/cut.png", "good/empty.png"]).any()
    assert "2 bad image(s)" in caplog.text
    assert "scratch/cut.png" in caplog.text and "good/empty.png" in caplog.text


def test_skip_bad_that_empties_a_folder_is_still_an_error(tmp_path):
    root = make_tree(tmp_path / "data", {"good": 2})
    (root / "scratch").mkdir()
    (root / "scratch" / "only.png").write_bytes(b"")
    with pytest.raises(DataError, match="scratch"):
        scan_image_folder(root, skip_bad=True)


def test_progress_bar_does_not_change_the_result(tmp_path):
    root = make_tree(tmp_path / "data", {"good": 3, "scratch": 2})
    assert scan_image_folder(root, progress=True).equals(scan_image_folder(root))


# --------------------------------------------------------------------------------------------
# read_grayscale, class helpers
# --------------------------------------------------------------------------------------------
def test_read_grayscale_converts_to_uint8_height_width(tmp_path):
    rgb = write_image(tmp_path / "rgb.png", size=(16, 12), value=200, mode="RGB")
    array = read_grayscale(rgb)
    assert array.shape == (12, 16) and array.dtype == np.uint8
    expected = np.asarray(Image.open(rgb).convert("L"))
    np.testing.assert_array_equal(array, expected)
    bmp = write_image(tmp_path / "g.bmp", size=(5, 7), value=33)
    assert read_grayscale(bmp).shape == (7, 5)
    assert int(read_grayscale(bmp)[0, 0]) == 33


def test_read_grayscale_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        read_grayscale(tmp_path / "missing.png")
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    with pytest.raises(DataError, match="fake.png"):
        read_grayscale(fake)


def test_class_names_and_negative_index():
    frame = pd.DataFrame({"image_id": list("abcd"), "path": list("abcd"), "label": ["good", "b", "a", "good"]})
    assert class_names(frame) == ["a", "b", "good"]
    assert negative_index(["a", "b", "good"], "good") == 2
    with pytest.raises(ConfigError, match="'ok'.*negative_class"):
        negative_index(["a", "b", "good"], "ok")


# --------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------
def write_manifest(path: Path, rows: list[tuple[str, str]], header: str = "path,label") -> Path:
    lines = [header] + [f"{p},{label}" for p, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_manifest(tmp_path):
    root = make_tree(tmp_path / "images", {"good": 2, "scratch": 1})
    manifest = write_manifest(
        tmp_path / "m.csv", [("good/good_0.png", "good"), ("./good/good_1.png", " good "), ("scratch/scratch_0.png", "scratch")]
    )
    frame = read_manifest(manifest, root)
    assert list(frame.columns) == ["image_id", "path", "label"]
    assert list(frame["path"]) == ["good/good_0.png", "good/good_1.png", "scratch/scratch_0.png"]
    assert list(frame["image_id"]) == ["good_0", "good_1", "scratch_0"]
    assert list(frame["label"]) == ["good", "good", "scratch"]


def test_manifest_missing_file_and_columns(tmp_path):
    root = make_tree(tmp_path / "images", {"good": 1})
    with pytest.raises(DataError, match="nope.csv"):
        read_manifest(tmp_path / "nope.csv", root)
    manifest = write_manifest(tmp_path / "m.csv", [("good/good_0.png", "good")], header="file,class")
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['path', 'label'\]"):
        read_manifest(manifest, root)


def test_manifest_empty_and_unknown_labels(tmp_path):
    root = make_tree(tmp_path / "images", {"good": 2, "scratch": 1})
    manifest = write_manifest(
        tmp_path / "m.csv", [("good/good_0.png", ""), ("good/good_1.png", "goood"), ("scratch/scratch_0.png", "scratch")]
    )
    with pytest.raises(DataError, match="empty label") as error:
        read_manifest(manifest, root, classes=["good", "scratch"])
    message = str(error.value)
    assert "line 2: 'good/good_0.png'" in message
    assert "line 3: 'good/good_1.png' has label 'goood'" in message


def test_manifest_missing_images_are_listed(tmp_path):
    root = make_tree(tmp_path / "images", {"good": 1})
    manifest = write_manifest(
        tmp_path / "m.csv", [("good/good_0.png", "good"), ("good/gone.png", "good"), ("bad/also_gone.png", "bad")]
    )
    with pytest.raises(DataError, match="2 missing file") as error:
        read_manifest(manifest, root)
    assert "good/gone.png" in str(error.value) and "bad/also_gone.png" in str(error.value)


def test_manifest_refuses_paths_that_leave_the_root(tmp_path):
    root = make_tree(tmp_path / "images", {"good": 1})
    outside = write_image(tmp_path / "secret" / "outside.png")
    (root / "good" / "link.png").symlink_to(outside)
    write_image(root / "real" / "inner.png")
    (root / "good" / "inner_link.png").symlink_to(root / "real" / "inner.png")
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            (str(outside), "good"),  # absolute
            ("../secret/outside.png", "good"),  # .. escape
            ("good/../../secret/outside.png", "good"),  # .. escape in the middle
            ("good/link.png", "good"),  # symlink resolving outside the root
            ("good/good_0.png", "good"),
        ],
    )
    with pytest.raises(DataError, match="leaving the data root") as error:
        read_manifest(manifest, root)
    message = str(error.value)
    assert "4 path(s) leaving" in message
    for refused in (str(outside), "../secret/outside.png", "good/../../secret/outside.png", "good/link.png"):
        assert repr(refused) in message
    # a symlink that stays inside the root is fine
    manifest = write_manifest(tmp_path / "ok.csv", [("good/inner_link.png", "good"), ("good/good_0.png", "good")])
    assert len(read_manifest(manifest, root)) == 2


def test_manifest_duplicates_and_bad_images(tmp_path, caplog):
    root = make_tree(tmp_path / "images", {"good": 2, "scratch": 1})
    write_image(root / "scratch" / "good_0.png")
    manifest = write_manifest(tmp_path / "m.csv", [("good/good_0.png", "good"), ("scratch/good_0.png", "scratch")])
    with pytest.raises(DataError, match="duplicate image id") as error:
        read_manifest(manifest, root)
    assert "good/good_0.png, scratch/good_0.png" in str(error.value)

    write_truncated_png(root / "good" / "cut.png")
    manifest = write_manifest(tmp_path / "m2.csv", [("good/good_1.png", "good"), ("good/cut.png", "good")])
    with pytest.raises(DataError, match="good/cut.png: truncated"):
        read_manifest(manifest, root)
    with caplog.at_level(logging.WARNING, logger="nexperia_utils.data.folders"):
        frame = read_manifest(manifest, root, skip_bad=True)
    assert list(frame["path"]) == ["good/good_1.png"] and "good/cut.png" in caplog.text


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------
def test_load_dataset_folder_and_manifest(tmp_path):
    root = make_tree(tmp_path / "images", {"good": 2, "scratch": 1})
    frame, negative = load_dataset(root)
    assert negative == "good" and len(frame) == 3

    manifest = write_manifest(tmp_path / "m.csv", [("good/good_0.png", "ok"), ("scratch/scratch_0.png", "scratch")])
    with pytest.raises(DataError, match="negative class 'good'.*negative_class"):
        load_dataset(root, manifest=manifest)
    frame, negative = load_dataset(root, negative_class="ok", manifest=manifest)
    assert negative == "ok" and class_names(frame) == ["ok", "scratch"]


def test_load_dataset_kaggle_stage1_layout(tmp_path):
    root = tmp_path / "kaggle1"
    ids = {"good_0": ["0a" * 16, "1b" * 16, "2c" * 16], "bad_1": ["3d" * 16, "4e" * 16]}
    for label, names in ids.items():
        for name in names:
            write_image(root / "train" / label / f"{name}.jpg")
    write_image(root / "test" / "all_tests" / f"{'5f' * 16}.jpg")

    frame, negative = load_dataset(root)
    assert negative == "good_0"
    assert class_names(frame) == ["bad_1", "good_0"]
    assert len(frame) == 5
    assert set(frame["path"]) == {f"train/{label}/{name}.jpg" for label, names in ids.items() for name in names}
    assert negative_index(class_names(frame), negative) == 1  # 'bad_1' sorts first: index 1 is good

    # the same validation as for manifests: a bad training image is refused, by name
    (root / "train" / "bad_1" / f"{'6a' * 16}.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=f"train/bad_1/{'6a' * 16}.jpg: zero size"):
        load_dataset(root)


def test_checking_many_images_is_fast(tmp_path):
    """A few hundred small PNGs are verified well within a second or two."""
    import time

    root = tmp_path / "many"
    (root / "good").mkdir(parents=True)
    data = noise_png_bytes(size=32)
    for i in range(400):
        (root / "good" / f"{i:04d}.png").write_bytes(data)
    start = time.perf_counter()
    assert find_bad_images(root, [f"good/{i:04d}.png" for i in range(400)]) == []
    assert time.perf_counter() - start < 5.0
