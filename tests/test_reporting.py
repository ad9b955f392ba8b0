"""Tests of nexperia_utils.reporting and nexperia_utils.reporting.published (tables, Markdown, figures)."""
from __future__ import annotations

import importlib

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from nexperia_utils.reporting import published

from nexperia_utils import reporting
from nexperia_utils.errors import DataError
from nexperia_utils.reporting.published import ROW_KEYS, ROW_LABELS, published_table, published_values


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
def _row(model, crop, ckpt, auc, f991, f993, f995, f997, f100, epoch=1):
    return {"model": model, "crop": crop, "checkpoint": ckpt, "epoch": epoch, "auc": auc,
            "fpr@99.1": f991, "fpr@99.3": f993, "fpr@99.5": f995, "fpr@99.7": f997, "fpr@100": f100}


@pytest.fixture
def results() -> pd.DataFrame:
    """ResNet34/ten (2 checkpoints) listed first, ResNet18/five (1), ResNet18/center (3)."""
    rows = [
        _row("ResNet34", "ten", "a", 0.9990, 0.02, 0.03, 0.04, 0.05, 0.10),
        _row("ResNet34", "ten", "b", 0.9986, 0.04, 0.05, 0.06, 0.07, 0.20),
        _row("ResNet18", "five", "a", 0.9975, 0.0226, 0.0289, 0.1026, 0.1221, 0.6218),
        _row("ResNet18", "center", "a", 0.9980, 0.01, 0.02, 0.03, 0.04, 0.30),
        _row("ResNet18", "center", "b", 0.9984, 0.012, 0.022, 0.036, 0.047, 0.36),
        _row("ResNet18", "center", "c", 0.9988, 0.014, 0.024, 0.042, 0.054, 0.39),
    ]
    frame = pd.DataFrame(rows)
    frame["loss"] = "ce"
    return frame


