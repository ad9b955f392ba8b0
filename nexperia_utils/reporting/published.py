"""The report's published numbers (Tables 2-5), to show beside the numbers we reproduce.

All values are percentages as printed in the report: the mean over the evaluated checkpoints and,
where the report gives one, the standard deviation in brackets (also in percentage points; the
"std 10^-2" in the header of Table 3 says the same thing: hundredths of the unit). Where the
report prints a single number (one checkpoint evaluated) the std is ``None``.

Table 3 is the later version of the report (``reference/methods.md``, "Published numbers"): the
seed copy of the report lost the ResNet50 TenCrop column and shifted its values; the later
version restores it. Tables 2, 4 and 5 are as printed in the seed report.

Rows use the same keys as ``nexperia_utils.evaluation.metrics.METRIC_KEYS`` (:data:`ROW_KEYS`); columns use
the labels that :func:`nexperia_utils.reporting.summary_table` gives our own results, so the two
can be put side by side (:func:`nexperia_utils.reporting.side_by_side`).
"""
from __future__ import annotations

import math
import pandas as pd

from nexperia_utils.errors import ConfigError

__all__ = [
    "ROW_KEYS",
    "ROW_LABELS",
    "TABLE_NUMBERS",
    "format_cell",
    "published_caption",
    "published_table",
    "published_values",
]

#: Metric keys, in the report's row order (same keys as ``nexperia_utils.evaluation.metrics.METRIC_KEYS``).
ROW_KEYS: tuple[str, ...] = ("auc", "fpr@99.1", "fpr@99.3", "fpr@99.5", "fpr@99.7", "fpr@100")

#: Display label of each row key.
ROW_LABELS: dict[str, str] = {
    "auc": "AUC",
    "fpr@99.1": "FPR @ TPR>=99.1",
    "fpr@99.3": "FPR @ TPR>=99.3",
    "fpr@99.5": "FPR @ TPR>=99.5",
    "fpr@99.7": "FPR @ TPR>=99.7",
    "fpr@100": "FPR @ TPR=100",
}

Cell = tuple[float, "float | None"]

# One tuple per column, values in ROW_KEYS order: (mean %, std % or None).
_TABLES: dict[int, dict[str, tuple[Cell, ...]]] = {
    2: {
        "ResNet18": ((99.83, 0.00), (1.25, 0.08), (2.21, 0.41), (3.60, 0.31), (4.71, 0.40), (36.80, 2.06)),
        "VGG19_bn": ((99.70, None), (2.80, None), (2.90, None), (6.19, None), (8.83, None), (86.71, None)),
        "ResNet18_stn": ((99.69, 0.01), (3.05, 0.31), (10.74, 0.80), (23.73, 4.56), (34.07, 5.52), (48.44, 1.48)),
        "VGG19_bn_stn": ((99.82, None), (1.69, None), (4.46, None), (9.12, None), (15.73, None), (37.68, None)),
        "ResNet_att_2": ((99.85, 0.04), (1.07, 0.26), (1.45, 0.35), (4.31, 2.49), (10.84, 5.65), (44.04, 23.45)),
    },
    3: {
        "ResNet18 / CenterCrop": ((99.83, 0.00), (1.25, 0.08), (2.21, 0.41), (3.60, 0.31), (4.71, 0.40), (36.80, 2.06)),
        "ResNet18 / FiveCrop": ((99.78, 0.01), (2.26, 0.29), (2.89, 0.48), (10.26, 2.14), (12.21, 2.00), (62.18, 7.09)),
        "ResNet18 / TenCrop": ((99.70, 0.01), (7.21, 0.31), (8.33, 0.80), (11.94, 0.04), (13.84, 0.04), (24.62, 0.07)),
        "ResNet34 / CenterCrop": ((99.84, 0.00), (1.32, 0.09), (2.15, 0.23), (4.01, 0.25), (4.42, 0.42), (46.69, 1.92)),
        "ResNet34 / FiveCrop": ((99.83, 0.00), (1.20, 0.12), (2.00, 0.18), (2.93, 0.21), (15.84, 1.65), (38.49, 1.14)),
        "ResNet34 / TenCrop": ((99.80, 0.00), (4.96, 0.43), (5.83, 0.41), (7.45, 0.55), (9.15, 0.48), (15.59, 1.35)),
        "ResNet50 / CenterCrop": ((99.84, 0.00), (1.50, 0.10), (1.73, 0.09), (2.26, 0.15), (3.61, 0.36), (59.85, 1.86)),
        "ResNet50 / FiveCrop": ((99.81, 0.00), (1.07, 0.08), (1.24, 0.06), (1.50, 0.08), (3.34, 0.46), (52.86, 1.58)),
        "ResNet50 / TenCrop": ((99.86, 0.00), (1.91, 0.43), (3.10, 0.54), (3.91, 0.42), (7.79, 0.94), (10.65, 0.41)),
    },
    4: {
        "Cross Entropy": ((99.82, None), (0.98, None), (1.05, None), (1.47, None), (1.64, None), (65.43, None)),
        "WBCE": ((99.87, None), (1.18, None), (1.21, None), (9.08, None), (12.91, None), (26.41, None)),
        "SAT": ((99.88, None), (1.38, None), (1.47, None), (2.79, None), (4.95, None), (31.62, None)),
    },
    5: {
        "ResNet18": ((99.83, 0.00), (1.25, 0.08), (2.21, 0.41), (3.60, 0.31), (4.71, 0.40), (36.80, 2.06)),
        "ResNet18 (corrected)": ((99.91, 0.00), (0.55, 0.14), (0.98, 0.25), (1.28, 0.31), (3.25, 0.40), (35.87, 2.05)),
    },
}

