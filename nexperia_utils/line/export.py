"""ONNX export of a checkpoint for CPU deployment, onnxruntime inference and a parity check.

``python -m nexperia_utils.line.export --run outputs/quick/runs/resnet18-ce --images DIR`` exports the run's
best checkpoint to ``runs/<run>/onnx/<checkpoint>.onnx`` (float32, dynamic batch, the input of the
evaluation transform: ``(B, 3, S, S)`` ImageNet-normalised crops; a per-image standardisation of the
model is part of the graph), scores the images under ``DIR`` with PyTorch and with onnxruntime, and
prints the largest difference of their defect scores and both throughputs.

onnx, onnxscript and onnxruntime are an optional extra: ``pip install -e '.[onnx]'`` (in ``dev``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nexperia_utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("onnxruntime is not installed: pip install -e '.[onnx]' (or onnxruntime alone to run an "
                          "exported model)") from None
    return onnxruntime


def onnx_path_for(checkpoint: Path) -> Path:
    """Where the export of a checkpoint goes: ``<run>/onnx/<checkpoint stem>.onnx``."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent / "onnx" / f"{checkpoint.stem}.onnx"


def export_onnx(checkpoint: Path, out: Path | None = None) -> Path:
    """Export a checkpoint's model to ONNX (float32, dynamic batch); returns the file written."""
    from nexperia_utils.io import atomic_write
    from nexperia_utils.training.checkpoints import load_checkpoint

    model, meta = load_checkpoint(checkpoint, device="cpu")
    model = model.to(memory_format=torch.contiguous_format).float().eval()
    size = int(meta["config"]["image_size"])
    out = Path(out) if out is not None else onnx_path_for(checkpoint)
    example = torch.zeros(2, 3, size, size)

    def write(tmp: Path) -> None:
        torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False, input_names=["image"],
                          output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, write)
    logger.info("exported %s to %s", checkpoint, out)
    return out


class OnnxModel(torch.nn.Module):
    """An onnxruntime session behind a module's ``forward``, so the project's prediction code runs it as is."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"image": array})[0])


def parity(checkpoint: Path, onnx_file: Path, part, crop: str = "center", batch_size: int = 128) -> dict[str, float]:
    """Defect scores of ``part`` from PyTorch (float32) and onnxruntime: largest difference and images/s of each."""
    from nexperia_utils.evaluation import metrics
    from nexperia_utils.evaluation.predict import predict_proba
    from nexperia_utils.training.checkpoints import load_checkpoint

    model, meta = load_checkpoint(checkpoint, device="cpu")
    size = int(meta["config"]["image_size"])
    negative = meta["classes"].index(meta["negative_class"])
    timings, scores = {}, {}
    for name, net, amp in (("pytorch_bf16", model, True), ("pytorch_fp32", model, False),
                           ("onnxruntime", OnnxModel(onnx_file), False)):
        start = time.perf_counter()
        probs = predict_proba(net, part, size, crop, batch_size, "cpu", amp=amp)
        timings[name] = len(part) / (time.perf_counter() - start)
        scores[name] = metrics.defect_score(probs, negative)
    return {"images": len(part),
            "max_abs_score_diff_fp32": float(np.abs(scores["onnxruntime"] - scores["pytorch_fp32"]).max()),
            "max_abs_score_diff_bf16": float(np.abs(scores["onnxruntime"] - scores["pytorch_bf16"]).max()),
            **{f"images_per_s_{k}": v for k, v in timings.items()}}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: export the run's best checkpoint and check it on a folder of images."""
    import pandas as pd

    from nexperia_utils.data.dataset import unlabelled_part
    from nexperia_utils.line.inspect import readable_images
    from nexperia_utils.training.checkpoints import list_checkpoints, read_checkpoint_meta

    parser = argparse.ArgumentParser(prog="python -m nexperia_utils.line.export", description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="outputs/<profile>/runs/<run>")
    parser.add_argument("--images", type=Path, required=True, help="folder of real images for the parity check")
    parser.add_argument("--out", type=Path, default=None, help="ONNX file (default: <run>/onnx/<checkpoint>.onnx)")
    parser.add_argument("--crop", default="center", choices=("center", "five", "ten"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        entries = list_checkpoints(args.run)
        if not entries:
            raise DataError(f"{args.run} has no kept checkpoint; train the model first (make baseline-<arch>)")
        checkpoint = entries[0]["path"]
        _onnxruntime()
        out = export_onnx(checkpoint, args.out)
        size = int(read_checkpoint_meta(checkpoint)["config"]["image_size"])
        names, bad = readable_images(args.images, skip_bad=True, progress=False)
        part = unlabelled_part("images", args.images, pd.DataFrame({"image_id": names, "path": names}), size,
                               progress=False)
        result = parity(checkpoint, out, part, args.crop)
    except (DataError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{out}: {result['images']} images; max |defect score difference| onnxruntime vs PyTorch float32 "
          f"{result['max_abs_score_diff_fp32']:.2e}, vs PyTorch bf16 {result['max_abs_score_diff_bf16']:.2e}; "
          f"images/s: PyTorch bf16 {result['images_per_s_pytorch_bf16']:.0f}, PyTorch fp32 "
          f"{result['images_per_s_pytorch_fp32']:.0f}, onnxruntime {result['images_per_s_onnxruntime']:.0f}")
    if bad:
        print(f"{len(bad)} bad file(s) left out of the check:\n" + "\n".join(f"  {args.images / n}: {r}" for n, r in bad),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
