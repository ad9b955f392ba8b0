"""Figures of the distribution-shift notebook (09): AUC per model on both batches, OOD score distributions."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nexperia_utils.errors import DataError
from nexperia_utils.reporting import new_figure


def plot_shift(table: pd.DataFrame) -> Figure:
    """Horizontal bars: each model's AUC on the batch-2 test part and on the batch-3 test part."""
    columns = ["batch 2 AUC", "batch 3 AUC"]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"plot_shift needs the columns {missing} of shift.shift_table")
    fig = new_figure((8, 0.55 * len(table) + 1.5))
    ax = fig.subplots()
    y = np.arange(len(table))
    for offset, column, colour in ((-0.2, columns[0], "tab:blue"), (0.2, columns[1], "tab:orange")):
        values = table[column].to_numpy(float)
        ax.barh(y + offset, values, height=0.38, label=column.replace(" AUC", ""), color=colour)
        for yi, v in zip(y + offset, values):
            ax.text(v + 0.3, yi, f"{v:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, table.index)
    ax.invert_yaxis()
    low = float(np.nanmin(table[columns].to_numpy(float)))
    ax.set_xlim(max(0.0, low - 10), 102)
    ax.set_xlabel("test AUC (%), known classes")
    ax.legend(loc="lower right")
    ax.set_title("Batch 2 -> batch 3: what each mitigation buys")
    return fig


def plot_ood_scores(scores: Mapping[str, np.ndarray], threshold: float, method: str) -> Figure:
    """Histograms of one OOD score per group of images, with the detector's threshold."""
    if not scores:
        raise DataError("plot_ood_scores needs at least one group of scores")
    fig = new_figure((8, 3.5))
    ax = fig.subplots()
    values = np.concatenate([np.asarray(v, float) for v in scores.values()])
    positive = method == "mahalanobis" and (values > 0).all()
    bins = (np.geomspace(values.min(), values.max(), 40) if positive else np.linspace(values.min(), values.max(), 40))
    for name, v in scores.items():
        ax.hist(np.asarray(v, float), bins=bins, density=True, histtype="step", linewidth=1.5,
                label=f"{name} ({len(v)})")
    ax.axvline(threshold, color="black", linestyle="--", label="threshold (validation quantile)")
    if positive:
        ax.set_xscale("log")
    ax.set_xlabel(f"{method} score (higher: less familiar)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return fig
