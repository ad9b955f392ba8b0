"""09_distribution_shift runs on the smoke profile after 01_split and 02_baseline (resnet18), as
`make reproduce-shift PROFILE=smoke` runs it, in a temporary work directory (NEXPERIA_WORKDIR)."""
from __future__ import annotations

import pandas as pd
import pytest

from helpers import run_notebook

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_distribution_shift_notebook(smoke_workdir) -> None:
    work = smoke_workdir
    run_notebook("01_split.ipynb", work)
    run_notebook("02_baseline.ipynb", work, arch="resnet18")
    nb = run_notebook("09_distribution_shift.ipynb", work, shots=[2, 4], fine_tune_epochs=1)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors

    out = work / "outputs" / "smoke"
    table = pd.read_csv(out / "tables" / "shift.csv", index_col=0)
    rows = list(table.index)
    assert rows[:4] == ["batch-2 model", "AdaBN (batch-3 BN statistics)", "few-shot fine-tuning, k=2",
                        "few-shot fine-tuning, k=4"]
    assert "several batches (batch 2 + k=4 of batch 3)" in rows
    assert "pixel logistic regression (reference)" in rows and rows[-1].startswith("published")
    assert table.loc["published ResNet18 (the group's slides)", "batch 3 AUC"] == 94.93
    measured = table.drop(index=rows[-1])
    for column in ("batch 2 AUC", "batch 3 AUC"):
        assert measured[column].between(0, 100).all()
    detection = pd.read_csv(out / "tables" / "shift_detection.csv", index_col=0)
    assert {"tin_particle", "camera_glitch", "good"} <= set(detection.columns)
    ood = pd.read_csv(out / "tables" / "shift_ood.csv", index_col=0)
    assert list(ood.index) == ["max_softmax", "energy", "mahalanobis"]
    assert ood[["AUROC camera_glitch", "AUROC tin_particle"]].apply(lambda c: c.between(0, 100)).all().all()
    assert (work / "data" / "synthetic-smoke-batch3" / "annotations.csv").exists()
    assert (out / "runs" / "resnet18-ce-batch2+3" / "done.json").exists()
    for figure in ("09_shift.png", "09_ood_scores.png"):
        assert (out / "figures" / figure).stat().st_size > 5_000
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "batch3_test: " in text and ("ok:" in text or "retrain / adapt" in text)
