"""The submission file of both competitions: checked against the test ids (:func:`validate_submission`),
written atomically (:func:`write_submission`), the ``kaggle competitions submit`` command that uploads it
(:func:`submit_command`) and its score against an answer key (:func:`score_submission`, the
competitions' AUC)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nexperia_utils.errors import DataError, preview
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.kaggle.layouts import COMPETITIONS, SUBMISSION_COLUMNS, check_stage, duplicates, read_id_csv

__all__ = ["score_submission", "submit_command", "validate_submission", "write_submission"]

logger = logging.getLogger(__name__)


def validate_submission(
    frame: pd.DataFrame, expected_ids: Sequence[str], stage: int, source: Path | str | None = None
) -> None:
    """Raise one DataError listing every problem of a submission frame, or return ``None``.

    Checks: exactly the stage's columns (``id,label`` or ``id,defect_score``, any order), every
    expected id present, no unexpected or duplicate ids, scores numeric, finite and in [0, 1].
    ``source`` (a file name) is only used in the message.
    """
    stage = check_stage(stage)
    id_col, score_col = SUBMISSION_COLUMNS[stage]
    expected = [str(i) for i in expected_ids]
    dup_expected = duplicates(expected)
    if dup_expected:
        raise DataError(f"The expected test ids contain duplicates: {preview(dup_expected)}. Fix: pass each id once.")
    where = f" ({source})" if source is not None else ""
    problems: list[str] = []

    columns = [str(c) for c in frame.columns]
    missing_cols = [c for c in (id_col, score_col) if c not in columns]
    extra_cols = [c for c in columns if c not in (id_col, score_col)]
    if missing_cols or extra_cols or len(set(columns)) != len(columns):
        msg = f"columns must be exactly {[id_col, score_col]}, found {columns}"
        other = SUBMISSION_COLUMNS[2 if stage == 1 else 1][1]
        if other in columns and score_col not in columns:
            msg += f" (column {other!r} belongs to the stage-{2 if stage == 1 else 1} competition)"
        problems.append(msg)

    if columns.count(id_col) == 1:
        raw_ids = frame.iloc[:, columns.index(id_col)]
        if raw_ids.isna().any():
            problems.append(f"{int(raw_ids.isna().sum())} row(s) have an empty id")
        ids = raw_ids.dropna().astype(str).str.strip()
        dups = duplicates(ids.tolist())
        if dups:
            problems.append(f"{len(dups)} duplicate id(s): {preview(dups)}")
        present, wanted = set(ids), set(expected)
        missing = [i for i in expected if i not in present]
        if missing:
            problems.append(f"{len(missing)} of {len(expected)} expected id(s) missing: {preview(missing)}")
        unexpected = sorted(present - wanted)
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected id(s) not in the test set: {preview(unexpected)}")

    if columns.count(score_col) == 1:
        raw = frame.iloc[:, columns.index(score_col)]
        if raw.dtype == bool:
            problems.append(f"{score_col!r} holds booleans; it must be a defect probability in [0, 1]")
        else:
            numeric = pd.to_numeric(raw, errors="coerce").astype(float)
            non_numeric = numeric.isna() & raw.notna() & ~raw.astype(str).str.strip().str.lower().isin({"nan", ""})
            if non_numeric.any():
                problems.append(
                    f"{int(non_numeric.sum())} non-numeric {score_col!r} value(s): {preview(raw[non_numeric].tolist())}"
                )
            nan = numeric.isna() & ~non_numeric
            if nan.any():
                problems.append(f"{int(nan.sum())} NaN/empty {score_col!r} value(s)")
            values = numeric.to_numpy()
            inf = np.isinf(values)
            if inf.any():
                problems.append(f"{int(inf.sum())} infinite {score_col!r} value(s)")
            finite = np.isfinite(values)
            outside = finite & ((values < 0.0) | (values > 1.0))
            if outside.any():
                problems.append(
                    f"{int(outside.sum())} {score_col!r} value(s) outside [0, 1]: {preview(values[outside].tolist())}"
                )

    if problems:
        raise DataError(
            f"Invalid stage-{stage} submission for {COMPETITIONS[stage]}{where}: {len(problems)} problem(s):\n- "
            + "\n- ".join(problems)
            + f"\nFix: write one row per test id with columns {id_col},{score_col}, where {score_col} is the "
            "defect probability in [0, 1] (e.g. with nexperia_utils.kaggle.layouts.write_submission)."
        )


def write_submission(
    path: Path,
    ids: Sequence[str],
    scores: Sequence[float],
    stage: int,
    expected_ids: Sequence[str] | None = None,
) -> Path:
    """Validate and atomically write a submission CSV; return ``path``.

    ``scores`` are defect probabilities. The frame is validated against ``expected_ids`` (default:
    ``ids`` themselves, which still catches duplicates and bad scores) before anything is written;
    on failure no file is created and an existing one is left unchanged. Floats are written at full
    precision (round-trip repr), so no ties are created by rounding.
    """
    stage = check_stage(stage)
    path = Path(path)
    id_list = [str(i) for i in ids]
    score_array = np.asarray(scores)
    if score_array.ndim != 1:
        score_array = score_array.reshape(-1) if score_array.size == len(id_list) else score_array
    if score_array.ndim != 1 or len(score_array) != len(id_list):
        raise DataError(
            f"Cannot write {path}: {len(id_list)} id(s) but scores of shape {score_array.shape}. "
            "Fix: pass one defect probability per id."
        )
    id_col, score_col = SUBMISSION_COLUMNS[stage]
    frame = pd.DataFrame({id_col: id_list, score_col: pd.Series(score_array, dtype=object)})
    validate_submission(frame, id_list if expected_ids is None else expected_ids, stage, source=path)
    frame[score_col] = pd.to_numeric(frame[score_col]).astype(float)
    atomic_write_csv(path, frame)
    logger.info("Wrote stage-%d submission with %d rows to %s", stage, len(frame), path)
    return path


def submit_command(path: Path, stage: int, message: str = "nexperia") -> str:
    """The shell line that submits ``path`` with the Kaggle CLI.

    ``kaggle competitions submit -c <competition> -f <path> -m "<message>"``; the path is quoted
    when it needs it and the message's shell-special characters are escaped.
    """
    import shlex

    stage = check_stage(stage)
    escaped = "".join("\\" + ch if ch in '\\"$`' else ch for ch in str(message))
    return f'kaggle competitions submit -c {COMPETITIONS[stage]} -f {shlex.quote(str(path))} -m "{escaped}"'


def score_submission(submission_csv: Path, answer_key_csv: Path) -> float:
    """ROC AUC of a submission against a hidden answer key (columns ``id,label``; 1 = defect).

    The stage is taken from the submission's score column (``label`` or ``defect_score``); the
    submission is validated against the key's ids first. Extra key columns (e.g. ``true_class``)
    are ignored.
    """
    from sklearn.metrics import roc_auc_score

    submission_csv, answer_key_csv = Path(submission_csv), Path(answer_key_csv)
    for p, what in ((submission_csv, "submission"), (answer_key_csv, "answer key")):
        if not p.is_file():
            raise DataError(f"The {what} file {p} does not exist. Fix: pass the path of an existing CSV.")
    key = read_id_csv(answer_key_csv, ("id", "label"))
    labels = pd.to_numeric(key["label"], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise DataError(f"{answer_key_csv}: 'label' must be 0 (good) or 1 (defect) on every row. Fix: correct the key.")
    if labels.nunique() < 2:
        raise DataError(f"{answer_key_csv} holds only one class; ROC AUC needs both good (0) and defect (1) rows.")
    dup = duplicates(key["id"].tolist())
    if dup:
        raise DataError(f"{answer_key_csv} lists id(s) more than once: {preview(dup)}. Fix: keep one row per id.")

    try:
        submission = pd.read_csv(submission_csv, dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read submission {submission_csv} as CSV ({exc}).") from exc
    stages = [s for s, (_, col) in SUBMISSION_COLUMNS.items() if col in submission.columns]
    if len(stages) != 1:
        raise DataError(
            f"Cannot tell the stage of {submission_csv}: columns {list(submission.columns)}; expected "
            f"{list(SUBMISSION_COLUMNS[1])} (stage 1) or {list(SUBMISSION_COLUMNS[2])} (stage 2)."
        )
    stage = stages[0]
    validate_submission(submission, key["id"].tolist(), stage, source=submission_csv)
    id_col, score_col = SUBMISSION_COLUMNS[stage]
    scores = pd.to_numeric(submission[score_col]).astype(float)
    by_id = pd.Series(scores.to_numpy(), index=submission[id_col].astype(str).str.strip())
    aligned = by_id.loc[key["id"]].to_numpy()
    return float(roc_auc_score(labels.astype(int).to_numpy(), aligned))
