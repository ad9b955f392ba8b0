"""The line inspector: score a folder of new images with a trained run and decide pass / review / reject.

``python -m nexperia_utils.line.inspect --run outputs/quick/runs/resnet18-ce --images DIR --out decisions.csv
[--target-tpr 0.997] [--review-band 0.02] [--skip-bad]`` (or ``make inspect RUN=... IMAGES=...``).

- The reject threshold is the one that reaches ``target_tpr`` on the run's **validation** part
  (best checkpoint by validation AUC, the run's preprocessing and crop style). It is saved beside
  the checkpoints as ``operating_point.json`` with the target, the crop, the checkpoint's
  fingerprint and the expected underkill / overkill: the test part's TPR and FPR at that fixed
  threshold, with stratified bootstrap intervals. A saved one is reused while it matches.
- ``review_band``: the share of validation images just below the reject threshold that go to a human
  instead of passing; the file says how many validation defects that band catches.
- Every PNG/JPEG/BMP file under ``--images`` (recursively) is checked and scored in batches. A bad
  file (truncated, not an image) stops the run with an error naming every bad file and nothing is
  written; with ``--skip-bad`` the others are scored and the bad ones listed (exit status 3).
- ``decisions.csv``: ``image,defect_score,decision`` (``image`` relative to ``--images``), with
  ``--ood METHOD`` (default ``mahalanobis``; ``none`` turns it off) also ``ood_score,unfamiliar``: an
  image the run's OOD detector (:mod:`nexperia_utils.analysis.ood`) finds unfamiliar - a camera glitch, a
  defect type or a machine the model never saw - goes to ``review`` (neither passed nor rejected).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from nexperia_utils.evaluation import metrics
from nexperia_utils.training.checkpoints import checkpoint_dir, list_checkpoints, load_checkpoint, read_checkpoint_meta, read_run_meta
from nexperia_utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
OPERATING_POINT_FILE = "operating_point.json"
DECISIONS = ("pass", "review", "reject")


@dataclass(frozen=True)
class OperatingPoint:
    """A run's reject threshold (and review band) chosen on its validation part."""

    target_tpr: float
    review_band: float
    crop: str
    threshold: float
    review_threshold: float
    checkpoint: str
    fingerprint: str
    image_size: int
    negative_class: str
    val_tpr: float
    val_fpr: float
    val_review_share: float
    val_defects_caught_in_review: int
    n_val_defects: int
    test_tpr: float | None = None
    test_tpr_interval: tuple[float, float] | None = None
    test_fpr: float | None = None
    test_fpr_interval: tuple[float, float] | None = None
    n_test_defects: int | None = None
    n_test_good: int | None = None

    def matches(self, target_tpr: float, review_band: float, crop: str, fingerprint: str) -> bool:
        return (abs(self.target_tpr - target_tpr) < 1e-12 and abs(self.review_band - review_band) < 1e-12
                and self.crop == crop and self.fingerprint == fingerprint)

    def summary(self) -> str:
        lines = [f"reject when defect score >= {self.threshold:.6g} (TPR >= {self.target_tpr * 100:g} % on "
                 f"{self.n_val_defects} validation defects; validation FPR {self.val_fpr * 100:.2f} %)"]
        if self.review_band > 0:
            lines.append(f"review when {self.review_threshold:.6g} <= score < {self.threshold:.6g} "
                         f"({self.val_review_share * 100:.1f} % of validation images; catches "
                         f"{self.val_defects_caught_in_review} validation defects the threshold passes)")
        if self.test_tpr is not None:
            (tl, th), (fl, fh) = self.test_tpr_interval, self.test_fpr_interval
            lines.append(f"expected on new devices (test part, {self.n_test_defects} defects, {self.n_test_good} good): "
                         f"underkill {(1 - self.test_tpr) * 100:.2f} % [{(1 - th) * 100:.2f}, {(1 - tl) * 100:.2f}], "
                         f"overkill {self.test_fpr * 100:.2f} % [{fl * 100:.2f}, {fh * 100:.2f}] (95 % bootstrap)")
        return "\n".join(lines)