def _history(n_epochs: int = 6, classes=("chipping", "good", "scratch"), seed: int = 0, test: bool = True):
    rng = np.random.default_rng(seed)
    epoch = np.arange(1, n_epochs + 1)
    frame = pd.DataFrame({
        "epoch": epoch,
        "lr": 0.01 * 0.5 ** (epoch // 3),
        "time_s": 10.0,
        "train_loss": 1.0 / epoch,
        "val_loss": 1.2 / epoch,
        "train_acc": 1 - 0.5 / epoch,
        "val_acc": 1 - 0.6 / epoch,
        "train_binary_acc": 1 - 0.2 / epoch,
        "val_binary_acc": 1 - 0.3 / epoch,
        "val_auc": 1 - 0.01 / epoch,
        "val_fpr@100": rng.uniform(0.1, 0.6, n_epochs),
    })
    for key in ROW_KEYS[1:-1]:
        frame[f"val_{key}"] = rng.uniform(0.0, 0.1, n_epochs)
    if test:
        frame["test_fpr@100"] = rng.uniform(0.1, 0.6, n_epochs)
    for cls in classes:
        frame[f"val_acc/{cls}"] = rng.uniform(0.5, 1.0, n_epochs)
        frame[f"val_binary_acc/{cls}"] = rng.uniform(0.5, 1.0, n_epochs)
        frame[f"val_loss/{cls}"] = rng.uniform(0.0, 2.0, n_epochs)
        frame[f"val_binary_loss/{cls}"] = rng.uniform(0.0, 1.0, n_epochs)
    return frame


# ------------------------------------------------------------------------------------------------
# published numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("number, n_columns", [(2, 5), (3, 9), (4, 3), (5, 2)])
def test_published_table_shapes(number, n_columns):
    table = published_table(number)
    assert table.shape == (6, n_columns)
    assert tuple(table.index) == ROW_KEYS
    assert set(published_values(number)) == set(table.columns)
    assert published.published_caption(number).startswith(f"Table {number}")


def test_published_spot_values():
    t3 = published_table(3)
    assert list(t3.columns)[:3] == ["ResNet18 / CenterCrop", "ResNet18 / FiveCrop", "ResNet18 / TenCrop"]
    assert t3.loc["fpr@100", "ResNet50 / TenCrop"] == "10.65 (0.41)"
    assert t3.loc["auc", "ResNet50 / TenCrop"] == "99.86 (0.00)"
    assert t3.loc["fpr@99.1", "ResNet50 / TenCrop"] == "1.91 (0.43)"
    assert t3.loc["fpr@99.7", "ResNet34 / FiveCrop"] == "15.84 (1.65)"
    t2 = published_table(2)
    assert t2.loc["auc", "VGG19_bn"] == "99.70"  # no std in the report
    assert t2.loc["fpr@100", "ResNet_att_2"] == "44.04 (23.45)"
    t4 = published_table(4)
    assert list(t4.columns) == ["Cross Entropy", "WBCE", "SAT"]
    assert t4.loc["fpr@100", "WBCE"] == "26.41"
    t5 = published_table(5)
    assert t5.loc["fpr@99.1", "ResNet18 (corrected)"] == "0.55 (0.14)"
    values = published_values(3)
    assert values["ResNet50 / TenCrop"]["fpr@100"] == (10.65, 0.41)
    assert published_values(4)["SAT"]["auc"] == (99.88, None)
    # ResNet18 / CenterCrop of Table 3 is the same run as ResNet18 of Tables 2 and 5
    assert values["ResNet18 / CenterCrop"] == published_values(2)["ResNet18"] == published_values(5)["ResNet18"]


def test_published_values_is_a_copy():
    values = published_values(3)
    values["ResNet50 / TenCrop"]["fpr@100"] = (0.0, 0.0)
    assert published_values(3)["ResNet50 / TenCrop"]["fpr@100"] == (10.65, 0.41)


def test_published_unknown_table():
    with pytest.raises(ValueError, match="Table|table"):
        published_table(1)


def test_row_keys_match_metrics_module():
    try:
        metrics = importlib.import_module("nexperia_utils.evaluation.metrics")
    except ImportError:
        pytest.skip("nexperia_utils.evaluation.metrics not written yet")
    if not hasattr(metrics, "METRIC_KEYS"):
        pytest.skip("nexperia_utils.evaluation.metrics has no METRIC_KEYS yet")
    assert tuple(metrics.METRIC_KEYS) == ROW_KEYS


# ------------------------------------------------------------------------------------------------
# summary tables
# ------------------------------------------------------------------------------------------------
def test_summary_table_cells_and_order(results):
    table = reporting.summary_table(results)
    assert table.shape == (6, 3)
    assert tuple(table.index) == ROW_KEYS
    # models by first appearance, crops in the report's order
    assert list(table.columns) == ["ResNet34 / TenCrop", "ResNet18 / CenterCrop", "ResNet18 / FiveCrop"]
    # ResNet18/center AUC: 99.80, 99.84, 99.88 -> mean 99.84, var (0.04^2 * 2) / 2 -> std 0.04
    assert table.loc["auc", "ResNet18 / CenterCrop"] == "99.84 (0.04)"
    # FPR@100: 30, 36, 39 -> mean 35, var (25 + 1 + 16) / 2 = 21 -> std 4.5826
    assert table.loc["fpr@100", "ResNet18 / CenterCrop"] == "35.00 (4.58)"
    # ResNet34/ten FPR@100: 10, 20 -> mean 15, std sqrt(50) = 7.0711
    assert table.loc["fpr@100", "ResNet34 / TenCrop"] == "15.00 (7.07)"
    # a single checkpoint: the mean alone, as the report prints single-checkpoint models
    assert table.loc["fpr@100", "ResNet18 / FiveCrop"] == "62.18"
    assert table.loc["auc", "ResNet18 / FiveCrop"] == "99.75"


def test_summary_table_column_order_and_one_column(results):
    table = reporting.summary_table(results, column_order=[("ResNet18", "five"), ("ResNet18", "center")])
    assert list(table.columns) == ["ResNet18 / FiveCrop", "ResNet18 / CenterCrop"]
    by_loss = reporting.summary_table(results, columns=("loss",))
    assert list(by_loss.columns) == ["ce"]
    assert reporting.summary_table(results, columns=["model"], column_order=["ResNet18"]).shape == (6, 1)
    with pytest.raises(DataError, match="ResNet50"):
        reporting.summary_table(results, column_order=[("ResNet50", "ten")])


def test_summary_values_numbers(results):
    values = reporting.summary_values(results)
    assert list(values.columns) == ["model", "crop", "metric", "mean_pct", "std_pct", "n"]
    assert len(values) == 3 * 6
    row = values[(values.model == "ResNet18") & (values.crop == "center") & (values.metric == "fpr@100")].iloc[0]
    assert row["mean_pct"] == pytest.approx(35.0)
    assert row["std_pct"] == pytest.approx(np.sqrt(21.0))
    assert row["n"] == 3
    single = values[(values.crop == "five") & (values.metric == "auc")].iloc[0]
    assert single["n"] == 1 and np.isnan(single["std_pct"])


def test_summary_rejects_bad_results(results):
    with pytest.raises(DataError, match="fpr@99.5"):
        reporting.summary_table(results.drop(columns=["fpr@99.5"]))
    percent = results.copy()
    percent["auc"] = percent["auc"] * 100
    with pytest.raises(DataError, match="fractions"):
        reporting.summary_values(percent)
    with pytest.raises(DataError, match="no rows"):
        reporting.summary_table(results.iloc[:0])


def test_side_by_side(results):
    ours = reporting.summary_table(results[results.model == "ResNet18"])
    both = reporting.side_by_side(ours, published_table(3))
    assert isinstance(both.columns, pd.MultiIndex)
    assert both.shape == (6, 18)
    assert both.loc["auc", ("ResNet18 / CenterCrop", "ours")] == "99.84 (0.04)"
    assert both.loc["auc", ("ResNet18 / CenterCrop", "report")] == "99.83 (0.00)"
    assert both.loc["auc", ("ResNet50 / TenCrop", "ours")] == "-"
    assert list(both.columns.get_level_values(0))[:2] == ["ResNet18 / CenterCrop"] * 2


# ------------------------------------------------------------------------------------------------
# Markdown and files
# ------------------------------------------------------------------------------------------------
def test_to_markdown_contains_caption_and_cells(results):
    table = reporting.summary_table(results)
    caption = "Table X. Our numbers | with a pipe."
    text = reporting.to_markdown(table, caption)
    lines = text.splitlines()
    assert lines[0].startswith("| mean (std) % | ResNet34 / TenCrop")
    assert lines[1].count("---") == 4
    assert len([line for line in lines if line.startswith("|")]) == 2 + 6
    assert "Our numbers \\| with a pipe." not in text  # caption is prose, not a table row
    assert caption in text
    for key in ROW_KEYS:
        assert f"| {ROW_LABELS[key]} |" in text
        for cell in table.loc[key]:
            assert f" {cell} " in text
    two_level = reporting.to_markdown(reporting.side_by_side(table, published_table(3)), "cap")
    assert "ResNet50 / TenCrop (report)" in two_level and "10.65 (0.41)" in two_level


def test_write_table_writes_files(tmp_path, results):
    table = reporting.summary_table(results)
    csv_path, md_path = reporting.write_table(table, tmp_path / "tables", "table3", "Table 3. Ours.")
    assert csv_path == tmp_path / "tables" / "table3.csv" and md_path.name == "table3.md"
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["table3.caption.txt", "table3.csv", "table3.md"]
    back = pd.read_csv(csv_path, index_col=0)
    assert back.shape == (6, 3) and back.loc["fpr@100", "ResNet18 / CenterCrop"] == "35.00 (4.58)"
    assert "Table 3. Ours." not in csv_path.read_text()
    assert "Table 3. Ours." in md_path.read_text()
    assert (tmp_path / "tables" / "table3.caption.txt").read_text().strip() == "Table 3. Ours."


def test_write_nothing_on_failure(tmp_path, results, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="fpr@100"):
        reporting.write_summary(results.drop(columns=["fpr@100"]), out, "table3", "cap")
    with pytest.raises(ValueError, match="fpr@100"):
        reporting.write_table(reporting.summary_table(results.drop(columns=["fpr@100"])), out, "t", "cap")
    with pytest.raises(DataError, match="file stem"):
        reporting.write_table(reporting.summary_table(results), out, "../escape", "cap")
    assert not out.exists() or list(out.iterdir()) == []

    # a failure while rendering the Markdown leaves no CSV behind either
    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(reporting.tables, "to_markdown", boom)  # the writer renders with its own module's function
    with pytest.raises(RuntimeError):
        reporting.write_table(reporting.summary_table(results), out, "t", "cap")
    assert not out.exists() or list(out.iterdir()) == []


def test_write_summary(tmp_path, results):
    paths = reporting.write_summary(results, tmp_path, "table2", "cap", columns=("model",))
    assert [p.name for p in paths] == ["table2.csv", "table2.md", "table2_values.csv"]
    values = pd.read_csv(paths[2])
    assert set(values["model"]) == {"ResNet18", "ResNet34"}


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
def _roc_data(seed: int, n_good: int = 400, n_defect: int = 100, shift: float = 3.0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_good, int), np.ones(n_defect, int)]
    score = np.r_[rng.normal(0, 1, n_good), rng.normal(shift, 1, n_defect)]
    return y, score


