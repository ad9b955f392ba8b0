"""Tables in the report's shape (mean (std) % over checkpoints), Markdown rendering, one writer for all.

Evaluation results are a long DataFrame with one row per (model, crop, checkpoint) evaluation:
columns ``model`` (display name, e.g. ``"ResNet18"``), ``crop`` (``"center" | "five" | "ten"``),
``checkpoint``, ``epoch`` and the metric columns :data:`ROW_KEYS` as FRACTIONS in [0, 1]. Other
grouping columns (e.g. ``loss_label`` for Table 4) can be named in ``columns``.

:func:`write_table` writes every table of the project (``.csv``, ``.md`` with the caption,
``.caption.txt``), in the report's shape or not (``row_labels={}``).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import DataError
from nexperia_utils.evaluation.predict import evaluate_run
from nexperia_utils.io import atomic_write_text
from nexperia_utils.reporting.published import ROW_KEYS, ROW_LABELS, format_cell

log = logging.getLogger(__name__)

#: Display label of each crop style, in the report's column order.
CROP_LABELS: dict[str, str] = {"center": "CenterCrop", "five": "FiveCrop", "ten": "TenCrop"}

#: Header of the row-label column in rendered tables (the report's top-left cell).
INDEX_HEADER = "mean (std) %"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _check_results(results: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise :class:`DataError` unless ``results`` has the group and metric columns, as fractions."""
    if not isinstance(results, pd.DataFrame):
        raise DataError(f"results must be a pandas DataFrame, got {type(results).__name__}.")
    if len(columns) == 0:
        raise DataError("columns must name at least one grouping column (e.g. ('model', 'crop')).")
    missing = [c for c in (*columns, *ROW_KEYS) if c not in results.columns]
    if missing:
        raise DataError(
            f"results lacks the column(s) {missing}; it has {list(results.columns)}. Evaluation results "
            f"need the grouping columns {list(columns)} and the metric columns {list(ROW_KEYS)} "
            "(fractions in [0, 1]) as written by nexperia_utils.evaluation.predict."
        )
    if results.empty:
        raise DataError("results has no rows: evaluate at least one checkpoint before making a table.")
    if results[list(columns)].isna().any().any():
        raise DataError(f"results has missing values in the grouping column(s) {list(columns)}; fill or drop them.")
    for key in ROW_KEYS:
        values = pd.to_numeric(results[key], errors="coerce")
        bad = values.isna() & results[key].notna()
        if bad.any():
            raise DataError(f"results column {key!r} holds non-numeric values such as {results[key][bad].iloc[0]!r}.")
        finite = values.dropna()
        if ((finite < 0) | (finite > 1 + 1e-9)).any():
            raise DataError(
                f"results column {key!r} has values outside [0, 1] (max {finite.max():g}): metrics must be "
                "fractions, not percentages. Divide by 100 or pass the raw evaluation output."
            )


def order_rank(column: str, values: pd.Series) -> dict:
    """Rank of each distinct value: crops in :data:`CROP_LABELS` order, others by first appearance."""
    distinct = list(dict.fromkeys(values.tolist()))
    if column == "crop":
        known = [c for c in CROP_LABELS if c in distinct]
        distinct = known + [c for c in distinct if c not in CROP_LABELS]
    return {v: i for i, v in enumerate(distinct)}


def _display(column: str, value) -> str:
    if column == "crop":
        return CROP_LABELS.get(str(value), str(value))
    return str(value)


def _group_label(columns: Sequence[str], group: tuple) -> str:
    """``("ResNet18", "center")`` -> ``"ResNet18 / CenterCrop"``."""
    return " / ".join(_display(c, v) for c, v in zip(columns, group, strict=True))


def _default_order(results: pd.DataFrame, columns: Sequence[str]) -> list[tuple]:
    ranks = [order_rank(c, results[c]) for c in columns]
    groups = list(dict.fromkeys(map(tuple, results[list(columns)].itertuples(index=False, name=None))))
    return sorted(groups, key=lambda g: tuple(r[v] for r, v in zip(ranks, g)))


