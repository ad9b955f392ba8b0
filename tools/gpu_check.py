"""The `full` profile's GPU path in one prepared command (about 8 minutes on one H200).

    python3 tools/gpu_check.py --out "$OUT"          # on the GPU machine (plain python3, no make)
    make gpu-check                                   # here, through the project's .venv
    python3 tools/gpu_check.py --scale 0.003 --image-size 32 --bench-batch 16 --train-batch 16 \
        --bench-steps 2 --epochs 1 --device cpu      # the CPU test's tiny size

It needs only torch, torchvision, numpy, pandas, scikit-learn, Pillow and tqdm (no papermill, jupyter or
grad-cam), and it:

1. generates the synthetic data at ``--scale`` (1.0 = 38,302 images) on every core, and decodes the
   parts into the cache (threads), timing both;
2. benchmarks training throughput of ``--bench-archs`` at ``--image-size`` and ``--bench-batch``: the
   model alone on tensors already on the device vs the real pipeline (decoded cache, flip
   augmentation, loss, AdamW), bf16 autocast and channels_last, and their ratio;
3. trains ``--train-arch`` from scratch with the quick recipe (AdamW one-cycle, per-image
   standardisation, flips, binary-balanced sampler) for ``--epochs``, or for as many epochs as the
   measured pipeline throughput fits into ``--budget-s``;
4. evaluates the kept checkpoints on the test part with the three crop styles (Table 3's column).

After every step it rewrites ``summary.json`` and ``summary.md`` in ``--out`` (default ``$OUT``, else
``outputs/gpu_check``), so a run stopped by a time limit still leaves the figures it measured.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nexperia_utils.evaluation import metrics  # noqa: E402

from nexperia_utils.data import synthetic
from nexperia_utils.training.bench import run_benchmark  # noqa: E402
from nexperia_utils.config import get_profile, workdir  # noqa: E402
from nexperia_utils.evaluation.predict import evaluate_run  # noqa: E402
from nexperia_utils.models.builders import resolve_device  # noqa: E402
from nexperia_utils.experiment import open_experiment, train_model  # noqa: E402
from nexperia_utils.io import atomic_write_text  # noqa: E402

logger = logging.getLogger("gpu_check")

CROPS = ("center", "five", "ten")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or workdir() / "outputs" / "gpu_check"))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full synthetic set (1.0: 38,302)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--bench-archs", default="resnet18,resnet50")
    parser.add_argument("--bench-batch", type=int, default=256)
    parser.add_argument("--bench-steps", type=int, default=20)
    parser.add_argument("--train-arch", default="resnet18")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, help="epochs to train (default: as many as fit --budget-s)")
    parser.add_argument("--budget-s", type=float, default=210.0, help="training time to fill when --epochs is not given")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--workers", type=int, default=max(0, min(cores - 1, 12)), help="DataLoader workers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def choose_epochs(train_images: int, val_images: int, images_per_s: float, budget_s: float, max_epochs: int) -> int:
    """Epochs that fit ``budget_s`` at the measured pipeline speed (validation counted at 3x training speed)."""
    epoch_s = train_images / images_per_s + val_images / (3 * images_per_s)
    return int(max(1, min(max_epochs, budget_s // (1.1 * epoch_s))))


def crop_table(rows: Any) -> list[dict[str, float]]:
    """Mean and standard deviation over the kept checkpoints of AUC and every FPR, per crop style, in %."""
    keys = ["auc"] + [metrics.metric_key(level) for level in metrics.TPR_LEVELS]
    table = []
    for crop in CROPS:
        part = rows[rows["crop"] == crop]
        entry: dict[str, float] = {"crop": crop, "checkpoints": int(len(part))}
        for key in keys:
            values = 100 * part[key].to_numpy(dtype=float)
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# GPU check ({summary['device']}, torch {summary['torch']}, {summary['cores']} cores)", ""]
    data = summary.get("data")
    if data:
        lines += [f"- data: {data['images']} images at scale {data['scale']}: "
                  f"{'reused' if data['reused'] else 'generated'} in {data['generate_s']:.1f} s on "
                  f"{data['workers']} processes; decoded at {data['resize']} px in {data['decode_s']:.1f} s", ""]
    if summary.get("bench"):
        lines += ["| model | px | batch | model alone (img/s) | pipeline (img/s) | ratio |", "|---|---|---|---|---|---|"]
        for b in summary["bench"]:
            lines.append(f"| {b['arch']} | {b['image_size']} | {b['batch_size']} | {b['model_images_per_s']:.0f} | "
                         f"{b['pipeline_images_per_s']:.0f} | {b['ratio']:.3f} |")
        lines += ["", f"(bf16 autocast + channels_last: {summary['bench'][0]['amp']}, "
                      f"{summary['bench'][0]['num_workers']} loader workers)", ""]
    train = summary.get("train")
    if train:
        lines += [f"- training {train['arch']} from scratch: {train['epochs']} epochs ({train['epochs_chosen_by']}), "
                  f"{train['train_images']} training images, batch {train['batch_size']}: {train['s_per_epoch']:.1f} s "
                  f"an epoch ({train['epochs_per_min']:.2f} epochs/min, validation included), peak memory "
                  f"{train['peak_memory_mb']:.0f} MB, best validation AUC {100 * train['best_val_auc']:.2f} % "
                  f"at epoch {train['best_epoch']}", ""]
    if summary.get("table3"):
        keys = ["auc"] + [metrics.metric_key(level) for level in metrics.TPR_LEVELS]
        lines += ["Test part, mean (std) over the kept checkpoints, %:", "",
                  "| crop | " + " | ".join(k.upper() if k == "auc" else k.replace("fpr@", "FPR@TPR ") for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for row in summary["table3"]:
            lines.append(f"| {row['crop']} | " + " | ".join(f"{row[k]:.2f} ({row[k + '_std']:.2f})" for k in keys) + " |")
        lines.append("")
    lines.append(f"Total {summary['total_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict[str, Any], start: float) -> None:
    summary["total_s"] = time.perf_counter() - start
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "summary.md", markdown(summary))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    progress = not args.no_progress
    device = resolve_device(args.device)
    cores = len(os.sched_getaffinity(0))
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                               "torch": torch.__version__, "cores": cores, "args": {k: str(v) for k, v in vars(args).items()}}

    data_dir = "data/synthetic-full" if args.scale == 1.0 else f"data/synthetic-gpu-check-{args.scale:g}"
    profile = get_profile(
        "full", data_scale=args.scale, data_dir=data_dir, image_size=args.image_size, batch_size=args.train_batch,
        weights="none", optimizer="adamw", lr=args.lr, weight_decay=0.05, scheduler="onecycle", augmentation="flip",
        input_norm="image", sampler="binary", num_workers=args.workers, top_k=3, seed=args.seed, amp=True,
        eval_batch_size=512)

    # 1. data
    root = profile.data_root()
    config = synthetic.SyntheticConfig(scale=args.scale, seed=args.seed)
    t0 = time.perf_counter()
    reused = synthetic.matches_config(root, config)
    if not reused:
        synthetic.generate_dataset(root, config, overwrite=root.exists() and any(root.iterdir()),
                                   progress=progress, workers=cores)
    generate_s = time.perf_counter() - t0
    exp = open_experiment(profile, progress=progress)
    t0 = time.perf_counter()
    parts = {name: exp.part(name) for name in ("train", "val", "test")}
    summary["data"] = {"scale": args.scale, "images": int(len(exp.split)), "reused": reused, "generate_s": generate_s,
                       "workers": cores, "resize": profile.resize_size, "decode_s": time.perf_counter() - t0,
                       "parts": {name: len(part) for name, part in parts.items()}}
    logger.info("data: %s", summary["data"])
    write_summary(args.out, summary, start)

    # 2. throughput
    summary["bench"] = []
    for arch in [a for a in args.bench_archs.split(",") if a]:
        result = run_benchmark(profile, arch, batch_size=args.bench_batch, steps=args.bench_steps, device=str(device))
        summary["bench"].append({"arch": arch, **result})
        logger.info("bench %s: %s", arch, result)
        write_summary(args.out, summary, start)

    # 3. training
    if args.epochs:
        epochs, chosen_by = args.epochs, "--epochs"
    else:
        measured = [b for b in summary["bench"] if b["arch"] == args.train_arch]
        if not measured:
            raise SystemExit(f"--budget-s needs a benchmark of {args.train_arch}: add it to --bench-archs or pass --epochs")
        epochs = choose_epochs(len(parts["train"]), len(parts["val"]), measured[0]["pipeline_images_per_s"],
                               args.budget_s, args.max_epochs)
        chosen_by = f"fit into {args.budget_s:.0f} s at the measured pipeline speed"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = f"gpu_check-{args.train_arch}"
    result = train_model(exp, args.train_arch, run=run, overwrite=True, epochs=epochs, device=str(device))
    times = result.history["time_s"].to_numpy(dtype=float)
    s_per_epoch = float(np.diff(np.concatenate([[0.0], times])).mean())
    summary["train"] = {"arch": args.train_arch, "epochs": epochs, "epochs_chosen_by": chosen_by,
                        "batch_size": args.train_batch, "train_images": len(parts["train"]),
                        "train_time_s": result.train_time_s, "s_per_epoch": s_per_epoch,
                        "epochs_per_min": 60.0 / s_per_epoch, "peak_memory_mb": result.peak_memory_mb,
                        "best_val_auc": result.best_val_auc, "best_epoch": result.best_epoch,
                        "val_auc_by_epoch": [float(v) for v in result.history["val_auc"]]}
    logger.info("train: %s", summary["train"])
    write_summary(args.out, summary, start)

    # 4. Table 3's column for the trained model
    rows = evaluate_run(exp.run_dir(run), parts["test"], crops=CROPS, device=device,
                        batch_size=profile.eval_batch_size, progress=progress, save_predictions=False,
                        num_workers=args.workers)
    summary["table3"] = crop_table(rows)
    write_summary(args.out, summary, start)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