def test_plot_roc():
    fig = reporting.plot_roc({"a": _roc_data(0), "b": _roc_data(1, shift=4.0)}, title="ROC")
    assert isinstance(fig, Figure)
    main, inset = fig.axes
    assert len(main.get_lines()) == 3  # two curves + chance line
    assert len(inset.get_lines()) == 2 + 5  # two curves + TPR threshold marks
    legend = [t.get_text() for t in main.get_legend().get_texts()]
    assert legend[0].startswith("a (AUC ") and "%" in legend[0]
    lo, hi = inset.get_xlim()
    assert 0 <= lo < hi <= 100
    assert inset.get_ylim()[0] < 99.0
    with pytest.raises(DataError, match="one class"):
        reporting.plot_roc({"bad": (np.zeros(5), np.arange(5.0))})


def test_plot_training_curves():
    fig = reporting.plot_training_curves(_history(), title="run")
    assert len(fig.axes) == 6
    loss, acc, bacc, auc, fpr, lr = fig.axes
    assert len(loss.get_lines()) == 2
    assert len(fpr.get_lines()) == 2  # val solid + test dotted
    assert fpr.get_lines()[1].get_linestyle() == ":"
    assert np.nanmax(auc.get_lines()[0].get_ydata()) <= 100.0 and np.nanmax(auc.get_lines()[0].get_ydata()) > 99
    bare = _history(test=False).drop(columns=["lr"])
    fig2 = reporting.plot_training_curves(bare)
    assert len(fig2.axes[4].get_lines()) == 1
    assert len(fig2.axes[5].get_lines()) == 0 and fig2.axes[5].texts[0].get_text() == "not recorded"
    with pytest.raises(DataError, match="epoch"):
        reporting.plot_training_curves(bare.drop(columns=["epoch"]))


