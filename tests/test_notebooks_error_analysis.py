"""07_error_analysis runs on the smoke profile after 01_split and 02_baseline (resnet18), as
`make error-analysis PROFILE=smoke` runs it, in a temporary work directory (NEXPERIA_WORKDIR).

The smoke test part holds no annotated mislabel, so the notebook gets a corrections CSV that
relabels every good test image as `scratch`: only the top K of them may change (Table 5).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import run_notebook
from nexperia_utils.reporting.published import ROW_KEYS

pytestmark = [pytest.mark.notebook, pytest.mark.slow]
K = 3


def test_error_analysis_notebook(smoke_workdir) -> None:
    work = smoke_workdir
    run_notebook("01_split.ipynb", work)
    run_notebook("02_baseline.ipynb", work, arch="resnet18")
    split = pd.read_csv(next((work / "data" / "splits").glob("*.csv")), dtype={"image_id": str})
    good_test = split[(split["split"] == "test") & (split["label"] == "good")]["image_id"]
    corrections = work / "corrections.csv"
    pd.DataFrame({"image_id": good_test, "corrected_label": "scratch"}).to_csv(corrections, index=False)

    nb = run_notebook("07_error_analysis.ipynb", work, top_k_relabel=K, gallery_size=6,
                      corrections_csv=str(corrections))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors

    out = work / "outputs" / "smoke"
    run = "resnet18-ce"
    # suspected mislabels: every good-labelled image of train/val/test, ranked 1..n by suspicion
    ranking = pd.read_csv(out / "suspected_mislabels.csv", dtype={"image_id": str})
    n_good = int((split["label"] == "good").sum())
    assert len(ranking) == n_good and (ranking["label"] == "good").all()
    assert ranking["rank"].tolist() == list(range(1, n_good + 1))
    assert ranking["suspicion"].is_monotonic_decreasing
    assert ranking["defect_score"].between(0, 1).all() and set(ranking["part"]) == {"train", "val", "test"}
    template = pd.read_csv(out / "corrections_template.csv", dtype={"image_id": str})
    top = ranking[ranking["part"] == "test"]["image_id"].head(K).tolist()
    assert template["image_id"].tolist() == top

    # Table 5: exactly the top K good test images were relabelled; corrected and filed columns
    applied = pd.read_csv(out / "tables" / "table5_corrections.csv", dtype={"image_id": str})
    assert applied["image_id"].tolist() == top and (applied["corrected_label"] == "scratch").all()
    table5 = pd.read_csv(out / "tables" / "table5.csv", index_col=0)
    assert list(table5.index) == list(ROW_KEYS) and list(table5.columns) == ["ResNet18", "ResNet18 (corrected)"]
    checkpoints = pd.read_csv(out / "tables" / "table5_checkpoints.csv")
    assert len(checkpoints) == 2 * 2  # smoke top-k 2, filed + corrected labels
    assert checkpoints[list(ROW_KEYS)].apply(lambda c: c.between(0, 1)).all().all()
    assert "3 of them changed label" in (out / "tables" / "table5.md").read_text()

    # operating points, localisation and ranking quality tables
    points = pd.read_csv(out / "tables" / f"07_operating_points_{run}.csv")
    assert len(points) == 6 and points[["tpr", "fpr"]].apply(lambda c: c.between(0, 1)).all().all()
    assert points.iloc[-1]["missed_defects"] == 0  # TPR = 100 %: no escape by definition
    localisation = pd.read_csv(out / "tables" / f"07_localisation_{run}.csv", index_col=0)
    assert localisation.loc["all", "n"] >= 9  # every smoke test defect has a box
    assert localisation[["pointing_game", "mass_in_box", "chance"]].apply(lambda c: c.between(0, 100)).all().all()
    by_layer = pd.read_csv(out / "tables" / f"07_localisation_layers_{run}.csv", index_col=0)
    assert by_layer.index.tolist() == [f"layer{k} {m}" for k in range(1, 5) for m in ("gradcam", "layercam")]
    assert (by_layer["pointing_game"] <= by_layer["pointing_bound"]).all() and by_layer["chosen"].sum() == 2
    quality = pd.read_csv(out / "tables" / f"07_mislabel_ranking_{run}.csv")
    assert set(quality["scope"]) >= {"all", "test"}

    for name in ("confusion", "scores_per_class", "gallery_missed_at_0.5", "gallery_lowest_defects",
                 "gallery_highest_good", "mislabel_precision_recall", "embeddings"):
        figure = out / "figures" / f"07_{name}_{run}.png"
        assert figure.stat().st_size > 5_000, figure
    text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "features: (18, 512)" in text
    assert np.isfinite(localisation.loc["all", "mass_in_box"])

    # another checkpoint and CAM method of the same run: its own file names, the default analysis kept
    default_table = out / "tables" / f"07_localisation_{run}.csv"
    before = default_table.read_bytes()
    run_notebook("07_error_analysis.ipynb", work, "07_epoch1_layercam.ipynb", checkpoint=1, cam_method="layercam",
                 top_k_relabel=K, gallery_size=6, corrections_csv=str(corrections))
    tag = f"{run}-epoch001-layercam"
    assert (out / "tables" / f"07_localisation_{tag}.csv").exists()
    assert (out / "figures" / f"07_gallery_lowest_defects_{tag}.png").stat().st_size > 5_000
    assert "layercam" in (out / "tables" / f"07_localisation_{tag}.caption.txt").read_text()
    assert default_table.read_bytes() == before