def summary_values(results: pd.DataFrame, columns: Sequence[str] = ("model", "crop")) -> pd.DataFrame:
    """Mean and sample std (ddof=1) in percent of every metric per group of ``columns``.

    Returns a long frame with the group columns, ``metric`` (a :data:`ROW_KEYS` key), ``mean_pct``,
    ``std_pct`` (NaN where the group has fewer than two finite values) and ``n`` (the number of
    finite values averaged: NaN metrics, e.g. an undefined AUC, are left out). Groups are ordered
    by first appearance, crop styles in the report's order (center, five, ten); metrics in
    :data:`ROW_KEYS` order.

    Raises:
        DataError: a grouping or metric column is missing, or metrics are not fractions.
    """
    columns = list(columns)
    _check_results(results, columns)
    order = _default_order(results, columns)
    parts = {
        (key if isinstance(key, tuple) else (key,)): frame
        for key, frame in results.groupby(columns, sort=False, dropna=False)
    }
    rows = []
    for group in order:
        part = parts[group]
        for key in ROW_KEYS:
            values = pd.to_numeric(part[key], errors="coerce").dropna().to_numpy(dtype=float) * 100.0
            n = int(values.size)
            mean = float(values.mean()) if n else float("nan")
            std = float(values.std(ddof=1)) if n > 1 else float("nan")
            rows.append({**dict(zip(columns, group)), "metric": key, "mean_pct": mean, "std_pct": std, "n": n})
    return pd.DataFrame(rows, columns=[*columns, "metric", "mean_pct", "std_pct", "n"])


def summary_table(
    results: pd.DataFrame,
    columns: Sequence[str] = ("model", "crop"),
    column_order: Sequence[tuple] | None = None,
) -> pd.DataFrame:
    """Results in the report's shape: rows :data:`ROW_KEYS`, one column per group, ``"mean (std)"``.

    Cells are percentages with 2 decimals; the std is the sample std (ddof=1) over the group's
    checkpoints. A group with a single evaluation gets the mean alone (``"99.70"``), as the report
    prints its single-checkpoint models; a metric with no finite value gets ``"n/a"``.

    Args:
        results: long evaluation results (see the module docstring), metrics as fractions.
        columns: grouping columns; the column label joins their values with ``" / "`` (crops shown
            with :data:`CROP_LABELS`), e.g. ``"ResNet18 / CenterCrop"`` - the labels of
            :func:`nexperia_utils.reporting.published.published_table`.
        column_order: the groups to show, in order, as tuples of values of ``columns`` (plain values
            are accepted when grouping by one column). Default: every group, by first appearance
            with crops in the report's order.

    Returns:
        A DataFrame of strings, index :data:`ROW_KEYS` named ``"metric"`` (render with
        :data:`ROW_LABELS`, as :func:`to_markdown` does). Numbers: :func:`summary_values`.

    Raises:
        DataError: missing columns, metrics not fractions, or a ``column_order`` group not present.
    """
    columns = list(columns)
    values = summary_values(results, columns)
    present = _default_order(results, columns)
    if column_order is None:
        order = present
    else:
        order = [tuple(g) if isinstance(g, (tuple, list)) else (g,) for g in column_order]
        wrong = [g for g in order if len(g) != len(columns)]
        if wrong:
            raise DataError(f"column_order entries {wrong} do not have one value per grouping column {columns}.")
        absent = [g for g in order if g not in set(present)]
        if absent:
            raise DataError(f"column_order names group(s) {absent} that are not in results; present: {present}.")
    keyed = values.set_index([*columns, "metric"])
    data = {
        _group_label(columns, group): [
            format_cell(float(keyed.loc[(*group, key), "mean_pct"]), float(keyed.loc[(*group, key), "std_pct"]))
            for key in ROW_KEYS
        ]
        for group in order
    }
    return pd.DataFrame(data, index=pd.Index(ROW_KEYS, name="metric"), dtype=object)


