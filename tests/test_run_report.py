"""The HTML run report (nexperia_utils.reporting.html, `make report`) on a small fake outputs folder."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from matplotlib.figure import Figure

from nexperia_utils.reporting import html as run_report
from nexperia_utils.reporting import run_index
from nexperia_utils.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
PNG_1PX = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4"
           b"\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND"
           b"\xaeB`\x82")


def _predictions(path: Path, scores: list[float]) -> None:
    """Test predictions of 2 good + 2 defect images with the given defect scores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_id": list("abcd"), "label": ["good", "good", "scratch", "chipping"],
                  "p_good": [1 - s for s in scores], "defect_score": scores}).to_csv(path, index=False)


def _run(outputs: Path, name: str, arch: str, done: bool, epochs_run: int, split_hash: str = "abc123") -> Path:
    run = outputs / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    meta = {"config": {"arch": arch, "loss": "ce", "epochs": 2, "image_size": 32}, "classes": ["chipping", "good", "scratch"],
            "negative_class": "good", "split_hash": split_hash, "display_name": arch.replace("resnet", "ResNet")}
    (run / "config.json").write_text(json.dumps(meta))
    history = pd.DataFrame({"epoch": range(1, epochs_run + 1), "val_auc": [0.8, 0.9][:epochs_run],
                            "time_s": [30.0, 60.0][:epochs_run]})
    history.to_csv(run / "history.csv", index=False)
    if done:
        (run / "done.json").write_text(json.dumps({"best_epoch": 2, "best_val_auc": 0.9, "train_time_s": 90.0,
                                                   "peak_memory_mb": 512.0, "device": "cpu", "epochs": 2}))
        pd.DataFrame({"epoch": [2, 1], "val_auc": [0.9, 0.8], "file": ["epoch_002.pt", "epoch_001.pt"]}).to_csv(
            run / "checkpoints" / "index.csv", index=False)
    return run


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = 'quick'")
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell("profile = 'smoke'")
    injected.metadata["tags"] = ["injected-parameters"]
    code = nbformat.v4.new_code_cell("print('hello')")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="hello from stdout\n"),
        nbformat.v4.new_output("stream", name="stderr", text="INFO secret log line\n"),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                                      "text/plain": "HBox(children=(progress bar))"}),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# 02 · Baseline\nSome *text* with a < sign."), params, injected, code]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture()
def fake_outputs(tmp_path) -> Path:
    outputs = tmp_path / "outputs" / "smoke"
    run = _run(outputs, "resnet18-ce", "resnet18", done=True, epochs_run=2)
    _predictions(run / "predictions" / "test-center-epoch002.csv", [0.1, 0.2, 0.8, 0.9])  # AUC 1, FPR@100 0
    _predictions(run / "predictions" / "test-center-epoch001.csv", [0.1, 0.9, 0.5, 0.6])  # AUC 0.5, FPR@100 0.5
    _predictions(run / "predictions" / "test-center-epoch003.csv", [0.9, 0.9, 0.1, 0.1])  # not kept: ignored
    _predictions(run / "predictions" / "test-ten-epoch002.csv", [0.9, 0.9, 0.1, 0.1])  # other crop: ignored
    _run(outputs, "resnet34-ce", "resnet34", done=False, epochs_run=1)
    (outputs / "runs" / "broken").mkdir()
    splits = tmp_path / "data" / "splits"
    splits.mkdir(parents=True)
    (splits / "synthetic-smoke-seed0.json").write_text(json.dumps({"hash": "abc123", "data_root": "/w/data/synthetic-smoke"}))
    tables = outputs / "tables"
    tables.mkdir()
    (tables / "table3.md").write_text("| mean (std) % | ResNet18 CenterCrop |\n| :--- | ---: |\n| AUC | 99.50 (0.10) |\n\n"
                                      "Table 3 (reproduction): TPR >= 99.1 % <b>caption</b>.\n")
    (tables / "table3.csv").write_text("metric,ResNet18 CenterCrop\nauc,99.50 (0.10)\n")
    pd.DataFrame({"model": ["ResNet18"] * 3, "auc": [0.99, 0.98, 0.97]}).to_csv(tables / "table3_checkpoints.csv", index=False)
    figures = outputs / "figures"
    figures.mkdir()
    fig = Figure(figsize=(2, 2))
    fig.add_subplot(1, 1, 1).plot([0, 1], [0, 1])
    fig.savefig(figures / "02_roc_resnet18-ce.png")
    (figures / "misc.png").write_bytes(PNG_1PX)
    _notebook(outputs / "notebooks" / "02_baseline-resnet18.ipynb")
    (outputs / "submission.csv").write_text("id,label\na,0.5\n")
    return outputs