_CAPTIONS: dict[int, str] = {
    2: (
        "Table 2 (report). Test results of ResNet18, VGG19_bn, ResNet18_stn, VGG19_bn_stn and "
        "ResNet_att_2, mean (std) in %. For the ResNet18-based models the ten checkpoints with the "
        "highest validation AUC are evaluated on the test set; the VGG models give one number."
    ),
    3: (
        "Table 3 (report, later version with the ResNet50 TenCrop column). ImageNet-pretrained "
        "ResNets trained for 50 epochs; the crop style (CenterCrop, FiveCrop, TenCrop) is applied "
        "only to the test data and the crops' outputs are averaged per image. Mean (std) over the "
        "top-ten validation-AUC checkpoints, in %."
    ),
    4: (
        "Table 4 (report). ResNet34 trained from scratch for 200 epochs with cross entropy, "
        "weighted binary cross entropy (WBCE) and self-adaptive training (SAT); test results in %."
    ),
    5: (
        "Table 5 (report). ResNet18 test results before and after correcting 46 wrongly labelled "
        "defect images with the highest defect scores, mean (std) in %."
    ),
}

#: The table numbers this module knows.
TABLE_NUMBERS: tuple[int, ...] = tuple(sorted(_TABLES))


def _check_number(number: int) -> None:
    if number not in _TABLES:
        raise ConfigError(
            f"No published table {number!r}: the report's tables with numbers are {list(TABLE_NUMBERS)}. "
            "Pass one of those."
        )


def format_cell(mean: float, std: float | None, decimals: int = 2) -> str:
    """Format a percentage the way the report prints it: ``"99.83 (0.00)"`` or ``"99.70"``.

    ``std`` of ``None`` or NaN gives the mean alone; a NaN mean gives ``"n/a"``.
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ({std:.{decimals}f})"


def published_values(number: int) -> dict[str, dict[str, tuple[float, float | None]]]:
    """The published numbers of table ``number`` as ``column -> row key -> (mean %, std % or None)``.

    Columns are in the report's order; row keys are :data:`ROW_KEYS`. A fresh dict each call.
    """
    _check_number(number)
    return {
        column: {key: (mean, std) for key, (mean, std) in zip(ROW_KEYS, cells, strict=True)}
        for column, cells in _TABLES[number].items()
    }


def published_table(number: int) -> pd.DataFrame:
    """Table ``number`` of the report in display form.

    Index :data:`ROW_KEYS` (named ``"metric"``; render with :data:`ROW_LABELS`), one column per
    column of the report (Table 3: ``"ResNet18 / CenterCrop"`` ...), cells strings as printed:
    ``"99.83 (0.00)"`` or ``"99.70"`` where the report gives no std.
    """
    values = published_values(number)
    table = pd.DataFrame(
        {column: [format_cell(*cells[key]) for key in ROW_KEYS] for column, cells in values.items()},
        index=pd.Index(ROW_KEYS, name="metric"),
    )
    return table


def published_caption(number: int) -> str:
    """A caption for table ``number`` saying where the numbers come from and what they mean."""
    _check_number(number)
    return _CAPTIONS[number]

