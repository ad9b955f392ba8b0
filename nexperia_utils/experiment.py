"""What every notebook does first: find (or make) the data, load the split, name the runs.

A notebook calls :func:`open_experiment` with its profile and optional data root and gets an
:class:`Experiment`: the split, the class list, the decoded parts and the output folders::

    exp = open_experiment(get_profile("quick"))
    result = train_model(exp, "resnet18")
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nexperia_utils.config import Profile, resolve_path, workdir
from nexperia_utils.data.dataset import SplitData, load_split_part
from nexperia_utils.errors import DataError
from nexperia_utils.data.transforms import resize_size_for

logger = logging.getLogger(__name__)



def splits_dir() -> Path:
    return workdir() / "data" / "splits"


def cache_dir() -> Path:
    return workdir() / "data" / "cache"


def prepare_data(profile: Profile, data_root: str | Path | None = None, seed: int = 0,
                 scale: float | None = None, progress: bool = True) -> Path:
    """The data root to use; the profile's synthetic default is generated when it is not there yet.

    A user-given root is never written to: it must already hold a data set.
    """
    from nexperia_utils.data import synthetic

    default = profile.data_root()
    root = default if data_root in (None, "") else resolve_path(data_root)
    if root != default:
        if not root.exists():
            raise DataError(f"data root {root} does not exist; pass the folder that holds the class folders "
                            f"(or leave data_root empty to use the embedded synthetic data)")
        return root
    config = synthetic.SyntheticConfig(scale=scale or profile.data_scale, seed=seed)
    if not synthetic.matches_config(root, config):
        # Missing, unfinished, or written by another version of the generator: the embedded default
        # follows the code (generate_dataset replaces only a folder that holds a synthetic set).
        stale = root.exists() and any(root.iterdir())
        logger.info("%s the synthetic data set (scale %s) in %s", "regenerating" if stale else "generating",
                    config.scale, root)
        synthetic.generate_dataset(root, config, overwrite=stale, progress=progress)
    return root


@dataclass
class Experiment:
    """A profile, a data root and its split, with helpers to decode parts and name runs."""

    profile: Profile
    data_root: Path
    split_csv: Path
    split: pd.DataFrame
    classes: list[str]
    negative_class: str
    split_hash: str
    progress: bool = True
    manifest: Path | None = None
    _parts: dict[str, SplitData] = field(default_factory=dict, repr=False)

    @property
    def negative_index(self) -> int:
        return self.classes.index(self.negative_class)

    @property
    def outputs(self) -> Path:
        return self.profile.outputs_dir()

    def part(self, name: str, image_size: int | None = None) -> SplitData:
        """The decoded ``train``/``val``/``test`` part at the profile's (or the given) image size."""
        size = image_size or self.profile.image_size
        key = f"{name}@{size}"
        if key not in self._parts:
            resize = resize_size_for(size)
            self._parts[key] = load_split_part(self.split, name, self.data_root, self.classes, resize,
                                               cache_dir(), self.progress, self.split_hash)
        return self._parts[key]

    def run_dir(self, name: str) -> Path:
        return self.outputs / "runs" / name

    def tables_dir(self) -> Path:
        return self.outputs / "tables"

    def figures_dir(self) -> Path:
        return self.outputs / "figures"

    def annotations(self) -> pd.DataFrame | None:
        """The synthetic data's annotations (true class, noise flag, defect box), when present."""
        file = self.data_root / "annotations.csv"
        return pd.read_csv(file, dtype={"image_id": str}) if file.exists() else None


def open_experiment(profile: Profile, data_root: str | Path | None = None, split_seed: int = 0,
                    overwrite_split: bool = False, negative_class: str | None = None,
                    manifest: str | Path | None = None, split_csv: str | Path | None = None,
                    progress: bool = True) -> Experiment:
    """Load (or generate) the data, validate it, and load (or draw) its split.

    ``split_csv`` reads (or writes) the split at that file instead of the default one for
    ``split_seed`` (the training processes of a distributed run open their parent's split).
    """
    from nexperia_utils.data.folders import load_dataset
    from nexperia_utils.data.split import default_split_path, load_or_create_split, split_hash

    root = prepare_data(profile, data_root, progress=progress)
    manifest_path = resolve_path(manifest) if manifest else None
    frame, negative = load_dataset(root, negative_class=negative_class, manifest=manifest_path)
    split_csv = resolve_path(split_csv) if split_csv else default_split_path(root, split_seed, splits_dir())
    split = load_or_create_split(frame, split_csv, seed=split_seed, overwrite=overwrite_split,
                                 negative_class=negative, data_root=root)
    classes = sorted(split["label"].unique().tolist())
    return Experiment(profile, root, split_csv, split, classes, negative, split_hash(split), progress,
                      manifest_path)


def run_name(arch: str, loss: str = "ce", train_crop: str = "center", weights: str = "none", suffix: str = "") -> str:
    """Folder name of a run: ``resnet18-ce``, ``resnet34-sat_bad_1``, ``resnet34-ce-five`` ..."""
    parts = [arch, loss]
    if train_crop != "center":
        parts.append(train_crop)
    if weights not in ("none", "imagenet"):
        parts.append("custom")
    if suffix:
        parts.append(suffix)
    return "-".join(parts)


def train_model(exp: Experiment, arch: str, loss: str = "ce", overwrite: bool = False,
                run: str | None = None, world_size: int = 1, **overrides: Any):
    """Train one model of the experiment with the profile's settings (``overrides`` change fields).

    ``world_size > 1`` trains on that many local processes (one per GPU, or gloo on the CPU) with
    ``torchrun`` and DistributedDataParallel; the batch size stays the global one. Called inside such
    a process (``python -m nexperia_utils.training.distributed`` under torchrun) it trains this rank's share.
    """
    from nexperia_utils.training.distributed import current_world, launch, worker_arguments
    from nexperia_utils.training.loop import TrainConfig, train
    from nexperia_utils.training.checkpoints import load_result

    config = TrainConfig.from_profile(exp.profile, arch=arch, loss=loss, world_size=world_size, **overrides)
    name = run or run_name(arch, loss, config.train_crop, config.weights)
    if world_size > 1 and not current_world().distributed:
        for part in ("train", "val", "test"):  # decode the cache once, before the processes read it
            exp.part(part, config.image_size)
        launch(world_size, worker_arguments(
            exp.profile, arch, loss, exp.data_root, exp.split_csv, exp.manifest, exp.negative_class, name, overwrite,
            {k: v for k, v in overrides.items()}) + ([] if exp.progress else ["--no-progress"]))
        return load_result(exp.run_dir(name))
    test = exp.part("test", config.image_size) if config.eval_test_each_epoch else None
    return train(config, exp.part("train", config.image_size), exp.part("val", config.image_size),
                 exp.classes, exp.negative_class, exp.split_hash, exp.run_dir(name),
                 test_part=test, overwrite=overwrite, progress=exp.progress)
