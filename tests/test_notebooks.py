"""Every notebook runs top to bottom through papermill on the smoke profile (as `make` runs them).

The notebooks write into a temporary work directory (NEXPERIA_WORKDIR), never into the project.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from nexperia_utils.published import ROW_KEYS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def _kernel() -> str:
    return "nexperia" if "nexperia" in KernelSpecManager().find_kernel_specs() else "python3"


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEXPERIA_WORKDIR", str(work))
        yield work


def run_notebook(name: str, work: Path, **parameters) -> nbformat.NotebookNode:
    out = work / "executed" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters={"profile": "smoke", **parameters},
                        kernel_name=_kernel(), cwd=str(NOTEBOOKS), progress_bar=False)
    return nbformat.read(out, as_version=4)


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
    assert table.shape == (6, 9)
    assert list(table.index) == list(ROW_KEYS)
    checkpoints = pd.read_csv(tables / "table3_checkpoints.csv")
    assert len(checkpoints) == 3 * 3 * 2  # models x crops x top-k checkpoints (smoke: 2)
    assert checkpoints[list(ROW_KEYS)].apply(lambda c: c.between(0, 1)).all().all()
    markdown = (tables / "table3.md").read_text()
    assert "trained from scratch" in markdown and "TenCrop" in markdown
