"""05_sat.ipynb runs top to bottom through papermill on the smoke profile, as `make reproduce-table4`
runs it: first training every loss (loss="all", compare=False: training curves and the mislabel
analysis), then a comparison-only run (loss="none") that reuses the finished runs for Table 4 and the
learning-curve figures. Everything is written into a temporary work directory."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from helpers import run_notebook
from nexperia_utils.evaluation.pixel_reference import REFERENCE_NAME
from nexperia_utils.reporting.published import ROW_KEYS
from nexperia_utils.analysis.loss_study import SAT_LOSSES, STUDY_LOSSES, study_run_name

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

#: Two epochs (SAT from the second): the smoke profile's study, kept short for the shared CPU.
EPOCHS = 2


@pytest.fixture(scope="module")
def sat_workdir(smoke_workdir):
    """Train every loss, then run the comparison only; (work dir, done.json times, comparison notebook)."""
    work = smoke_workdir
    run_notebook("05_sat.ipynb", work, "05_sat-train.ipynb", epochs=EPOCHS, loss="all", compare=False)
    done = {loss: _done_time(work, loss) for loss in STUDY_LOSSES}
    nb = run_notebook("05_sat.ipynb", work, "05_sat.ipynb", epochs=EPOCHS, loss="none", compare=True)
    return work, done, nb


def _done_time(work: Path, loss: str) -> int:
    return (work / "outputs" / "smoke" / "runs" / study_run_name(loss) / "done.json").stat().st_mtime_ns


def _mean(cell: str) -> float:
    return float(cell.split(" ")[0])


def test_every_loss_trained_with_the_study_settings(sat_workdir):
    sat_workdir, _, _ = sat_workdir
    runs = sat_workdir / "outputs" / "smoke" / "runs"
    for loss in STUDY_LOSSES:
        run = runs / study_run_name(loss)
        assert (run / "done.json").exists(), loss
        config = json.loads((run / "config.json").read_text())["config"]
        assert (config["arch"], config["weights"], config["scheduler"], config["batch_size"]) == \
            ("resnet34", "none", "onecycle", 32)  # smoke trains from scratch with its one-cycle recipe
        history = pd.read_csv(run / "history.csv")
        assert len(history) == EPOCHS
        assert history[["val_fpr@100", "test_fpr@100"]].notna().all().all()  # Figure 9 needs both
        snapshots = sorted((run / "sat").glob("epoch_*.npz")) if (run / "sat").exists() else []
        assert len(snapshots) == (EPOCHS if loss in SAT_LOSSES else 0), loss


def test_table4(sat_workdir):
    sat_workdir, _, _ = sat_workdir
    tables = sat_workdir / "outputs" / "smoke" / "tables"
    table = pd.read_csv(tables / "table4.csv", index_col=0, dtype=str)  # the reference: "55.00", no std
    assert table.shape == (6, 6)
    assert list(table.index) == list(ROW_KEYS)
    assert list(table.columns) == ["Cross Entropy", "WBCE", "SAT", "SAT bad 1", "SAT bad boost", REFERENCE_NAME]
    points = pd.read_csv(tables / "table4_operating_points_raw.csv")
    assert list(dict.fromkeys(points["model"])) == list(table.columns)[:5] and len(points) == 5 * 5
    means = table.map(_mean)
    assert ((means >= 0) & (means <= 100)).all().all()
    fprs = means.loc[list(ROW_KEYS[1:])]
    assert (fprs.diff().iloc[1:] >= -1e-9).all().all()  # FPR cannot fall as the TPR level rises
    checkpoints = pd.read_csv(tables / "table4_checkpoints.csv")
    assert len(checkpoints) == 5 * 2  # losses x top-k (smoke: 2)
    assert set(checkpoints["crop"]) == {"center"}
    markdown = (tables / "table4.md").read_text()
    assert "live logits" in markdown and "from scratch" in markdown and "logistic regression on the raw pixels" in markdown


def test_figures_exist(sat_workdir):
    sat_workdir, _, _ = sat_workdir
    figures = sat_workdir / "outputs" / "smoke" / "figures"
    names = ["05_figure4_ce_accuracy_per_class", "05_figure5_ce_loss_per_class",
             "05_figure7_binary_accuracy_per_class", "05_figure8_binary_loss_per_class",
             "05_figure9_fpr100_per_epoch"]
    names += [f"05_curves_{study_run_name(l)}" for l in STUDY_LOSSES]
    names += [f"05_mislabel_detection_{study_run_name(l)}" for l in SAT_LOSSES]
    names += [f"05_lowest_weights_{study_run_name(l)}" for l in SAT_LOSSES]
    for name in names:
        assert (figures / f"{name}.png").stat().st_size > 10_000, name


def test_mislabel_detection_outputs(sat_workdir):
    sat_workdir, _, _ = sat_workdir
    tables = sat_workdir / "outputs" / "smoke" / "tables"
    detection = pd.read_csv(tables / "sat_mislabel_detection.csv", index_col=0)
    assert list(detection.index) == ["SAT", "SAT bad 1", "SAT bad boost"]
    annotations = pd.read_csv(sat_workdir / "data" / "synthetic-smoke" / "annotations.csv", dtype={"image_id": str})
    split = pd.read_csv(next((sat_workdir / "data" / "splits").glob("*.csv")), dtype={"image_id": str})
    train = split[split["split"] == "train"]
    n_noisy = int(annotations.set_index("image_id").loc[train["image_id"], "noisy"].sum())
    assert (detection["n_train"] == len(train)).all() and (detection["n_noisy"] == n_noisy).all()
    assert (detection["epoch"] == EPOCHS).all()
    if n_noisy:
        assert detection["auc"].between(0, 1).all() and detection["median_rank_pct_noisy"].between(0, 100).all()
    weights = pd.read_csv(tables / f"sat_weights_{study_run_name('sat')}.csv", dtype={"image_id": str})
    assert weights["image_id"].tolist() == train["image_id"].tolist()
    assert weights["weight"].between(0, 1.001).all() and weights["weight"].lt(1).any()  # SAT ran one epoch


def test_comparison_only_reuses_finished_runs(sat_workdir):
    work, done, nb = sat_workdir
    assert {loss: _done_time(work, loss) for loss in STUDY_LOSSES} == done  # nothing retrained
    text = "\n".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "losses to train: none" in text
