"""ONNX export: dynamic batch, parity with PyTorch, and the inspector on onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from nexperia_utils.line import inspect as inspector  # noqa: E402
from nexperia_utils.evaluation import metrics  # noqa: E402
from nexperia_utils.evaluation.predict import predict_proba  # noqa: E402
from nexperia_utils.line.export import OnnxModel, export_onnx, onnx_path_for, parity  # noqa: E402
from nexperia_utils.training.loop import train  # noqa: E402
from nexperia_utils.training.checkpoints import list_checkpoints, load_checkpoint

from conftest import CLASSES, make_part, tiny_train_config  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    train(tiny_train_config(epochs=1, top_k=1), make_part("train", 24, 0), make_part("val", 12, 1), CLASSES, "good",
          "h", run_dir, progress=False)
    checkpoint = list_checkpoints(run_dir)[0]["path"]
    return run_dir, checkpoint, export_onnx(checkpoint)


def test_export_has_a_dynamic_batch_and_matches_pytorch(exported):
    _, checkpoint, onnx_file = exported
    assert onnx_file == onnx_path_for(checkpoint) and onnx_file.stat().st_size > 1_000_000
    part = make_part("test", 13, 2)  # 13 images: batches of another size than the export's example
    result = parity(checkpoint, onnx_file, part, crop="ten", batch_size=40)
    assert result["images"] == 13
    assert result["max_abs_score_diff_fp32"] < 1e-4
    assert result["max_abs_score_diff_bf16"] < 0.1
    assert min(v for k, v in result.items() if k.startswith("images_per_s")) > 0


def test_inspector_on_onnxruntime_scores_like_pytorch(exported, tmp_path):
    from PIL import Image

    run_dir, checkpoint, _ = exported
    val, test = make_part("val", 12, 1), make_part("test", 12, 2)
    point = inspector.choose_operating_point(run_dir, val, test, target_tpr=1.0, device="cpu", n_boot=50)
    for i, image in enumerate(test.images):
        Image.fromarray(image).save(tmp_path / f"{test.frame['image_id'][i]}.png")
    decisions, _, speed = inspector.score_folder(run_dir, point, tmp_path, device="cpu", progress=False,
                                                 backend="onnx")
    assert speed > 0
    model, _ = load_checkpoint(checkpoint)
    reference = metrics.defect_score(predict_proba(model, test, 32, "center", 32, "cpu", amp=False), 1)
    assert np.allclose(decisions["defect_score"].to_numpy(), reference, atol=1e-4)
    assert list(decisions["decision"] == "reject") == list(decisions["defect_score"] >= point.threshold)
    assert isinstance(OnnxModel(onnx_path_for(checkpoint)).session.get_inputs()[0].shape[0], str)  # symbolic batch