def _check_settings(target_tpr: float, review_band: float) -> None:
    if not 0 < target_tpr <= 1:
        raise ConfigError(f"--target-tpr must be in (0, 1] (e.g. 0.997), got {target_tpr}")
    if not 0 <= review_band < 1:
        raise ConfigError(f"--review-band must be in [0, 1) (a share of the validation images), got {review_band}")


def choose_operating_point(run_dir: Path, val_part, test_part=None, target_tpr: float = 0.997,
                           review_band: float = 0.0, crop: str = "center", device: str = "auto",
                           n_boot: int = 1000, seed: int = 0) -> OperatingPoint:
    """Choose the threshold on ``val_part`` with the run's best checkpoint, estimate it on ``test_part``, save it."""
    from nexperia_utils.evaluation.predict import checkpoint_fingerprint
    from nexperia_utils.io import atomic_write_text
    from nexperia_utils.evaluation import operating_points
    from nexperia_utils.evaluation.operating_points import BootstrapConfig, bootstrap_intervals, rates_at_threshold

    _check_settings(target_tpr, review_band)
    run_dir = Path(run_dir)

    y_val, s_val, best = operating_points.run_scores(run_dir, val_part, crop, device)
    path = checkpoint_dir(run_dir) / best["checkpoint"]
    meta = read_checkpoint_meta(path)
    negative = meta["negative_class"]
    threshold = metrics.threshold_at_tpr(y_val, s_val, target_tpr)
    val_tpr, val_fpr = rates_at_threshold(y_val, s_val, threshold)
    review_threshold = operating_points.review_threshold(s_val, threshold, review_band)
    in_review = (s_val >= review_threshold) & (s_val < threshold)
    fields = dict(target_tpr=float(target_tpr), review_band=float(review_band), crop=crop, threshold=threshold,
                  review_threshold=review_threshold, checkpoint=path.name, fingerprint=checkpoint_fingerprint(path),
                  image_size=int(meta["config"]["image_size"]), negative_class=negative, val_tpr=val_tpr,
                  val_fpr=val_fpr, val_review_share=float(in_review.mean()),
                  val_defects_caught_in_review=int((in_review & y_val).sum()), n_val_defects=int(y_val.sum()))
    if test_part is not None:
        y_test, s_test, _ = operating_points.run_scores(run_dir, test_part, crop, device)
        boot = bootstrap_intervals(y_test, s_test, [threshold], BootstrapConfig(n_boot=n_boot, seed=seed))
        tpr, fpr = rates_at_threshold(y_test, s_test, threshold)
        fields.update(test_tpr=tpr, test_tpr_interval=tuple(map(float, boot["tpr_interval"][0])), test_fpr=fpr,
                      test_fpr_interval=tuple(map(float, boot["fpr_interval"][0])),
                      n_test_defects=int(y_test.sum()), n_test_good=int((~y_test).sum()))
    point = OperatingPoint(**fields)
    atomic_write_text(run_dir / OPERATING_POINT_FILE, json.dumps(asdict(point), indent=2))
    return point


