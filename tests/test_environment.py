"""pyproject.toml and environment.yml declare the same packages."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()
    return CONDA_NAMES.get(name, name)


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_side = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            conda_side |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        elif _name(dep) not in ("python", "pip"):
            conda_side.add(_name(dep))
    assert pip_side == conda_side, f"only in pyproject: {pip_side - conda_side}; only in environment.yml: {conda_side - pip_side}"


def test_torch_requirement_is_at_least_2_14():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert ">=2.14" in torch_req


def test_notebooks_match_their_sources():
    """notebooks/src/*.py are the editable form of the notebooks; tools/nbbuild.py builds them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nbbuild", ROOT / "tools" / "nbbuild.py")
    nbbuild = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nbbuild)
    import nbformat

    for source in sorted((ROOT / "notebooks" / "src").glob("*.py")):
        built = nbbuild.build(source)
        committed = nbformat.read(ROOT / "notebooks" / f"{source.stem}.ipynb", as_version=4)
        assert [c.source for c in built.cells] == [c.source for c in committed.cells], \
            f"{source.name}: rebuild with `python tools/nbbuild.py {source} notebooks/{source.stem}.ipynb`"