def _escape_md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _column_header(column) -> str:
    if isinstance(column, tuple):
        return " ".join(f"({part})" if i else str(part) for i, part in enumerate(column))
    return str(column)


def to_markdown(
    table: pd.DataFrame,
    caption: str,
    row_labels: Mapping[str, str] | None = None,
    index_header: str = INDEX_HEADER,
) -> str:
    """A GitHub-flavoured Markdown table of ``table`` with ``caption`` as a paragraph below.

    Row labels come from ``row_labels`` (default :data:`ROW_LABELS`; unknown index values are shown
    as they are); two-level columns (:func:`side_by_side`) become ``"ResNet18 (ours)"`` headers.
    Pipes in cells are escaped.
    """
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"to_markdown needs a DataFrame, got {type(table).__name__}.")
    labels = ROW_LABELS if row_labels is None else row_labels
    header = [index_header, *(_column_header(c) for c in table.columns)]
    lines = [
        "| " + " | ".join(_escape_md(h) for h in header) + " |",
        "| " + " | ".join([":---"] + ["---:"] * len(table.columns)) + " |",
    ]
    for index, row in table.iterrows():
        label = labels.get(index, index) if isinstance(index, str) else index
        cells = ["" if (isinstance(v, float) and math.isnan(v)) else v for v in row.tolist()]
        lines.append("| " + " | ".join(_escape_md(c) for c in [label, *cells]) + " |")
    text = "\n".join(lines) + "\n"
    if caption:
        text += "\n" + caption.strip() + "\n"
    return text


def check_name(name: str) -> None:
    """Refuse an output name that is not a plain file stem (it would write outside the folder)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DataError(
            f"Output name {name!r} is not a plain file stem: use letters, digits, '.', '_' or '-' "
            "(no folders, no spaces), e.g. 'table3'."
        )


def write_table(table: pd.DataFrame, out_dir: Path, name: str, caption: str,
                index_header: str = INDEX_HEADER, row_labels: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``<name>.csv`` (plain table), ``<name>.md`` (table + caption) and ``<name>.caption.txt``.

    ``index_header`` heads the Markdown table's first column (the row labels); ``row_labels`` maps
    index values to the labels shown (default: the report's metric names, :data:`ROW_LABELS`; ``{}``
    for a table that is not in the report's shape, whose index is shown as it is).

    Everything is rendered in memory and validated before the first file is written; each file is
    written atomically (``nexperia_utils.io``). Returns ``(csv_path, md_path)``.

    Raises:
        DataError: ``table`` is not a non-empty DataFrame or ``name`` is not a plain file stem.
    """
    check_name(name)
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise DataError(f"write_table({name!r}) needs a non-empty DataFrame, got {type(table).__name__}.")
    if not isinstance(caption, str):
        raise DataError(f"write_table({name!r}): caption must be a string, got {type(caption).__name__}.")
    csv_text = table.to_csv(index=True)
    md_text = to_markdown(table.astype(object), caption, row_labels=row_labels, index_header=index_header)  # ints stay ints
    out_dir = Path(out_dir)
    csv_path = atomic_write_text(out_dir / f"{name}.csv", csv_text)
    md_path = atomic_write_text(out_dir / f"{name}.md", md_text)
    atomic_write_text(out_dir / f"{name}.caption.txt", caption.strip() + "\n")
    return csv_path, md_path


def write_summary(
    results: pd.DataFrame,
    out_dir: Path,
    name: str,
    caption: str,
    columns: Sequence[str] = ("model", "crop"),
    column_order: Sequence[tuple] | None = None,
) -> tuple[Path, Path, Path]:
    """Summarise ``results`` and write the table (:func:`write_table`) and ``<name>_values.csv``.

    The numbers (:func:`summary_values`) are computed, and the inputs validated, before anything
    is written. Returns ``(csv_path, md_path, values_csv_path)``.
    """
    check_name(name)
    table = summary_table(results, columns, column_order)
    values = summary_values(results, columns)
    values_text = values.to_csv(index=False)
    csv_path, md_path = write_table(table, out_dir, name, caption)
    values_path = atomic_write_text(Path(out_dir) / f"{name}_values.csv", values_text)
    return csv_path, md_path, values_path


