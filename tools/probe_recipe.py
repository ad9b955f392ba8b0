"""One probe of docs/LEARNING.md: train a model with the quick recipe and a few overrides, print its curve and test metrics.

Rows #22-#24 of LEARNING.md were measured with it, each in its own work folder so the data sets do not mix::

    NEXPERIA_WORKDIR=/tmp/probe-s03 .venv/bin/python tools/probe_recipe.py --scale 0.3 --epochs 12

It uses the project's own data, split and training loop (``open_experiment``, ``train_model``) and the
test metrics of the kept checkpoints (``kept_checkpoint_metrics``, centre crop), like notebook 02.
"""
from __future__ import annotations

import argparse
import logging
import time

from nexperia_utils.config import get_profile
from nexperia_utils.experiment import open_experiment, train_model
from nexperia_utils.reporting import kept_checkpoint_metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--scale", type=float, default=None, help="data_scale of the synthetic set (profile's if unset)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--run", default=None, help="run folder name (default: <arch>-probe)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (profile's if unset)")
    parser.add_argument("--optimizer", default=None, help="adamw | sgd (profile's if unset)")
    parser.add_argument("--label-smoothing", type=float, default=None, help="cross entropy's label smoothing (0 if unset)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    profile = get_profile(args.profile, data_scale=args.scale, epochs=args.epochs, image_size=args.image_size)
    start = time.perf_counter()
    exp = open_experiment(profile, None, progress=False)
    sizes = {name: len(exp.part(name).labels) for name in ("train", "val", "test")}
    print(f"data ready in {time.perf_counter() - start:.0f} s: {sizes}")
    overrides = {key: value for key, value in (("lr", args.lr), ("optimizer", args.optimizer)) if value is not None}
    if args.label_smoothing is not None:
        overrides["loss_params"] = {"label_smoothing": args.label_smoothing}
    result = train_model(exp, args.arch, run=args.run or f"{args.arch}-probe", **overrides)
    print(f"training {result.train_time_s:.0f} s, best validation AUC {result.best_val_auc:.4f} at epoch {result.best_epoch}")
    print(result.history[["epoch", "train_loss", "val_auc", "val_loss"]].round(4).to_string(index=False))
    kept = kept_checkpoint_metrics(result.run_dir, exp.part("test"), profile.top_k)
    print(kept.per_checkpoint.to_string(index=False))
    print(kept.mean_std.to_string())


if __name__ == "__main__":
    main()
