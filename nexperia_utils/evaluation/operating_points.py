"""Operating points chosen on validation, and bootstrap intervals for AUC, TPR and FPR.

The report reads "FPR at TPR >= t" off the *test* ROC: the threshold that reaches the TPR is chosen
on the images it is scored on, so no line could run at that number. Here the threshold for each
target TPR is chosen on the validation part (:func:`metrics.threshold_at_tpr`: reject when
``score >= threshold``) and then *applied* to the test part, which gives the underkill (missed
defects, 1 - TPR) and overkill (FPR) a line would see. Both readings go side by side.

Intervals: a stratified bootstrap (defects and good images resampled separately, so every resample
keeps the part's class counts), vectorised with multinomial resampling weights: ``n_boot`` resamples
of a few thousand images take well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from nexperia_utils.evaluation import metrics
from nexperia_utils.training.checkpoints import checkpoint_dir, prediction_file, read_checkpoint_meta
from nexperia_utils.errors import ConfigError

__all__ = ["BootstrapConfig", "rates_at_threshold", "validation_operating_points", "bootstrap_intervals",
           "format_interval", "run_operating_points", "operating_point_table", "plot_operating_points",
           "write_operating_points", "review_threshold", "review_band_curve", "run_scores", "plot_review_band"]


@dataclass(frozen=True)
class BootstrapConfig:
    """``n_boot`` stratified resamples, seeded; ``level`` is the coverage of the percentile interval."""

    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95

    def validate(self) -> None:
        if self.n_boot < 10:
            raise ConfigError(f"n_boot must be >= 10, got {self.n_boot}")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"level must be in [0.5, 1), got {self.level}")


def rates_at_threshold(y_defect: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """(TPR, FPR) when every image with ``score >= threshold`` is rejected."""
    y, s = metrics._as_binary(y_defect, score)
    rejected = s >= float(threshold)
    return float(rejected[y].mean()), float(rejected[~y].mean())


def _resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) counts of each sample in each resample of size n (multinomial = drawing with replacement)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def bootstrap_intervals(y_defect: np.ndarray, score: np.ndarray, thresholds: Sequence[float] = (),
                        config: BootstrapConfig = BootstrapConfig()) -> dict[str, np.ndarray]:
    """Bootstrap distributions of AUC and of TPR/FPR at fixed ``thresholds``, and their percentile intervals.

    Returns ``auc`` (n_boot,), ``tpr`` and ``fpr`` (n_boot, T), and ``auc_interval`` (2,),
    ``tpr_interval`` / ``fpr_interval`` (T, 2). The AUC of a resample is the weighted Mann-Whitney
    statistic (ties count one half), equal to :func:`metrics.roc_auc` on the resampled images.
    """
    config.validate()
    y, s = metrics._as_binary(y_defect, score)
    rng = np.random.default_rng(config.seed)
    pos, neg = s[y], s[~y]
    w_pos = _resample_weights(len(pos), config.n_boot, rng)
    w_neg = _resample_weights(len(neg), config.n_boot, rng)
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (n_pos, n_neg)
    auc = np.einsum("bi,ij,bj->b", w_pos, wins, w_neg, optimize=True) / (len(pos) * len(neg))
    t = np.asarray(thresholds, dtype=np.float64)
    tpr = w_pos @ (pos[:, None] >= t[None, :]) / len(pos)
    fpr = w_neg @ (neg[:, None] >= t[None, :]) / len(neg)
    q = [(1 - config.level) / 2 * 100, (1 + config.level) / 2 * 100]
    return {
        "auc": auc, "tpr": tpr, "fpr": fpr,
        "auc_interval": np.percentile(auc, q),
        "tpr_interval": np.percentile(tpr, q, axis=0).T.reshape(len(t), 2),
        "fpr_interval": np.percentile(fpr, q, axis=0).T.reshape(len(t), 2),
    }


def validation_operating_points(y_val: np.ndarray, s_val: np.ndarray, y_test: np.ndarray, s_test: np.ndarray,
                                levels: Sequence[float] = metrics.TPR_LEVELS,
                                config: BootstrapConfig = BootstrapConfig()) -> pd.DataFrame:
    """One row per target TPR: the threshold chosen on validation and what it does on the test part.

    Columns (fractions): ``target_tpr``, ``threshold``, ``val_tpr``, ``val_fpr``, ``test_tpr`` with
    ``test_tpr_low``/``test_tpr_high``, ``test_fpr`` with ``test_fpr_low``/``test_fpr_high`` (bootstrap
    over the test images), ``missed_defects`` and ``false_alarms`` (test counts), ``report_fpr`` (the
    report's reading: FPR at TPR >= target on the test ROC itself), ``n_val_defects``,
    ``n_test_defects``, ``n_test_good``.
    """
    yv, sv = metrics._as_binary(y_val, s_val)
    yt, st = metrics._as_binary(y_test, s_test)
    thresholds = [metrics.threshold_at_tpr(yv, sv, level) for level in levels]
    boot = bootstrap_intervals(yt, st, thresholds, config)
    rows = []
    for k, (level, threshold) in enumerate(zip(levels, thresholds)):
        val_tpr, val_fpr = rates_at_threshold(yv, sv, threshold)
        test_tpr, test_fpr = rates_at_threshold(yt, st, threshold)
        rows.append({
            "target_tpr": float(level), "threshold": threshold, "val_tpr": val_tpr, "val_fpr": val_fpr,
            "test_tpr": test_tpr, "test_tpr_low": boot["tpr_interval"][k, 0], "test_tpr_high": boot["tpr_interval"][k, 1],
            "test_fpr": test_fpr, "test_fpr_low": boot["fpr_interval"][k, 0], "test_fpr_high": boot["fpr_interval"][k, 1],
            "missed_defects": int((st[yt] < threshold).sum()), "false_alarms": int((st[~yt] >= threshold).sum()),
            "report_fpr": metrics.fpr_at_tpr(yt, st, level),
            "n_val_defects": int(yv.sum()), "n_test_defects": int(yt.sum()), "n_test_good": int((~yt).sum()),
        })
    return pd.DataFrame(rows)


def format_interval(value: float, low: float, high: float, percent: bool = True) -> str:
    """``"value [low, high]"``, in percent with two decimals by default."""
    scale = 100.0 if percent else 1.0
    return f"{value * scale:.2f} [{low * scale:.2f}, {high * scale:.2f}]"



def run_scores(run_dir: Path, part, crop: str = "center", device: str = "auto") -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """``(is_defect, defect_score, evaluation row)`` of a run's best checkpoint (by validation AUC) on ``part``.

    The scores come from :func:`nexperia_utils.evaluation.predict.evaluate_run` and its verified prediction
    cache, so nothing already predicted is predicted again.
    """
    from nexperia_utils.evaluation.predict import evaluate_run

    run_dir = Path(run_dir)
    row = evaluate_run(run_dir, part, crops=[crop], top_k=1, device=device, progress=False).iloc[0]
    frame = pd.read_csv(prediction_file(run_dir, part.name, crop, int(row["epoch"])), dtype={"image_id": str})
    negative = read_checkpoint_meta(checkpoint_dir(run_dir) / row["checkpoint"])["negative_class"]
    return (frame["label"].astype(str) != negative).to_numpy(), frame["defect_score"].to_numpy(float), row


def run_operating_points(run_dir: Path, val_part, test_part, crop: str = "center",
                         levels: Sequence[float] = metrics.TPR_LEVELS, config: BootstrapConfig = BootstrapConfig(),
                         device: str = "auto") -> pd.DataFrame:
    """:func:`validation_operating_points` of a run's best checkpoint (by validation AUC), with its test AUC.

    Adds ``model``, ``run``, ``epoch``, ``crop`` and ``test_auc`` with ``test_auc_low``/``test_auc_high``.
    """
    y_val, s_val, best = run_scores(run_dir, val_part, crop, device)
    y_test, s_test, _ = run_scores(run_dir, test_part, crop, device)
    table = validation_operating_points(y_val, s_val, y_test, s_test, levels, config)
    auc_low, auc_high = bootstrap_intervals(y_test, s_test, config=config)["auc_interval"]
    return table.assign(model=best["model"], run=Path(run_dir).name, epoch=int(best["epoch"]), crop=crop,
                        test_auc=metrics.roc_auc(y_test, s_test), test_auc_low=auc_low, test_auc_high=auc_high)


def operating_point_table(points: pd.DataFrame) -> pd.DataFrame:
    """Readable table: one row per (model, target TPR) with the two readings side by side, in percent.

    Indexed ``"<model> @ <target TPR> %"``.
    """
    rows, index = [], []
    for r in points.itertuples():
        index.append(f"{r.model} @ {r.target_tpr * 100:g} %")
        rows.append({
            "test AUC [95 % CI]": format_interval(r.test_auc, r.test_auc_low, r.test_auc_high),
            "threshold (from val)": f"{r.threshold:.4g}",
            "test TPR at it [CI]": format_interval(r.test_tpr, r.test_tpr_low, r.test_tpr_high),
            "test FPR at it [CI]": format_interval(r.test_fpr, r.test_fpr_low, r.test_fpr_high),
            "missed / false alarms": f"{r.missed_defects} / {r.false_alarms}",
            "report-style test FPR": f"{r.report_fpr * 100:.2f}",
        })
    return pd.DataFrame(rows, index=pd.Index(index, name="model @ target TPR"))


def plot_operating_points(points: pd.DataFrame):
    """Per model: test FPR at the validation-chosen threshold (with its interval) beside the report's reading."""
    from nexperia_utils.reporting.figures import new_figure

    models = list(dict.fromkeys(points["model"]))
    fig = new_figure((4.2 * len(models), 3.6))
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models):
        group = points[points["model"] == model]
        x = np.arange(len(group))
        err = np.vstack([group["test_fpr"] - group["test_fpr_low"], group["test_fpr_high"] - group["test_fpr"]]) * 100
        ax.bar(x - 0.2, group["test_fpr"] * 100, 0.4, yerr=err, capsize=3, label="threshold chosen on validation")
        ax.bar(x + 0.2, group["report_fpr"] * 100, 0.4, label="report: read off the test ROC")
        for xi, tpr in zip(x, group["test_tpr"]):
            ax.annotate(f"TPR {tpr * 100:.1f}", (xi - 0.2, 2), ha="center", fontsize=7, rotation=90, color="white")
        ax.set_xticks(x, [f"{t * 100:g}" for t in group["target_tpr"]])
        ax.set_xlabel("target TPR (%)")
        ax.set_title(model)
    axes[0].set_ylabel("test FPR (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=2)
    fig.suptitle("Overkill on the test part: a threshold fixed on validation vs the report's test-ROC reading")
    return fig


def write_operating_points(runs: Mapping[str, Path], val_part, test_part, tables_dir: Path, name: str,
                           config: BootstrapConfig = BootstrapConfig(), device: str = "auto") -> pd.DataFrame:
    """The companion table of a results table: :func:`run_operating_points` of each run, written.

    ``runs`` maps the label of each column of the results table (a model, a loss) to its run folder.
    Writes ``<name>_operating_points.{csv,md}`` (:func:`operating_point_table`, with a caption that
    says how it was made) and ``<name>_operating_points_raw.csv`` (fractions); returns the raw rows.
    """
    from nexperia_utils.io import atomic_write_csv
    from nexperia_utils.reporting import write_table

    points = pd.concat([run_operating_points(run_dir, val_part, test_part, config=config, device=device)
                        .assign(model=label) for label, run_dir in runs.items()], ignore_index=True)
    first = points.iloc[0]
    n_test = int(first["n_test_defects"])
    caption = (f"Operating points: for each target TPR the threshold is chosen on the validation part "
               f"({int(first['n_val_defects'])} defects) with each run's best checkpoint (CenterCrop) and applied to "
               f"the test part ({n_test} defects, {int(first['n_test_good'])} good); [95 % CI] from {config.n_boot} "
               f"stratified bootstrap resamples of the test images (seed {config.seed}); when no test defect is "
               f"missed the TPR interval is [100, 100], yet with n defects an underkill up to about 3/n "
               f"({300 / n_test:.1f} % here, the rule of three) is still consistent with the data. 'report-style' "
               f"is FPR at TPR >= target read off the test ROC itself.")
    write_table(operating_point_table(points), tables_dir, f"{name}_operating_points", caption,
                index_header="model @ target TPR")
    atomic_write_csv(Path(tables_dir) / f"{name}_operating_points_raw.csv", points)
    return points


def review_threshold(s_val: np.ndarray, threshold: float, band: float) -> float:
    """Lower edge of a review band: the ``band`` share of validation images just below ``threshold`` is reviewed.

    Capped by the images there are below the threshold; ``band = 0`` gives ``threshold`` (no band).
    """
    if not 0 <= band < 1:
        raise ConfigError(f"the review band must be a share in [0, 1), got {band}")
    scores = np.asarray(s_val, dtype=float)
    below = np.sort(scores[scores < threshold])[::-1]
    n_review = int(round(band * len(scores)))
    return float(below[min(n_review, len(below)) - 1]) if n_review and len(below) else float(threshold)


def review_band_curve(y_val: np.ndarray, s_val: np.ndarray, y_test: np.ndarray, s_test: np.ndarray,
                      target_tpr: float = 0.997, bands: Sequence[float] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)) -> pd.DataFrame:
    """What a review band costs and buys on the test part, for each band width chosen on validation.

    Columns: ``band``, ``review_threshold``, ``test_review_share`` (share of test images sent to a
    person), ``test_missed_at_threshold`` (defects below the reject threshold), ``caught_in_review``
    (of those, the ones the band sends to review) and ``still_missed``.
    """
    yv, sv = metrics._as_binary(y_val, s_val)
    yt, st = metrics._as_binary(y_test, s_test)
    threshold = metrics.threshold_at_tpr(yv, sv, target_tpr)
    rows = []
    for band in bands:
        low = review_threshold(sv, threshold, band)
        review = (st >= low) & (st < threshold)
        missed = yt & (st < threshold)
        rows.append({"band": float(band), "review_threshold": low, "test_review_share": float(review.mean()),
                     "test_missed_at_threshold": int(missed.sum()), "caught_in_review": int((missed & review).sum()),
                     "still_missed": int((missed & ~review).sum())})
    return pd.DataFrame(rows)


def plot_review_band(curve: pd.DataFrame, title: str = ""):
    """Review load against the defects it catches that the reject threshold lets through (test part)."""
    from matplotlib.ticker import MaxNLocator

    from nexperia_utils.reporting.figures import new_figure

    fig = new_figure((6, 3.6))
    ax = fig.add_subplot()
    x = curve["test_review_share"] * 100
    ax.plot(x, curve["caught_in_review"], marker="o", label="caught in review")
    ax.plot(x, curve["still_missed"], marker="s", label="still passed (underkill)")
    for xi, bands in curve.assign(x=x).groupby("x", sort=True)["band"]:  # capped bands share a point
        label = " / ".join(f"{b * 100:g}" for b in bands) + " %"
        ax.annotate(label, (xi, 0), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
    top = float(curve[["caught_in_review", "still_missed"]].to_numpy().max(initial=0))
    ax.set_ylim(-0.5, max(top, 1.0) + 0.5)  # MaxNLocator goes fractional with fewer than two integers in view
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("test images sent to review (%)  [labels: band chosen on validation]")
    ax.set_ylabel("test defects below the reject threshold")
    ax.legend(fontsize=8)
    ax.set_title(title or "What a review band buys")
    return fig