def test_runs_index(fake_outputs):
    runs = run_index.runs_index(fake_outputs).set_index("run")
    assert list(runs.index) == ["broken", "resnet18-ce", "resnet34-ce"]
    assert list(runs.columns) == list(run_index.RUN_COLUMNS[1:])
    r18 = runs.loc["resnet18-ce"]
    assert r18["model"] == "ResNet18" and r18["loss"] == "ce" and r18["profile"] == "smoke"
    assert r18["data"] == "synthetic-smoke" and r18["classes"] == 3 and r18["epochs"] == "2/2"
    assert r18["status"] == "finished" and r18["training time (min)"] == 1.5 and r18["peak memory (MB)"] == 512.0
    assert r18["best val AUC"] == 0.9 and r18["best epoch"] == 2
    # mean over the kept checkpoints 2 and 1 (centre crop): AUC (1 + 0.5) / 2, FPR@100 (0 + 0.5) / 2
    assert math.isclose(r18["test AUC"], 0.75) and math.isclose(r18["test FPR@100"], 0.25)
    assert r18["test checkpoints"] == 2
    r34 = runs.loc["resnet34-ce"]
    assert r34["status"] == "in progress" and r34["epochs"] == "1/2" and r34["best val AUC"] == 0.8
    assert pd.isna(r34["test AUC"])
    assert runs.loc["broken", "status"] == "no config.json"


@pytest.mark.parametrize(("stem", "title"), [("table3", "Table 3"), ("table12_checkpoints", "Table 12 checkpoints"),
                                             ("submission_summary", "Submission summary"), ("tablex", "Tablex")])
def test_table_title(stem, title):
    assert run_report.table_title(stem) == title


def test_piece_status(fake_outputs):
    status = run_index.piece_status(fake_outputs).set_index("piece")["status"].to_dict()
    assert status == {"Table 2 (models)": "not run yet", "Table 3 (crop styles)": "done", "Table 4 (losses)": "not run yet",
                      "Error analysis": "not run yet", "Distribution shift (batch 3)": "not run yet",
                      "Kaggle submission": "done"}


def test_build_report(fake_outputs):
    path = run_report.build_report(fake_outputs)
    assert path == fake_outputs / "report.html"
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # status, runs, tables
    assert page.count("not run yet") >= 3 and "make reproduce-table4" in page and "make error-analysis" in page
    for text in ("resnet18-ce", "ResNet18", "synthetic-smoke", "0.7500", "in progress", "no config.json"):
        assert text in page, text
    assert "<table>" in page and "99.50 (0.10)" in page  # table3.md rendered as an HTML table
    assert "&lt;b&gt;caption&lt;/b&gt;" in page  # raw HTML in a caption is escaped
    assert "table3_checkpoints.csv (3 rows)" in page
    # figures inline
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 2
    assert "02_roc_resnet18-ce.png" in page and "Notebook 02" in page
    # the notebook: code collapsed, parameters shown, logs and progress widgets dropped
    assert "02_baseline-resnet18.ipynb" in page and "hello from stdout" in page
    assert "<summary>code</summary>" in page and "parameters of this run" in page
    assert "secret log line" not in page and "HBox" not in page
    assert "with a &lt; sign" in page
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?(https?:|//)", page)


def test_report_of_an_empty_outputs_folder_lists_what_is_missing(tmp_path):
    outputs = tmp_path / "outputs" / "quick"
    outputs.mkdir(parents=True)
    page = run_report.build_report(outputs).read_text()
    assert page.count("not run yet") >= 5 + 4  # the five pieces, runs, tables, figures, notebooks
    assert "settings of the <code>quick</code> profile" in page
    with pytest.raises(DataError, match="nothing has been run"):
        run_report.build_report(tmp_path / "outputs" / "full")


def test_a_damaged_notebook_does_not_stop_the_report(fake_outputs):
    (fake_outputs / "notebooks" / "03_bad.ipynb").write_text("{ not json")
    page = run_report.build_report(fake_outputs).read_text()
    assert "cannot render 03_bad.ipynb" in page and "hello from stdout" in page


def test_command_line(fake_outputs, tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    assert run_report.main(["--outputs", str(fake_outputs), "--out", str(out), "--open-notebooks"]) == 0
    assert "<details class='notebook' id='nb-02-baseline-resnet18' open>" in out.read_text()
    monkeypatch.setenv("NEXPERIA_WORKDIR", str(tmp_path))
    assert run_report.main(["--profile", "smoke"]) == 0
    assert (fake_outputs / "report.html").is_file()
    assert run_report.main(["--profile", "full"]) == 2  # no outputs for it: an error message, no traceback


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_targets_are_defined():
    dry = subprocess.run(["make", "-n", "report", "submission", "PROFILE=smoke"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "nexperia_utils.reporting.html --profile smoke" in dry.stdout
    assert "08_submission.ipynb" in dry.stdout and "-p profile smoke" in dry.stdout