def test_plot_per_class_curves():
    histories = {"CE": _history(seed=0), "SAT": _history(seed=1)}
    counts = pd.DataFrame({"train": [30, 200, 5], "val": [3, 20, 1], "test": [4, 22, 1]},
                          index=["chipping", "good", "scratch"])
    fig = reporting.plot_per_class_curves(histories, "val_binary_acc", counts=counts)
    assert len(fig.axes) == 3
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2, 2]
    assert fig.axes[1].get_title() == "good (200/20/22)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["CE", "SAT"]
    assert np.nanmax(fig.axes[0].get_lines()[0].get_ydata()) > 1.0  # shown in percent
    assert all(ax.get_ylim() == (-4.0, 104.0) for ax in fig.axes)  # one 0-100 % scale per panel
    losses = reporting.plot_per_class_curves(histories, "val_loss")
    assert losses.axes[0].get_ylim() != (-4.0, 104.0)  # losses keep their own scale
    fig2 = reporting.plot_per_class_curves({"CE": _history(classes=[f"c{i}" for i in range(10)])},
                                           ["val_acc", "val_binary_acc"])
    assert len(fig2.axes) == 10 and all(len(ax.get_lines()) == 2 for ax in fig2.axes)
    with pytest.raises(DataError, match="per-class"):
        reporting.plot_per_class_curves(histories, "val_margin")


def test_plot_metric_per_epoch():
    histories = {"CE": _history(seed=0), "SAT bad 1": _history(seed=1), "no test": _history(seed=2, test=False)}
    fig = reporting.plot_metric_per_epoch(histories, ("val_fpr@100", "test_fpr@100"))
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 5
    assert [line.get_linestyle() for line in lines[:2]] == ["-", ":"]
    assert ax.get_ylabel() == "FPR @ TPR=100 (%)"
    with pytest.raises(DataError, match="no history"):
        reporting.plot_metric_per_epoch(histories, ("val_nothing",))


def test_plot_crop_bars(results):
    fig = reporting.plot_crop_bars(results, "fpr@100", reference=published_values(3))
    (ax,) = fig.axes
    assert len(ax.patches) == 2 * 3  # 2 models x 3 crop styles present (missing ones are empty bars)
    assert len(ax.get_lines()) >= 1  # report markers
    with pytest.raises(DataError, match="metric"):
        reporting.plot_crop_bars(results, "accuracy")


def test_save_figure(tmp_path):
    fig = reporting.plot_training_curves(_history())
    path = reporting.save_figure(fig, tmp_path / "fig", "curves")
    assert path == tmp_path / "fig" / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]


def test_checkpoint_metrics_view():
    from nexperia_utils.reporting import checkpoint_metrics

    results = pd.DataFrame({"checkpoint": ["a", "b"], "epoch": [1, 2], "val_auc": [0.6, 0.7],
                            "auc": [0.5, 0.7], "fpr@99.1": [0.2, 0.4], "fpr@99.3": [0.2, 0.4], "fpr@99.5": [0.2, 0.4],
                            "fpr@99.7": [0.2, 0.4], "fpr@100": [1.0, 0.8], "accuracy": [0.9, 0.8],
                            "binary_accuracy": [0.9, 0.85], "model": ["ResNet18"] * 2})
    per_checkpoint, mean_std = checkpoint_metrics(results)
    assert list(per_checkpoint.columns)[:3] == ["checkpoint", "epoch", "val_auc"] and "model" not in per_checkpoint
    assert mean_std.loc["mean", "auc"] == 60.0 and mean_std.loc["std", "fpr@100"] == round(0.2 / 2**0.5 * 100, 2)
