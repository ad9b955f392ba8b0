"""Running a notebook through papermill on the smoke profile, as `make` runs it (notebook tests only)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import papermill as pm
from jupyter_client.kernelspec import KernelSpecManager

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def notebook_kernel() -> str:
    """The project's `nexperia` kernel if it is installed, else `python3`."""
    return "nexperia" if "nexperia" in KernelSpecManager().find_kernel_specs() else "python3"


def run_notebook(name: str, work: Path, out_name: str | None = None, **parameters: Any) -> nbformat.NotebookNode:
    """Execute notebooks/`name` (cwd notebooks/) into work/executed/`out_name` (default `name`); return it."""
    out = work / "executed" / (out_name or name)
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters={"profile": "smoke", **parameters},
                        kernel_name=notebook_kernel(), cwd=str(NOTEBOOKS), progress_bar=False)
    return nbformat.read(out, as_version=4)
