"""Tests of nexperia_utils.analysis.loss_study: loss parameters, run names, training settings and Table 4."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from nexperia_utils.analysis import loss_study as ss
from nexperia_utils.config import get_profile
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.training.losses import SelfAdaptiveTraining, WeightedBinaryCE, build_loss
from nexperia_utils.evaluation.pixel_reference import REFERENCE_NAME
from nexperia_utils.reporting.published import ROW_KEYS, published_table
from nexperia_utils.data.synthetic import CLASSES
from nexperia_utils.training.loop import TrainConfig

CLASSES = list(CLASSES)


def test_parse_losses():
    assert ss.parse_losses("all") == list(ss.STUDY_LOSSES)
    assert ss.parse_losses("none") == [] and ss.parse_losses("") == []
    assert ss.parse_losses("sat_bad_1") == ["sat_bad_1"]
    assert ss.parse_losses(["ce", "wbce"]) == ["ce", "wbce"]
    with pytest.raises(ConfigError, match="unknown loss"):
        ss.parse_losses("focal")


def test_study_run_names_differ_from_the_baseline():
    from nexperia_utils.experiment import run_name

    assert ss.study_run_name("ce") == "resnet34-ce-study" != run_name("resnet34", "ce")
    assert ss.study_run_name("sat_bad_1") == "resnet34-sat_bad_1-study"
    assert ss.study_run_name("sat", "bootstrap") == "resnet34-sat-study-bootstrap"
    assert ss.study_run_name("sat", suffix="a05") == "resnet34-sat-study-a05"


def test_loss_labels_match_the_published_table():
    published = list(published_table(4).columns)
    assert [ss.LOSS_LABELS[l] for l in ("ce", "wbce", "sat")] == published
    assert set(ss.LOSS_LABELS) == set(ss.STUDY_LOSSES)


def test_scaled_start_epochs():
    assert ss.scaled_start_epochs(200) == {"lead_defect": 70, "marking_defect": 35, "pocket_damage": 0}
    assert ss.scaled_start_epochs(8) == {"lead_defect": 3, "marking_defect": 1, "pocket_damage": 0}  # 2.8, 1.4
    assert ss.scaled_start_epochs(3) == {"lead_defect": 1, "marking_defect": 1, "pocket_damage": 0}  # 1.05, 0.525
    assert ss.scaled_start_epochs(10, {"good": 5}, reference_epochs=20) == {"good": 3}  # 2.5 rounds up
    with pytest.raises(ConfigError):
        ss.scaled_start_epochs(0)


def test_loss_params_defaults():
    profile = get_profile("quick")
    settings = ss.StudySettings()
    assert settings.loss_params("ce", 8, profile, CLASSES) == {}
    assert settings.loss_params("sat", 8, profile, CLASSES) == {"alpha": 0.9, "sat_es": profile.sat_es}
    assert settings.loss_params("sat_bad_1", 8, profile, CLASSES)["sat_es"] == profile.sat_es
    boost = settings.loss_params("sat_bad_boost", 8, profile, CLASSES)
    assert boost["boost_classes"] == ["lead_defect", "marking_defect", "pocket_damage", "scratch"]
    assert boost["boost_factor"] == 5.0
    wbce = settings.loss_params("wbce", 8, profile, CLASSES)
    assert wbce == {"start_epochs": {"lead_defect": 3, "marking_defect": 1, "pocket_damage": 0}, "m": 0.1,
                    "default_start": 8}
    full = settings.loss_params("wbce", 200, get_profile("full"), CLASSES)
    assert full["start_epochs"]["lead_defect"] == 70 and full["default_start"] == 200
    json.dumps(boost), json.dumps(wbce)  # saved in config.json


def test_loss_params_build_the_losses():
    profile = get_profile("smoke")
    labels = torch.tensor([i % len(CLASSES) for i in range(20)])
    for name in ss.STUDY_LOSSES:
        params = ss.StudySettings().loss_params(name, profile.sat_epochs, profile, CLASSES)
        loss = build_loss(name, CLASSES, "good", labels, **params)
        if name.startswith("sat"):
            assert isinstance(loss, SelfAdaptiveTraining) and loss.sat_es == profile.sat_es
        if name == "sat_bad_boost":
            assert loss.class_multipliers[CLASSES.index("scratch")] == 5.0
        if name == "wbce":
            assert isinstance(loss, WeightedBinaryCE)
            assert loss.start_epochs[CLASSES.index("good")] == profile.sat_epochs  # never within the run


def test_loss_params_overrides_and_errors():
    profile = get_profile("quick")
    custom = ss.StudySettings(alpha=0.8, sat_es=2, boost_classes=["scratch"], boost_factor=3,
                              wbce_start_epochs={"chipping": 1}, wbce_m=1.0, wbce_default_start=5)
    assert custom.loss_params("sat", 8, profile, CLASSES) == {"alpha": 0.8, "sat_es": 2}
    assert custom.loss_params("sat_bad_boost", 8, profile, CLASSES)["boost_classes"] == ["scratch"]
    assert custom.loss_params("wbce", 8, profile, CLASSES) == {"start_epochs": {"chipping": 1}, "m": 1.0,
                                                              "default_start": 5}
    only_some = ["chipping", "good", "scratch"]  # the report's boost classes absent from the data are skipped
    assert ss.StudySettings().loss_params("sat_bad_boost", 8, profile, only_some)["boost_classes"] == ["scratch"]
    assert ss.StudySettings().loss_params("wbce", 8, profile, only_some)["start_epochs"] == {}
    with pytest.raises(ConfigError, match="SAT would never start"):
        ss.StudySettings(sat_es=8).loss_params("sat", 8, profile, CLASSES)
    with pytest.raises(ConfigError, match="unknown loss"):
        ss.StudySettings().loss_params("focal", 8, profile, CLASSES)


def test_study_train_overrides_follow_section_3_7():
    full = get_profile("full")
    o = ss.study_train_overrides(full, "sat", {"alpha": 0.9, "sat_es": 4})
    assert o["arch"] == "resnet34" and o["weights"] == "none" and o["scheduler"] == "cosine"
    assert o["epochs"] == full.sat_epochs and o["lr"] == full.sat_lr and o["batch_size"] == 32
    profile = get_profile("quick")  # from scratch: the profile's own one-cycle recipe
    o = ss.study_train_overrides(profile, "sat", {"alpha": 0.9, "sat_es": 4})
    assert o["scheduler"] == "onecycle" and o["lr"] == profile.lr and o["epochs"] == profile.sat_epochs
    assert o["sampler"] == "binary" and ss.study_schedule(profile) == "lr 0.003, one-cycle, half-defect batches"
    assert ss.study_schedule(full) == "lr 0.01, cosine annealing"
    assert o["eval_test_each_epoch"]
    assert ss.study_train_overrides(full, "ce", {})["sampler"] == "none"  # the report: plain shuffling
    config = TrainConfig.from_profile(profile, **o)  # the overrides are valid TrainConfig fields
    assert config.loss_params == {"alpha": 0.9, "sat_es": 4}
    balanced = ss.study_train_overrides(profile, "ce", {}, epochs=3, sampler="bootstrap", n_train=101, n_classes=10)
    assert balanced["sampler_per_class"] == 11 and balanced["epochs"] == 3
    with pytest.raises(ConfigError, match="sampler_per_class"):
        ss.study_train_overrides(profile, "ce", {}, sampler="bootstrap")


def test_finished_study_runs(tmp_path):
    exp = SimpleNamespace(run_dir=lambda name: tmp_path / name)
    (tmp_path / "resnet34-sat-study").mkdir()
    (tmp_path / "resnet34-sat-study" / "done.json").write_text("{}")
    (tmp_path / "resnet34-ce-study").mkdir()  # unfinished: no done.json
    assert ss.finished_study_runs(exp) == {"sat": tmp_path / "resnet34-sat-study"}
    with pytest.raises(DataError, match="no finished study run"):
        ss.evaluate_study(exp, {})


def test_load_history(tmp_path):
    pd.DataFrame({"epoch": [1, 2], "val_auc": [0.5, 0.6]}).to_csv(tmp_path / "history.csv", index=False)
    assert ss.load_history(tmp_path)["epoch"].tolist() == [1, 2]
    with pytest.raises(DataError, match="train the run first"):
        ss.load_history(tmp_path / "missing")


def _results() -> pd.DataFrame:
    rows = []
    for loss, base in (("sat_bad_boost", 0.2), ("ce", 0.6), ("wbce", 0.3)):  # not in the study's order
        for k, shift in enumerate((0.0, 0.1)):
            rows.append({"loss": loss, "loss_label": ss.LOSS_LABELS[loss], "checkpoint": f"e{k}", "auc": 0.99,
                         **{key: base + shift for key in ROW_KEYS[1:]}})
    return pd.DataFrame(rows)


def test_table4_shape_order_and_cells():
    table = ss.table4(_results())
    assert list(table.columns) == ["Cross Entropy", "WBCE", "SAT bad boost"]
    assert list(table.index) == list(ROW_KEYS)
    assert table.loc["auc", "WBCE"] == "99.00 (0.00)"
    assert table.loc["fpr@100", "Cross Entropy"] == "65.00 (7.07)"  # 60 and 70 %: sample std 7.07
    with pytest.raises(DataError, match="loss_label"):
        ss.table4(_results().drop(columns="loss_label"))
    reference = pd.DataFrame([{"model": REFERENCE_NAME, "loss_label": REFERENCE_NAME, "checkpoint": "C=0.01",
                               "auc": 0.55, **{key: 0.9 for key in ROW_KEYS[1:]}}])
    with_reference = ss.table4(pd.concat([reference, _results()], ignore_index=True))
    assert list(with_reference.columns) == ["Cross Entropy", "WBCE", "SAT bad boost", REFERENCE_NAME]  # last
    assert with_reference.loc["auc", REFERENCE_NAME] == "55.00"  # a single evaluation: no std
