"""The make targets' notebook runner: bad input reads as one message, and only complete notebooks are written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import NOTEBOOKS, notebook_kernel


def _notebook(path: Path, *sources: str) -> Path:
    cells = [nbformat.v4.new_code_cell("x = 1")]
    cells[0].metadata["tags"] = ["parameters"]
    cells += [nbformat.v4.new_code_cell(source) for source in sources]
    metadata = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
                "language_info": {"name": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=metadata), path)
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nexperia_utils.run_notebook", "--kernel", notebook_kernel(),
                           "--no-progress-bar", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_project_error_prints_its_message_and_writes_no_notebook(workdir):
    out = workdir / "out" / "01_split.ipynb"
    missing = workdir / "no-such-data"
    done = _run("--cwd", str(NOTEBOOKS), str(NOTEBOOKS / "01_split.ipynb"), str(out),
                "-p", "profile", "smoke", "-p", "data_root", str(missing))
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("error: 01_split.ipynb: data root") and str(missing) in message
    assert "Traceback" not in done.stderr
    assert list((workdir / "out").iterdir()) == []


def test_other_failure_keeps_the_executed_notebook_apart(tmp_path):
    notebook = _notebook(tmp_path / "boom.ipynb", "raise RuntimeError(f'bad {x}')")
    out = tmp_path / "out.ipynb"
    done = _run(str(notebook), str(out), "-p", "x", "7")
    assert done.returncode == 1
    assert "RuntimeError: bad 7" in done.stderr and "out.failed.ipynb" in done.stderr
    assert not out.exists()
    kept = nbformat.read(tmp_path / "out.failed.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in kept.cells for o in c.get("outputs", []))


def test_success_writes_the_output_and_clears_an_old_failure(tmp_path):
    notebook = _notebook(tmp_path / "fine.ipynb", "print(x * 2)")
    (tmp_path / "out.failed.ipynb").write_text("{}")
    done = _run(str(notebook), str(tmp_path / "out.ipynb"), "-p", "x", "21")
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "42" in executed.cells[-1].outputs[0]["text"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fine.ipynb", "out.ipynb"]


@pytest.mark.parametrize("args", [[], ["only.ipynb"]])
def test_usage_error_without_input_and_output(args):
    done = _run(*args)
    assert done.returncode == 2 and "usage:" in done.stderr
