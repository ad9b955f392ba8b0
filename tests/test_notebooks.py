"""Every notebook runs top to bottom through papermill on the smoke profile (as `make` runs them).

The notebooks write into a temporary work directory (NEXPERIA_WORKDIR), never into the project.
"""
from __future__ import annotations

import pandas as pd
import pytest

from helpers import run_notebook
from nexperia_utils.reporting.published import ROW_KEYS

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_split_notebook(smoke_workdir):
    run_notebook("01_split.ipynb", smoke_workdir)
    counts = pd.read_csv(smoke_workdir / "outputs" / "smoke" / "tables" / "split_counts.csv", index_col=0)
    assert (counts.loc[counts.index != "total", ["train", "val", "test"]] >= 1).all().all()
    assert (smoke_workdir / "outputs" / "smoke" / "figures" / "01_examples.png").stat().st_size > 10_000
    assert list((smoke_workdir / "data" / "splits").glob("*.csv"))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_baseline_notebook(smoke_workdir, arch):
    run_notebook("02_baseline.ipynb", smoke_workdir, arch=arch)
    run = smoke_workdir / "outputs" / "smoke" / "runs" / f"{arch}-ce"
    assert (run / "done.json").exists()
    assert len(pd.read_csv(run / "history.csv")) == 2


def test_cropping_notebook_writes_table3(smoke_workdir):
    run_notebook("06_cropping.ipynb", smoke_workdir)
    tables = smoke_workdir / "outputs" / "smoke" / "tables"
    table = pd.read_csv(tables / "table3.csv", index_col=0)
    assert table.shape == (6, 10)  # 3 models x 3 crops + the pixel logistic-regression reference
    assert list(table.index) == list(ROW_KEYS)
    assert table.columns[-1].startswith("Pixel LogReg (reference)")
    checkpoints = pd.read_csv(tables / "table3_checkpoints.csv")
    assert len(checkpoints) == 3 * 3 * 2  # models x crops x top-k checkpoints (smoke: 2)
    assert checkpoints[list(ROW_KEYS)].apply(lambda c: c.between(0, 1)).all().all()
    markdown = (tables / "table3.md").read_text()
    assert "trained from scratch" in markdown and "TenCrop" in markdown
    points = pd.read_csv(tables / "table3_operating_points_raw.csv")
    assert len(points) == 3 * 5  # models x target TPRs
    assert (points["test_fpr_low"] <= points["test_fpr"]).all() and (points["test_fpr"] <= points["test_fpr_high"]).all()
    assert (smoke_workdir / "outputs" / "smoke" / "figures" / "06_operating_points.png").exists()
    band = pd.read_csv(tables / "table3_review_band.csv")
    assert (band["caught_in_review"] + band["still_missed"] == band["test_missed_at_threshold"]).all()
    assert (smoke_workdir / "outputs" / "smoke" / "figures" / "06_review_band.png").exists()
