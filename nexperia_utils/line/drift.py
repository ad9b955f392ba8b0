"""Drift check of a new folder of images against a trained run: is the line still seeing what it trained on?

``python -m nexperia_utils.line.drift --run outputs/quick/runs/resnet18-ce --images DIR [--out drift.csv]``
(or ``make drift IMAGES=DIR``) scores every image of ``DIR`` with the run's best checkpoint and its OOD
detector (:mod:`nexperia_utils.analysis.ood`, fitted on the run's training part and saved beside the
checkpoints on first use) and reports:

* the share of images the detector flags as unfamiliar, against the share expected on familiar
  images (``1 - quantile``: 1 % by default);
* the shift of the defect-score distribution against the validation part: the two-sample
  Kolmogorov-Smirnov test (scipy; drift when p < 0.001 and the statistic is at least 0.1) and the
  change of the median.

Past either limit (:class:`DriftLimits`) the verdict is ``retrain / adapt`` with the reason; else ``ok``.
Exit status 0 either way (2: bad input); ``--fail-on-drift`` exits 4 on drift, for a scheduled job.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.special import softmax
from scipy.stats import ks_2samp

from nexperia_utils.evaluation import metrics
from nexperia_utils.training.checkpoints import list_checkpoints, load_checkpoint, read_checkpoint_meta
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.analysis.ood import DETECTOR_FILE, OOD_METHODS, OodDetector, fit_detector, logits_and_features

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftLimits:
    """When a folder counts as drifted.

    Either the flagged share is over ``max_flagged_ratio`` x the expected share, or the defect scores
    differ from the validation part's by the two-sample Kolmogorov-Smirnov test at ``ks_alpha`` *and*
    by a statistic of at least ``min_ks`` (so that a very large folder is not flagged for a shift too
    small to matter).
    """

    max_flagged_ratio: float = 3.0
    ks_alpha: float = 0.001
    min_ks: float = 0.1


@dataclass(frozen=True)
class DriftReport:
    n_images: int
    flagged_share: float
    expected_share: float
    ks_statistic: float
    ks_pvalue: float
    median_shift: float
    drifted: bool
    message: str


def drift_check(reference_scores: np.ndarray, scores: np.ndarray, unfamiliar: np.ndarray, expected_share: float,
                limits: DriftLimits = DriftLimits()) -> DriftReport:
    """Compare a folder's defect scores and OOD flags with the validation part's."""
    reference_scores, scores = np.asarray(reference_scores, float), np.asarray(scores, float)
    unfamiliar = np.asarray(unfamiliar, bool)
    if len(scores) == 0 or len(reference_scores) == 0:
        raise DataError("the drift check needs at least one image and a reference distribution")
    if unfamiliar.shape != scores.shape:
        raise DataError(f"{unfamiliar.shape[0]} OOD flags for {scores.shape[0]} scores")
    share = float(unfamiliar.mean())
    ks = ks_2samp(reference_scores, scores)
    shift = float(np.median(scores) - np.median(reference_scores))
    reasons = []
    if share > limits.max_flagged_ratio * expected_share:
        reasons.append(f"{share * 100:.1f} % of the images look unfamiliar to the model (expected about "
                       f"{expected_share * 100:.1f} % on images like its training data)")
    if ks.pvalue < limits.ks_alpha and ks.statistic >= limits.min_ks:
        reasons.append(f"the defect scores moved away from the validation part's (Kolmogorov-Smirnov "
                       f"{ks.statistic:.2f}, p = {ks.pvalue:.1e}; median {shift:+.3f})")
    message = ("retrain / adapt: " + "; ".join(reasons) + ". Adapt the BatchNorm statistics, fine-tune on a few "
               "labelled images of this batch, or retrain with it (notebook 09)") if reasons else (
        f"ok: {share * 100:.1f} % unfamiliar (expected about {expected_share * 100:.1f} %), defect scores like the "
        f"validation part's (Kolmogorov-Smirnov {ks.statistic:.2f}, p = {ks.pvalue:.2g})")
    return DriftReport(len(scores), share, float(expected_share), float(ks.statistic), float(ks.pvalue), shift,
                       bool(reasons), message)


def detector_file(run_dir: Path, method: str) -> Path:
    return Path(run_dir) / DETECTOR_FILE.replace(".npz", f"-{method}.npz")


def run_detector(run_dir: Path, experiment: Callable[[], Any], method: str = "mahalanobis", quantile: float = 0.99,
                 device: str = "auto", progress: bool = True) -> OodDetector:
    """The run's OOD detector: the saved one when it fits the best checkpoint, else fitted and saved.

    ``experiment()`` gives the run's :class:`~nexperia_utils.experiment.Experiment` (its training and
    validation parts); it is called only when the detector has to be fitted.
    """
    from nexperia_utils.evaluation.predict import checkpoint_fingerprint

    entries = list_checkpoints(run_dir)
    if not entries:
        raise DataError(f"{run_dir} has no kept checkpoint; train the model first (make baseline-<arch>)")
    path = Path(entries[0]["path"])
    fingerprint = checkpoint_fingerprint(path)
    file = detector_file(run_dir, method)
    if file.exists():
        saved = OodDetector.load(file)
        if saved.fingerprint == fingerprint and abs(saved.quantile - quantile) < 1e-12:
            return saved
    exp = experiment()
    model, _ = load_checkpoint(path, device=device)
    meta = read_checkpoint_meta(path)
    size = int(meta["config"]["image_size"])
    logger.info("fitting the %s OOD detector of %s on its training part", method, run_dir)
    detector = fit_detector(model, exp.part("train", size), exp.part("val", size), size,
                            meta["classes"].index(meta["negative_class"]), fingerprint, method, quantile, device,
                            progress)
    detector.save(file)
    return detector


def run_experiment(run_dir: Path, profile: str | None, data_root: str, progress: bool = True) -> Callable[[], Any]:
    """A factory of the run's experiment (profile from the run's path unless given), opened when called."""
    from nexperia_utils.config import get_profile
    from nexperia_utils.experiment import open_experiment

    name = profile or Path(run_dir).resolve().parent.parent.name
    return lambda: open_experiment(get_profile(name), data_root or None, progress=progress)


def score_images(run_dir: Path, detector: OodDetector, part, device: str = "auto",
                 progress: bool = True) -> pd.DataFrame:
    """Per image of ``part``: defect score, OOD score and the unfamiliar flag (best checkpoint, centre crop)."""
    path = Path(list_checkpoints(run_dir)[0]["path"])
    model, _ = load_checkpoint(path, device=device)
    meta = read_checkpoint_meta(path)
    logits, features = logits_and_features(model, part, int(meta["config"]["image_size"]), device=device,
                                           progress=progress)
    score = detector.score(logits, features)
    return pd.DataFrame({
        "image": part.frame["path"].to_numpy(),
        "defect_score": metrics.defect_score(softmax(logits, axis=1), meta["classes"].index(meta["negative_class"])),
        "ood_score": score,
        "unfamiliar": score >= detector.threshold,
    })


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nexperia_utils.line.drift", description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run: outputs/<profile>/runs/<run>")
    parser.add_argument("--images", type=Path, required=True, help="folder of new images (recursive)")
    parser.add_argument("--out", type=Path, default=None, help="per-image CSV to write (optional)")
    parser.add_argument("--method", default="mahalanobis", choices=OOD_METHODS)
    parser.add_argument("--quantile", type=float, default=0.99, help="validation quantile of the OOD threshold")
    parser.add_argument("--profile", default=None, help="the run's profile (default: from the run's path)")
    parser.add_argument("--data-root", default="", help="the run's data (default: the embedded synthetic set)")
    parser.add_argument("--skip-bad", action="store_true", help="check the readable images and list the bad ones")
    parser.add_argument("--fail-on-drift", action="store_true", help="exit with status 4 when the folder drifted")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2: bad input, 4: drift with --fail-on-drift)."""
    from nexperia_utils.data.dataset import unlabelled_part
    from nexperia_utils.line.inspect import readable_images
    from nexperia_utils.io import atomic_write_csv

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    try:
        if args.out is not None and args.out.suffix.lower() != ".csv":
            raise ConfigError(f"--out {args.out} must be a .csv file")
        names, bad = readable_images(args.images, args.skip_bad, progress)
        detector = run_detector(args.run, run_experiment(args.run, args.profile, args.data_root, progress),
                                args.method, args.quantile, args.device, progress)
        size = int(read_checkpoint_meta(Path(list_checkpoints(args.run)[0]["path"]))["config"]["image_size"])
        part = unlabelled_part("drift", args.images, pd.DataFrame({"image_id": names, "path": names}), size,
                               progress=progress)
        frame = score_images(args.run, detector, part, args.device, progress)
        report = drift_check(detector.val_defect_scores, frame["defect_score"], frame["unfamiliar"],
                             1 - detector.quantile)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out is not None:
        atomic_write_csv(args.out, frame)
    print(f"{report.n_images} images of {args.images} against {args.run} ({args.method} OOD score):")
    print(report.message)
    if bad:
        print(f"{len(bad)} bad file(s) skipped: " + ", ".join(n for n, _ in bad), file=sys.stderr)
    logger.debug("drift report: %s", asdict(report))
    return 4 if report.drifted and args.fail_on_drift else 0


if __name__ == "__main__":
    sys.exit(main())
