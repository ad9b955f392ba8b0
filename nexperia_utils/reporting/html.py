"""One self-contained HTML report of a profile's outputs (``make report``).

Reads ``outputs/<profile>/`` and writes ``outputs/<profile>/report.html`` with

* what has been run and what not yet (Tables 2-4, the error analysis, the distribution shift, the Kaggle
  submission),
* an index of the trained runs (one row per ``runs/*``: model, loss, data, epochs, training time,
  peak memory, best validation AUC and, when the run was evaluated, its test metrics),
* every table (``tables/*.md`` rendered; CSV-only tables collapsed), every figure
  (``figures/*.png`` embedded as data URIs) and every executed notebook (``notebooks/*.ipynb``,
  rendered with nbconvert's ``HTMLExporter``, code cells collapsed, log output dropped).

The file needs nothing beside it: styles and images are inline. Missing pieces are listed as
"not run yet", never an error. Command line::

    python -m nexperia_utils.reporting.html --profile quick      # or --outputs outputs/quick
"""
from __future__ import annotations

import argparse
import base64
import copy
import html
import logging
import math
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nexperia_utils.config import PROFILES, PROJECT_ROOT, get_profile, workdir
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.io import atomic_write_text
from nexperia_utils.reporting.run_index import piece_status, runs_index

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
#: At most this many rows of a CSV-only table are shown.
MAX_CSV_ROWS = 200


# --------------------------------------------------------------------------------------------
# Rendering pieces
# --------------------------------------------------------------------------------------------

