"""Command line of the generator: ``python -m nexperia_utils.data.synthetic --out DIR ...``."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.data.synthetic.generate import generate_dataset, is_complete, matches_config
from nexperia_utils.data.synthetic.kaggle_export import export_kaggle
from nexperia_utils.data.synthetic.spec import BATCHES, SyntheticConfig

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nexperia_utils.data.synthetic",
                                     description="Generate the deterministic synthetic Nexperia-like data set.")
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. data/synthetic)")
    parser.add_argument("--scale", type=float, default=SyntheticConfig.scale,
                        help="fraction of the batch-2 class counts (default 0.1, about 3,830 images)")
    parser.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    parser.add_argument("--noise-fraction", type=float, default=SyntheticConfig.noise_fraction,
                        help="fraction of defect images filed under good (default 0.013)")
    parser.add_argument("--min-per-class", type=int, default=SyntheticConfig.min_per_class)
    parser.add_argument("--batch", type=int, choices=BATCHES, default=SyntheticConfig.batch,
                        help="production batch: 2 (the default data) or 3 (another line: new look, tin "
                             "particles, camera glitches)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    parser.add_argument("--kaggle-stage", type=int, choices=(1, 2), help="also export in this Kaggle layout")
    parser.add_argument("--kaggle-out", type=Path, help="folder of the Kaggle export (with --kaggle-stage)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="Kaggle test share (default 0.1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that render the images (default: every available core)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.kaggle_stage is None) != (args.kaggle_out is None):
        parser.error("--kaggle-stage and --kaggle-out go together")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = SyntheticConfig(scale=args.scale, noise_fraction=args.noise_fraction, seed=args.seed,
                             min_per_class=args.min_per_class, batch=args.batch)
    try:
        if is_complete(args.out) and not args.overwrite:
            if not matches_config(args.out, config):
                raise DataError(f"{args.out} holds a synthetic data set made with other settings (scale, seed, "
                                f"noise fraction, min per class) or by an older generator; pass --overwrite "
                                f"to regenerate it")
            logger.info("%s already holds this synthetic data set; reusing it (pass --overwrite to regenerate)",
                        args.out)
        else:
            generate_dataset(args.out, config, overwrite=args.overwrite, progress=not args.no_progress,
                             workers=args.workers)
        if args.kaggle_stage is not None:
            export_kaggle(args.out, args.kaggle_out, stage=args.kaggle_stage, test_fraction=args.test_fraction,
                          seed=args.seed, overwrite=args.overwrite)
    except (DataError, ConfigError) as err:
        logger.error("%s", err)
        return 2
    return 0
