"""Build a notebook from a compact description: cells separated by lines '# %% [markdown]' / '# %%' / '# %% parameters'.

Usage: python tools/nbbuild.py notebooks/src/01_split.py notebooks/01_split.ipynb
The .py sources under notebooks/src are the editable form; the .ipynb files are what users open.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def build(source: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "nexperia", "display_name": "Python (nexperia)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    kind, lines = None, []

    def flush() -> None:
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cell = nbformat.v4.new_code_cell(text)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)

    for line in source.read_text().splitlines():
        if line.startswith("# %%"):
            flush()
            tag = line[4:].strip()
            kind = "markdown" if tag == "[markdown]" else "parameters" if tag == "parameters" else "code"
            lines = []
        else:
            lines.append(line)
    flush()
    return nb


if __name__ == "__main__":
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    nbformat.write(build(src), dst)
