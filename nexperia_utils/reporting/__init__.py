"""What the pipeline shows a reader: tables in the report's shape and the report's figures.

- :mod:`nexperia_utils.reporting.tables`: mean (std) % tables, Markdown, the one table writer
  (:func:`write_table`), our numbers beside the report's (:func:`side_by_side`).
- :mod:`nexperia_utils.reporting.figures`: ROC, training and per-class curves, crop bars, the one
  figure helper (:func:`new_figure`) and :func:`save_figure`.

The names below are the package's reporting API; notebooks import them from here.
"""
from nexperia_utils.reporting.figures import (
    new_figure, plot_best_checkpoint_roc, plot_crop_bars, plot_metric_per_epoch, plot_per_class_curves, plot_roc, plot_training_curves,
    save_figure,
)
from nexperia_utils.reporting.tables import (
    CROP_LABELS, INDEX_HEADER, ROW_KEYS, ROW_LABELS, KeptCheckpoints, check_name, checkpoint_metrics,
    format_fraction_columns, kept_checkpoint_metrics,
    side_by_side, summary_table, summary_values, to_markdown, write_summary, write_table,
)

__all__ = [
    "CROP_LABELS", "INDEX_HEADER", "KeptCheckpoints", "ROW_KEYS", "ROW_LABELS", "check_name", "checkpoint_metrics",
    "kept_checkpoint_metrics",
    "format_fraction_columns", "new_figure", "plot_best_checkpoint_roc", "plot_crop_bars", "plot_metric_per_epoch", "plot_per_class_curves",
    "plot_roc", "plot_training_curves", "save_figure", "side_by_side", "summary_table", "summary_values",
    "to_markdown", "write_summary", "write_table",
]