def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _format_cell(column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        if "AUC" in column or "FPR" in column:
            return f"{value:.4f}"
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def frame_html(frame: pd.DataFrame, index: bool = False, css: str = "data") -> str:
    """A DataFrame as an escaped HTML table; numeric cells right-aligned (class ``num``)."""
    shown = frame.reset_index() if index else frame
    head = "".join(f"<th>{_esc(c)}</th>" for c in shown.columns)
    rows = []
    for values in shown.itertuples(index=False):
        cells = []
        for column, value in zip(shown.columns, values):
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            cls = " class='num'" if numeric else ""
            cells.append(f"<td{cls}>{_esc(_format_cell(str(column), value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='{_esc(css)}'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def markdown_html(text: str) -> str:
    """Markdown (with GitHub tables) to HTML, raw HTML escaped (mistune, nbconvert's renderer)."""
    import mistune

    render = mistune.create_markdown(escape=True, plugins=["table", "strikethrough"])
    return str(render(text))


def figure_data_uri(path: Path) -> str:
    """``data:image/png;base64,...`` of an image file."""
    suffix = Path(path).suffix.lower().lstrip(".")
    mime = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml"}.get(suffix, "image/png")
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


_NOTEBOOK_TEMPLATE = """{%- extends 'basic/index.html.j2' -%}
{% block input_group -%}
{%- set tags = cell.metadata.get('tags', []) -%}
{%- if 'injected-parameters' in tags -%}
<details class="code params" open><summary>parameters of this run</summary>{{ super() }}</details>
{%- elif 'parameters' in tags -%}
<details class="code"><summary>default parameters</summary>{{ super() }}</details>
{%- elif cell.source.strip() -%}
<details class="code"><summary>code</summary>{{ super() }}</details>
{%- endif -%}
{%- endblock input_group %}
"""

_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def clean_notebook(nb):
    """A copy of ``nb`` without log/progress output: stderr streams and widget (tqdm) displays."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                continue
            if _WIDGET_MIME in output.get("data", {}):
                continue
            kept.append(output)
        cell["outputs"] = kept
    return nb


def notebook_html(path: Path) -> str:
    """The body of an executed notebook as HTML (nbconvert ``basic`` template, code collapsed)."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(path), as_version=4)
    exporter = HTMLExporter(
        template_name="basic",
        extra_loaders=[jinja2.DictLoader({"nexperia_report.html.j2": _NOTEBOOK_TEMPLATE})],
        template_file="nexperia_report.html.j2",
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(clean_notebook(nb))
    return body


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1f2328;
     background:#fff;line-height:1.45;font-size:15px}
main{max-width:1200px;margin:0 auto;padding:24px 32px 64px}
header.top{background:#0b3d5c;color:#fff;padding:22px 32px}
header.top h1{margin:0 0 6px;font-size:26px} header.top p{margin:2px 0;color:#d5e4ee;font-size:14px}
h2{border-bottom:2px solid #0b3d5c;padding-bottom:4px;margin-top:40px;color:#0b3d5c}
h3{margin-top:28px;color:#24425a}
nav.toc{background:#f4f7f9;border:1px solid #dde4ea;border-radius:6px;padding:10px 18px;margin:18px 0}
nav.toc ul{margin:4px 0;padding-left:20px} nav.toc li{margin:2px 0}
a{color:#0b5ea8}
table.data{border-collapse:collapse;margin:10px 0 6px;font-size:13px;font-variant-numeric:tabular-nums}
table.data th,table.data td,.table-md table th,.table-md table td{border:1px solid #d0d7de;padding:4px 8px;
     text-align:left;vertical-align:top}
table.data th,.table-md table th{background:#eef2f6}
table.data td.num{text-align:right}
table.data tr:nth-child(even) td,.table-md table tr:nth-child(even) td{background:#f8fafb}
.table-md table{border-collapse:collapse;font-size:13px;margin:10px 0 4px;font-variant-numeric:tabular-nums}
.table-md p{max-width:1000px;color:#444;font-size:13.5px}
.scroll{overflow-x:auto}
.status-done{color:#116329;font-weight:600} .status-missing{color:#9a6700;font-weight:600}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:18px}
figure{margin:0;border:1px solid #dde4ea;border-radius:6px;padding:8px;background:#fff}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:12.5px;color:#555;margin-top:4px;text-align:center;font-family:monospace}
details{margin:6px 0} summary{cursor:pointer;color:#0b5ea8}
details.notebook{border:1px solid #dde4ea;border-radius:6px;padding:6px 14px;margin:12px 0;background:#fcfdfe}
details.notebook>summary{font-size:17px;font-weight:600;padding:4px 0}
.nb .cell{margin:8px 0}
.nb details.code>summary{font-size:12px;color:#6e7781}
.nb details.params>summary{color:#0b5ea8}
.nb .input_area{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:4px 8px;font-size:12.5px}
.nb pre{margin:0;white-space:pre-wrap;word-break:break-word;font-size:12.5px}
.nb .output_area{overflow-x:auto;margin:4px 0}
.nb .output_stdout pre,.nb .output_text pre{background:#fff;padding:2px 4px}
.nb .output_error pre{background:#fff0f0}
.nb .output_png img{max-width:100%;height:auto}
.nb table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
.nb table th,.nb table td{border:1px solid #d0d7de;padding:3px 7px;text-align:right}
.nb table th{background:#eef2f6}
.nb .rendered_html h1{font-size:22px;color:#0b3d5c} .nb .rendered_html h2{font-size:18px;border:none;margin-top:18px}
.nb a.anchor-link{display:none}
.missing{color:#9a6700}
"""


#: Opens a collapsed notebook when a link to it is followed (inline: the report stays self-contained).
_JS = """
function openTarget(){var id=decodeURIComponent(location.hash.slice(1));var el=id&&document.getElementById(id);
 if(el&&el.tagName==="DETAILS"){el.open=true;el.scrollIntoView();}}
window.addEventListener("hashchange",openTarget);openTarget();
"""


def _pygments_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".nb .highlight")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

def _status_section(status: pd.DataFrame) -> str:
    rows = []
    for r in status.itertuples(index=False):
        css = "status-done" if r.status == "done" else "status-missing"
        rows.append(f"<tr><td>{_esc(r.piece)}</td><td class='{css}'>{_esc(r.status)}</td>"
                    f"<td>{_esc(r.files)}</td><td><code>{_esc(r.command)}</code></td></tr>")
    return ("<table class='data'><thead><tr><th>piece</th><th>status</th><th>files</th><th>make target</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>")


def _table_order(path: Path) -> tuple:
    """The report's tables first, by number (table2 < table10), then the others by name."""
    stem = path.stem
    number = stem[len("table"):].split("_", 1)[0]
    if stem.startswith("table") and number.isdigit():
        return (0, int(number), stem)
    return (1, 0, stem)


def table_title(stem: str) -> str:
    """``table3`` -> ``Table 3``, ``table3_checkpoints`` -> ``Table 3 checkpoints``, ``split_counts`` -> ``Split counts``."""
    head, _, rest = stem.partition("_")
    if head.startswith("table") and head[len("table"):].isdigit():
        return f"Table {head[len('table'):]}" + (f" {rest.replace('_', ' ')}" if rest else "")
    text = stem.replace("_", " ")
    return text[:1].upper() + text[1:]


def _tables_section(tables_dir: Path) -> tuple[str, list[str]]:
    parts, names = [], []
    md_files = sorted(tables_dir.glob("*.md"), key=_table_order) if tables_dir.is_dir() else []
    for md in md_files:
        names.append(md.stem)
        parts.append(f"<h3 id='table-{_slug(md.stem)}'>{_esc(table_title(md.stem))}</h3>"
                     f"<div class='table-md scroll'>{markdown_html(md.read_text(encoding='utf-8'))}</div>")
    md_stems = {p.stem for p in md_files}
    csv_only = [p for p in sorted(tables_dir.glob("*.csv")) if p.stem not in md_stems] if tables_dir.is_dir() else []
    if csv_only:
        parts.append("<h3>Data tables (CSV)</h3>")
    for csv in csv_only:
        try:
            frame = pd.read_csv(csv)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            parts.append(f"<p class='missing'>{_esc(csv.name)}: cannot be read ({_esc(err)})</p>")
            continue
        note = f" (first {MAX_CSV_ROWS} of {len(frame)} rows)" if len(frame) > MAX_CSV_ROWS else f" ({len(frame)} rows)"
        parts.append(f"<details><summary>{_esc(csv.name)}{_esc(note)}</summary><div class='scroll'>"
                     f"{frame_html(frame.head(MAX_CSV_ROWS))}</div></details>")
    if not parts:
        return "<p class='missing'>No tables yet (not run yet).</p>", names
    return "\n".join(parts), names


def _figures_section(figures_dir: Path) -> str:
    files = sorted(p for p in figures_dir.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg")) \
        if figures_dir.is_dir() else []
    if not files:
        return "<p class='missing'>No figures yet (not run yet).</p>"
    groups: dict[str, list[Path]] = {}
    for path in files:
        prefix = path.stem.split("_", 1)[0]
        groups.setdefault(prefix if prefix.isdigit() else "other", []).append(path)
    out = []
    for prefix, paths in groups.items():
        title = f"Notebook {prefix}" if prefix.isdigit() else "Other figures"
        figs = "".join(f"<figure><img src='{figure_data_uri(p)}' alt='{_esc(p.stem)}' loading='lazy'>"
                       f"<figcaption>{_esc(p.name)}</figcaption></figure>" for p in paths)
        out.append(f"<h3>{_esc(title)}</h3><div class='figs'>{figs}</div>")
    return "\n".join(out)


def _notebooks_section(notebooks_dir: Path, open_notebooks: bool) -> tuple[str, list[tuple[str, str]]]:
    files = sorted(notebooks_dir.glob("*.ipynb")) if notebooks_dir.is_dir() else []
    if not files:
        return "<p class='missing'>No executed notebooks yet (not run yet).</p>", []
    out, toc = [], []
    for path in files:
        anchor = f"nb-{_slug(path.stem)}"
        toc.append((anchor, path.name))
        try:
            body = notebook_html(path)
        except Exception as err:  # a damaged notebook must not stop the report  # noqa: BLE001
            logger.warning("cannot render %s: %s", path, err)
            body = f"<p class='missing'>cannot render {_esc(path.name)}: {_esc(err)}</p>"
        out.append(f"<details class='notebook' id='{anchor}'{' open' if open_notebooks else ''}>"
                   f"<summary>{_esc(path.name)}</summary><div class='nb'>{body}</div></details>")
    return "\n".join(out), toc


def _profile_section(profile: str) -> str:
    if profile not in PROFILES:
        return ""
    settings = pd.DataFrame([PROFILES[profile].to_dict()]).T.reset_index()
    settings.columns = ["parameter", "value"]
    return (f"<details><summary>settings of the <code>{_esc(profile)}</code> profile</summary>"
            f"{frame_html(settings)}</details>")


def build_report(outputs_dir: Path, out_path: Path | None = None, title: str | None = None,
                 splits_dir: Path | None = None, open_notebooks: bool = False) -> Path:
    """Write the HTML report of ``outputs_dir`` (default ``<outputs_dir>/report.html``); return its path."""
    outputs_dir = Path(outputs_dir)
    if not outputs_dir.is_dir():
        raise DataError(f"{outputs_dir} does not exist: nothing has been run for this profile yet. Fix: run "
                        "`make all` (or a single target such as `make reproduce-table3`) first.")
    out_path = outputs_dir / REPORT_NAME if out_path is None else Path(out_path)
    profile = outputs_dir.name
    title = title or f"nexperia: {profile} profile report"

    status = piece_status(outputs_dir)
    runs = runs_index(outputs_dir, splits_dir)
    tables_html, table_names = _tables_section(outputs_dir / "tables")
    figures_html = _figures_section(outputs_dir / "figures")
    notebooks_html, notebook_toc = _notebooks_section(outputs_dir / "notebooks", open_notebooks)
    runs_html = (f"<div class='scroll'>{frame_html(runs)}</div>" if not runs.empty
                 else "<p class='missing'>No trained runs yet (not run yet).</p>")

    toc_tables = "".join(f"<li><a href='#table-{_slug(n)}'>{_esc(table_title(n))}</a></li>" for n in table_names)
    toc_nbs = "".join(f"<li><a href='#{a}'>{_esc(n)}</a></li>" for a, n in notebook_toc)
    commit = _git_commit()
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    done = int((status["status"] == "done").sum())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}
{_pygments_css()}</style></head>
<body>
<header class="top"><h1>{_esc(title)}</h1>
<p>Generated {_esc(generated)} from <code>{_esc(outputs_dir)}</code>{f' at commit {_esc(commit)}' if commit else ''};
{done} of {len(status)} pieces done, {len(runs)} run(s).</p></header>
<main>
<nav class="toc"><strong>Contents</strong><ul>
<li><a href="#status">What has been run</a></li>
<li><a href="#runs">Runs</a></li>
<li><a href="#tables">Tables</a><ul>{toc_tables}</ul></li>
<li><a href="#figures">Figures</a></li>
<li><a href="#notebooks">Executed notebooks</a><ul>{toc_nbs}</ul></li>
</ul></nav>
<h2 id="status">What has been run</h2>
{_status_section(status)}
{_profile_section(profile)}
<h2 id="runs">Runs</h2>
<p>One row per <code>runs/*</code> folder. Test metrics: mean over the kept checkpoints evaluated on the test part
with the centre crop (AUC; FPR at TPR = 100 %), when the run has been evaluated.</p>
{runs_html}
<h2 id="tables">Tables</h2>
{tables_html}
<h2 id="figures">Figures</h2>
{figures_html}
<h2 id="notebooks">Executed notebooks</h2>
<p>Code cells are collapsed (click <em>code</em> to open them); log output is left out.</p>
{notebooks_html}
</main>
<script>{_JS}</script>
</body></html>
"""
    atomic_write_text(out_path, page)
    logger.info("wrote the report %s (%.1f MB)", out_path, out_path.stat().st_size / 1e6)
    return out_path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nexperia_utils.reporting.html``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nexperia_utils.reporting.html",
                                     description="Build outputs/<profile>/report.html from a profile's outputs.")
    parser.add_argument("--profile", default="quick", help="profile whose outputs are reported (default quick)")
    parser.add_argument("--outputs", type=Path, help="outputs folder (default <work dir>/outputs/<profile>)")
    parser.add_argument("--out", type=Path, help="report file (default <outputs>/report.html)")
    parser.add_argument("--open-notebooks", action="store_true", help="show the notebooks expanded")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        outputs = args.outputs or get_profile(args.profile).outputs_dir()
        build_report(outputs, args.out, open_notebooks=args.open_notebooks,
                            splits_dir=None if args.outputs else workdir() / "data" / "splits")
    except (DataError, ConfigError) as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
