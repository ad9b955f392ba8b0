"""tools/gpu_check.py at a tiny size on the CPU, as a subprocess (as on the GPU machine), so it cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tool_loader import load_tool

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gpu_check.py"


def _tool():
    return load_tool("gpu_check")


def test_epochs_fit_the_budget():
    choose = _tool().choose_epochs
    # 1,000 training + 300 validation images at 100 images/s: 11 s an epoch, 12.1 s with the margin
    assert choose(1000, 300, 100.0, 122.0, 50) == 10
    assert choose(1000, 300, 100.0, 1.0, 50) == 1  # at least one epoch
    assert choose(1000, 300, 1e6, 100.0, 15) == 15  # at most max_epochs


def test_gpu_check_runs_on_the_cpu_at_a_tiny_size(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "NEXPERIA_WORKDIR": str(tmp_path), "OUT": str(out)}
    command = [sys.executable, str(TOOL), "--scale", "0.003", "--image-size", "32", "--bench-archs", "resnet18",
               "--bench-batch", "16", "--train-batch", "16", "--bench-steps", "2", "--budget-s", "4",
               "--max-epochs", "2", "--workers", "0", "--device", "cpu", "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["images"] > 100 and not summary["data"]["reused"]
    assert (tmp_path / "data" / "synthetic-gpu-check-0.003" / "annotations.csv").exists()
    bench = summary["bench"][0]
    assert bench["model_images_per_s"] > 0 and bench["pipeline_images_per_s"] > 0 and bench["amp"]
    assert bench["ratio"] == bench["pipeline_images_per_s"] / bench["model_images_per_s"]
    train = summary["train"]
    assert 1 <= train["epochs"] <= 2 and "measured pipeline speed" in train["epochs_chosen_by"]
    assert len(train["val_auc_by_epoch"]) == train["epochs"] and train["peak_memory_mb"] > 0
    assert [row["crop"] for row in summary["table3"]] == ["center", "five", "ten"]
    assert all(0 <= row["auc"] <= 100 and 0 <= row["fpr@100"] <= 100 for row in summary["table3"])
    text = (out / "summary.md").read_text()
    assert "| resnet18 | 32 | 16 |" in text and "| ten |" in text
    run_config = json.loads((tmp_path / "outputs" / "full" / "runs" / "gpu_check-resnet18" / "config.json").read_text())
    assert run_config["config"]["weights"] == "none" and run_config["config"]["sampler"] == "binary"
