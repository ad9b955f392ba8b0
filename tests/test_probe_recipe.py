"""tools/probe_recipe.py (the LEARNING.md probes) on the smoke profile, so it cannot rot."""
from __future__ import annotations

import pandas as pd
from tool_loader import load_tool


def test_probe_trains_with_the_overrides_and_prints_test_metrics(workdir, capsys):
    load_tool("probe_recipe").main(["--profile", "smoke", "--scale", "0.004", "--epochs", "1", "--run", "probe",
                                    "--lr", "0.0007", "--optimizer", "sgd"])
    out = capsys.readouterr().out
    assert "best validation AUC" in out and "fpr@99.1" in out and "mean" in out
    run_config = (workdir / "outputs" / "smoke" / "runs" / "probe" / "config.json").read_text()
    assert '"epochs": 1' in run_config and '"lr": 0.0007' in run_config and '"optimizer": "sgd"' in run_config
    # the scale override reaches the generator: a larger set than the smoke profile's 0.003 (144 images)
    annotations = pd.read_csv(workdir / "data" / "synthetic-smoke" / "annotations.csv")
    assert len(annotations) > 144
