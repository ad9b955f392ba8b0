"""Notebooks 03_stn (both STN models) and 04_attention (with Table 2) on the smoke profile.

The fixture trains the two baselines Table 2 needs with ``02_baseline.ipynb`` (VGG19_bn for one
epoch: its checkpoints are large and slow to write) and both STN models with ``03_stn.ipynb``
(VGG19_bn_stn for one epoch too), in a temporary work directory (NEXPERIA_WORKDIR).
"""
from __future__ import annotations

import json
import re

import nbformat
import pandas as pd
import pytest

from helpers import run_notebook
from nexperia_utils.config import get_profile
from nexperia_utils.evaluation.pixel_reference import REFERENCE_NAME
from nexperia_utils.reporting.published import ROW_KEYS
from nexperia_utils.analysis.model_variants import MEMORY_ROW, TABLE2_ROWS, TIME_ROW

SMOKE = get_profile("smoke")
#: epochs of the runs the fixture trains (VGG models: one epoch to keep the module short)
EPOCHS = {"resnet18": SMOKE.epochs, "vgg19_bn": 1, "resnet18_stn": SMOKE.stn_epochs, "vgg19_bn_stn": 1}
MODELS = ["ResNet18", "VGG19_bn", "ResNet18_stn", "VGG19_bn_stn", "ResNet_att_2"]
pytestmark = [pytest.mark.notebook, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(smoke_workdir):
    """A work directory with the two baselines and the two STN models trained (smoke profile)."""
    work = smoke_workdir
    for arch in ("resnet18", "vgg19_bn"):
        run_notebook("02_baseline.ipynb", work, f"02_baseline-{arch}.ipynb", arch=arch, epochs=EPOCHS[arch])
    notebooks = {arch: run_notebook("03_stn.ipynb", work, f"03_stn-{arch}.ipynb", arch=arch, epochs=EPOCHS[arch])
                 for arch in ("resnet18_stn", "vgg19_bn_stn")}
    return work, notebooks


def _outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            parts.append(output.get("text", "") or data.get("text/html", "") or data.get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("arch,momentum", [("resnet18_stn", 0.6), ("vgg19_bn_stn", 0.5)])
def test_stn_notebook(trained, arch, momentum):
    work, notebooks = trained
    out = work / "outputs" / "smoke"
    run = out / "runs" / f"{arch}-ce"
    done = json.loads((run / "done.json").read_text())
    config = json.loads((run / "config.json").read_text())["config"]
    assert done["epochs"] == EPOCHS[arch] == len(pd.read_csv(run / "history.csv"))
    assert config["augment"] is False and config["momentum"] == momentum and config["stn_transform"] == "affine"
    for figure in (f"03_figure2_{arch}-ce", f"03_theta_{arch}-ce", f"03_curves_{arch}-ce"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 10_000
    text = _outputs_text(notebooks[arch])
    assert re.search(r"median share of the STN output showing the image: \d+\.\d%", text)
    assert "theta23" in text and "coverage" in text


def test_attention_notebook_writes_table2(trained):
    work, _ = trained
    nb = run_notebook("04_attention.ipynb", work, assemble_table2=True)
    out = work / "outputs" / "smoke"
    tables = out / "tables"

    table = pd.read_csv(tables / "table2.csv", index_col=0, dtype=str)
    assert table.shape == (8, 6)
    assert list(table.index) == list(TABLE2_ROWS)
    assert list(table.columns) == [*MODELS, REFERENCE_NAME]
    points = pd.read_csv(tables / "table2_operating_points_raw.csv")
    assert list(dict.fromkeys(points["model"])) == MODELS and len(points) == len(MODELS) * 5
    for key in ROW_KEYS:
        for cell in table.loc[key]:
            match = re.fullmatch(r"(\d+\.\d\d)(?: \((\d+\.\d\d)\))?", cell)
            assert match, cell
            assert 0.0 <= float(match.group(1)) <= 100.0
    assert (table.loc[TIME_ROW, MODELS].astype(float) > 0).all()
    assert (table.loc[MEMORY_ROW, MODELS].astype(float) > 0).all()
    assert table.loc[[TIME_ROW, MEMORY_ROW], REFERENCE_NAME].tolist() == ["-", "-"]
    # models with two kept checkpoints get a std, the one-epoch VGG runs a single number
    assert "(" in table.loc["auc", "ResNet18"] and "(" not in table.loc["auc", "VGG19_bn"]

    checkpoints = pd.read_csv(tables / "table2_checkpoints.csv")
    assert checkpoints.groupby("model").size().to_dict() == {
        "ResNet18": 2, "VGG19_bn": 1, "ResNet18_stn": 2, "VGG19_bn_stn": 1, "ResNet_att_2": 2}
    assert checkpoints[list(ROW_KEYS)].apply(lambda c: c.between(0, 1)).all().all()
    runs = pd.read_csv(tables / "table2_runs.csv", index_col=0)
    assert list(runs.index) == MODELS
    assert runs.loc["ResNet18_stn", "momentum"] == 0.6 and not runs.loc["ResNet18_stn", "augment"]
    markdown = (tables / "table2.md").read_text()
    assert "trained from scratch" in markdown and "training time (min)" in markdown

    assert (out / "runs" / "resnet18_att2-ce" / "done.json").exists()
    for figure in ("04_attention_maps_resnet18_att2-ce", "04_roc_table2", "04_curves_resnet18_att2-ce"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 10_000
    text = _outputs_text(nb)
    assert "defect test images have a box" in text and "pointing_game" in text