def load_operating_point(run_dir: Path) -> OperatingPoint | None:
    """The saved operating point of a run, or ``None``."""
    file = Path(run_dir) / OPERATING_POINT_FILE
    if not file.exists():
        return None
    data = json.loads(file.read_text())
    for key in ("test_tpr_interval", "test_fpr_interval"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    return OperatingPoint(**data)


def find_images(folder: Path) -> list[Path]:
    """Every PNG/JPEG/BMP file under ``folder`` (recursively), sorted; an error when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--images {folder} is not a folder; pass the folder of images to inspect")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no {'/'.join(s[1:].upper() for s in SUPPORTED_SUFFIXES)} image")
    return files


def readable_images(folder: Path, skip_bad: bool = False,
                    progress: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """The readable images under ``folder`` (paths relative to it) and the bad ones with their reasons.

    Every file is fully decoded once (:func:`nexperia_utils.data.images.find_bad_images`); a bad file raises a
    :class:`DataError` naming all of them unless ``skip_bad``.
    """
    from nexperia_utils.data.images import find_bad_images
    from nexperia_utils.errors import format_listing

    folder = Path(folder)
    names = [str(p.relative_to(folder)) for p in find_images(folder)]
    bad = find_bad_images(folder, names, progress=progress)
    if bad and not skip_bad:
        listing = format_listing([f"{folder / name}: {reason}" for name, reason in bad])
        raise DataError(f"{len(bad)} of {len(names)} images under {folder} cannot be read:\n{listing}\n"
                        f"replace them, or pass --skip-bad to score the others and list these")
    bad_names = {name for name, _ in bad}
    names = [name for name in names if name not in bad_names]
    if not names:
        raise DataError(f"no readable image under {folder}")
    return names, bad


def decide(score: np.ndarray, point: OperatingPoint) -> np.ndarray:
    """``reject`` at or above the threshold, ``review`` in the band below it, ``pass`` otherwise."""
    score = np.asarray(score, dtype=float)
    out = np.full(score.shape, "pass", dtype=object)
    out[(score >= point.review_threshold) & (score < point.threshold)] = "review"
    out[score >= point.threshold] = "reject"
    return out


def score_folder(run_dir: Path, point: OperatingPoint, folder: Path, skip_bad: bool = False, batch_size: int = 128,
                 device: str = "auto", progress: bool = True, backend: str = "torch",
                 detector: Callable[[], Any] | None = None) -> tuple[pd.DataFrame, list[tuple[str, str]], float]:
    """Score every image under ``folder``: ``(decisions, bad files, images per second)``.

    ``backend``: ``torch`` (the checkpoint, bf16 autocast) or ``onnx`` (its ONNX export on onnxruntime,
    CPU; exported first when missing, see :mod:`nexperia_utils.line.export`).

    The throughput counts decoding, preprocessing and the forward passes (not the file check).

    Bad files raise a :class:`DataError` naming all of them unless ``skip_bad``.

    ``detector``: gives the run's :class:`~nexperia_utils.analysis.ood.OodDetector` (called once the images were
    checked); every image it flags goes to ``review`` (columns ``ood_score``, ``unfamiliar``): the score
    of an image unlike the training data is not to be trusted either way, and a camera glitch is
    neither good nor a defect (the report's batch 3).
    """
    from nexperia_utils.data.dataset import unlabelled_part
    from nexperia_utils.evaluation.predict import checkpoint_fingerprint, predict_proba

    folder = Path(folder)
    names, bad = readable_images(folder, skip_bad, progress)
    path = checkpoint_dir(run_dir) / point.checkpoint
    if not path.exists() or checkpoint_fingerprint(path) != point.fingerprint:
        raise ConfigError(f"{path} is not the checkpoint the operating point of {run_dir} was chosen with; "
                          f"delete {Path(run_dir) / OPERATING_POINT_FILE} to choose it again")
    if backend not in ("torch", "onnx"):
        raise ConfigError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    meta = read_checkpoint_meta(path)
    if backend == "torch":
        model, _ = load_checkpoint(path, device=device)
    else:
        from nexperia_utils.line.export import OnnxModel, export_onnx, onnx_path_for

        onnx_file = onnx_path_for(path)
        if not onnx_file.exists() or onnx_file.stat().st_mtime < path.stat().st_mtime:
            export_onnx(path, onnx_file)
        model, device = OnnxModel(onnx_file), "cpu"
    if detector is not None:
        from nexperia_utils.analysis.ood import logits_and_features

        detector = detector()  # before the clock: its first use fits it on the run's training part
    start = time.perf_counter()
    part = unlabelled_part("inspect", folder, pd.DataFrame({"image_id": names, "path": names}), point.image_size,
                           progress=progress)
    one_pass = detector is not None and backend == "torch" and point.crop == "center"
    if one_pass:  # the OOD features come from the same forward pass as the scores
        logits, features = logits_and_features(model, part, point.image_size, batch_size, device, progress=progress)
        probs = torch.softmax(torch.from_numpy(logits).float(), dim=1).numpy().astype(np.float64)
    else:
        probs = predict_proba(model, part, point.image_size, point.crop, batch_size, device, progress=progress,
                              amp=backend == "torch")
    seconds = time.perf_counter() - start
    negative = meta["classes"].index(point.negative_class)
    score = metrics.defect_score(probs, negative)
    decisions = pd.DataFrame({"image": names, "defect_score": score, "decision": decide(score, point)})
    if detector is not None:
        if not one_pass:  # other crops or onnxruntime: the features need the torch model's centre-crop pass
            torch_model = model if backend == "torch" else load_checkpoint(path, device=device)[0]
            logits, features = logits_and_features(torch_model, part, point.image_size, batch_size, device,
                                                   progress=progress)
        decisions["ood_score"] = detector.score(logits, features)
        decisions["unfamiliar"] = decisions["ood_score"] >= detector.threshold
        decisions.loc[decisions["unfamiliar"], "decision"] = "review"
    return decisions, bad, len(names) / max(seconds, 1e-9)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nexperia_utils.line.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run: outputs/<profile>/runs/<run>")
    parser.add_argument("--images", type=Path, required=True, help="folder of images to inspect (recursive)")
    parser.add_argument("--out", type=Path, required=True, help="decisions CSV to write")
    parser.add_argument("--target-tpr", type=float, default=0.997, help="TPR the threshold must reach on validation")
    parser.add_argument("--review-band", type=float, default=0.0,
                        help="share of validation images below the threshold sent to review (default 0: none)")
    parser.add_argument("--skip-bad", action="store_true", help="score the readable images and list the bad ones")
    parser.add_argument("--crop", default="center", choices=("center", "five", "ten"))
    parser.add_argument("--profile", default=None, help="the run's profile (default: from the run's path)")
    parser.add_argument("--data-root", default="", help="the run's data (default: the embedded synthetic set)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                        help="torch (the checkpoint) or onnx (its ONNX export on onnxruntime, CPU)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ood", default="mahalanobis", choices=("none", "max_softmax", "energy", "mahalanobis"),
                        help="OOD score whose flagged images go to review (default mahalanobis; none: off)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _operating_point(args) -> OperatingPoint:
    """The saved operating point when it matches the arguments, else chosen on the run's validation part."""
    from nexperia_utils.line.drift import run_experiment
    from nexperia_utils.evaluation.predict import checkpoint_fingerprint

    entries = list_checkpoints(args.run)
    if not entries:
        raise DataError(f"{args.run} has no kept checkpoint; train the model first (make baseline-<arch>)")
    saved = load_operating_point(args.run)
    if saved is not None and saved.matches(args.target_tpr, args.review_band, args.crop,
                                           checkpoint_fingerprint(entries[0]["path"])):
        logger.info("using the operating point saved in %s", args.run / OPERATING_POINT_FILE)
        return saved
    exp = run_experiment(args.run, args.profile, args.data_root, not args.no_progress)()
    size = int(read_run_meta(Path(args.run))["config"]["image_size"])
    logger.info("choosing the threshold for TPR >= %g on the validation part of %s", args.target_tpr, exp.data_root)
    return choose_operating_point(args.run, exp.part("val", size), exp.part("test", size), args.target_tpr,
                                  args.review_band, args.crop, args.device)


def _detector(args) -> Any:
    """The run's OOD detector for ``--ood`` (fitted on the run's training part on first use)."""
    from nexperia_utils.line.drift import run_detector, run_experiment

    experiment = run_experiment(args.run, args.profile, args.data_root, not args.no_progress)
    return run_detector(args.run, experiment, args.ood, device=args.device, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2: bad input, 3: bad images skipped)."""
    from nexperia_utils.io import atomic_write_csv

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_settings(args.target_tpr, args.review_band)
        if args.out.suffix.lower() != ".csv":
            raise ConfigError(f"--out {args.out} must be a .csv file")
        point = _operating_point(args)
        make_detector = None if args.ood == "none" else functools.partial(_detector, args)
        decisions, bad, speed = score_folder(args.run, point, args.images, args.skip_bad, args.batch_size,
                                             args.device, progress=not args.no_progress, backend=args.backend,
                                             detector=make_detector)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(args.out, decisions)
    counts = decisions["decision"].value_counts()
    print(point.summary())
    print(f"{len(decisions)} images scored ({args.backend}) at {speed:.0f} images/s: " +
          ", ".join(f"{counts.get(d, 0)} {d}" for d in DECISIONS) + f" -> {args.out}")
    if "unfamiliar" in decisions:
        print(f"{int(decisions['unfamiliar'].sum())} image(s) unfamiliar to the model ({args.ood} OOD score above "
              f"its validation quantile): sent to review")
    if bad:
        print(f"{len(bad)} bad file(s) skipped:\n" + "\n".join(f"  {args.images / n}: {r}" for n, r in bad),
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