def side_by_side(ours: pd.DataFrame, published: pd.DataFrame, missing: str = "-") -> pd.DataFrame:
    """Our table and the report's, with columns ``(column, "ours")`` and ``(column, "report")``.

    Columns are matched by label (use :func:`summary_table`'s labels, which follow the report's);
    the published columns come first in their order, then columns only we have. Rows follow
    :data:`ROW_KEYS` where the index uses them. A side without a column or row shows ``missing``.
    """
    for what, frame in (("ours", ours), ("published", published)):
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"side_by_side: {what} must be a DataFrame, got {type(frame).__name__}.")
    columns = list(dict.fromkeys([*published.columns, *ours.columns]))
    index = list(dict.fromkeys([*published.index, *ours.index]))
    if set(index) <= set(ROW_KEYS):
        index = [k for k in ROW_KEYS if k in set(index)]
    ours_r = ours.reindex(index=index, columns=columns)
    pub_r = published.reindex(index=index, columns=columns)
    data = {}
    for column in columns:
        data[(column, "ours")] = ours_r[column].where(ours_r[column].notna(), missing)
        data[(column, "report")] = pub_r[column].where(pub_r[column].notna(), missing)
    out = pd.DataFrame(data, index=pd.Index(index, name=ours.index.name or published.index.name))
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["column", "source"])
    return out


def checkpoint_metrics(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The notebooks' view of an :func:`nexperia_utils.evaluation.predict.evaluate_run` result.

    Returns (one row per checkpoint: epoch, validation AUC, the test metrics as fractions, accuracy,
    binary accuracy) and (mean and std over the checkpoints of the metrics, in percent, 2 decimals).
    """
    keys = list(ROW_KEYS)
    per_checkpoint = results[["checkpoint", "epoch", "val_auc", *keys, "accuracy", "binary_accuracy"]]
    mean_std = (results[keys].agg(["mean", "std"]) * 100).round(2)
    return per_checkpoint, mean_std


@dataclass
class KeptCheckpoints:
    """The test metrics of a run's kept checkpoints; shows itself in a notebook as two tables."""

    results: pd.DataFrame

    @property
    def per_checkpoint(self) -> pd.DataFrame:
        return checkpoint_metrics(self.results)[0]

    @property
    def mean_std(self) -> pd.DataFrame:
        return checkpoint_metrics(self.results)[1]

    def _repr_html_(self) -> str:
        shown = self.per_checkpoint
        styled = shown.style.format({c: "{:.4f}" for c in shown.columns if c not in ("checkpoint", "epoch")})
        return (f"{styled.hide(axis='index').to_html()}<p>mean and std over the {len(shown)} checkpoints (%):</p>"
                f"{self.mean_std.to_html()}")


def kept_checkpoint_metrics(run_dir: Path, part: SplitData, top_k: int, device: str = "auto",
                            crop: str = "center") -> KeptCheckpoints:
    """Evaluate the ``top_k`` kept checkpoints of a run on ``part`` (:func:`evaluate_run`, one crop style)."""
    return KeptCheckpoints(evaluate_run(Path(run_dir), part, crops=[crop], top_k=top_k, device=device))


def format_fraction_columns(frame: pd.DataFrame, columns: Sequence[str], decimals: int = 2) -> pd.DataFrame:
    """A copy with ``columns`` (fractions) shown as percentages; NaN stays NaN."""
    out = frame.copy()
    for column in columns:
        out[column] = (out[column].astype(float) * 100).round(decimals)
    return out
