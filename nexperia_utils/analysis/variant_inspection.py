"""What the trained STN and attention models do with their inputs (report sections 2.2-2.3, Figure 2, Table 1).

* STN: the transforms a trained STN applies (:func:`stn_thetas`, :func:`theta_frame`), how much of
  the image its views cover (:func:`view_coverage`, :func:`stn_health`) and the before/after views of
  Figure 2 (:func:`stn_views`).
* ResNet_att_2: its attention maps upsampled to the input (:func:`attention_maps`), the layer table
  (Table 1, :func:`att2_layer_table`) and the gradient that reaches ``conv6`` (:func:`conv6_gradient_norm`).
* Inputs: example images per class (:func:`example_indices`) as model inputs (:func:`eval_inputs`).

The runs, settings and Table 2 are in :mod:`nexperia_utils.analysis.model_variants`; the figures in
:mod:`nexperia_utils.reporting.variant_figures`."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.models.builders import resolve_device
from nexperia_utils.models.stn import TRANSFORMS, warp
from nexperia_utils.data.transforms import denormalise, eval_transform
from nexperia_utils.analysis.model_variants import ATT2_LAYERS


# --------------------------------------------------------------------------- inputs
def example_indices(labels: np.ndarray, n: int, classes: Sequence[int] | None = None, seed: int = 0) -> list[int]:
    """``n`` indices taking classes in turn (round robin, in class order), random within a class.

    ``classes`` restricts the choice to those class indices. Fewer than ``n`` come back when the
    classes hold fewer images.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    wanted = sorted(set(labels.tolist())) if classes is None else [c for c in classes if (labels == c).any()]
    queues = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in wanted}
    chosen: list[int] = []
    while len(chosen) < n and any(queues.values()):
        for c in wanted:
            if queues[c] and len(chosen) < n:
                chosen.append(int(queues[c].pop(0)))
    return chosen


def eval_inputs(part: SplitData, indices: Sequence[int], image_size: int) -> torch.Tensor:
    """The centre-cropped, normalised model inputs ``(n, 3, S, S)`` of ``part``'s images ``indices``."""
    dataset = part.dataset(eval_transform(image_size, "center"))
    if len(indices) == 0:
        return torch.zeros(0, 3, image_size, image_size)
    return torch.stack([dataset[int(i)][0] for i in indices])


def _batches(part: SplitData, image_size: int, batch_size: int) -> DataLoader:
    return DataLoader(part.dataset(eval_transform(image_size, "center")), batch_size=batch_size, shuffle=False)


# --------------------------------------------------------------------------- STN
def _stn_of(model: nn.Module) -> nn.Module:
    stn = getattr(model, "stn", None)
    if stn is None or not hasattr(stn, "theta"):
        raise ConfigError(f"{type(model).__name__} has no spatial transformer (`.stn`); pass a *_stn model.")
    return stn


@torch.no_grad()
def stn_thetas(model: nn.Module, part: SplitData, image_size: int, batch_size: int = 128,
               device: str | torch.device = "cpu") -> np.ndarray:
    """The affine matrices ``(N, 2, 3)`` the STN of ``model`` applies to each centre-cropped image of ``part``."""
    stn = _stn_of(model)
    device = resolve_device(device)
    was_training = model.training
    model.to(device).eval()
    out = [stn.theta(images.to(device)).float().cpu() for images, _, _ in _batches(part, image_size, batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 2, 3))


@torch.no_grad()
def stn_views(model: nn.Module, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Figure 2's two rows: the inputs and what the STN makes of them, as grey images in [0, 1].

    ``inputs`` are normalised model inputs ``(n, 3, S, S)``. Where the transform samples outside
    the input the STN writes 0 (the normalised mean), which shows as mid grey.
    """
    stn = _stn_of(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    transformed = stn(inputs.to(device)).cpu()
    model.train(was_training)
    return denormalise(inputs), denormalise(transformed)


def theta_frame(thetas: np.ndarray, transform: str, labels: np.ndarray | None = None,
                negative_index: int | None = None) -> pd.DataFrame:
    """The transform parameters per image, as the STN's parameterisation names them.

    ``affine``: ``theta11 ... theta23`` (rows of ``A_theta``), plus two derived numbers:
    ``area_scale``, the determinant of the linear part (the output shows an input region of
    ``area_scale`` times the image's area: below 1 zooms in, negative mirrors), and
    ``rotation_deg``, the angle of the rotation closest to the linear part,
    ``atan2(theta21 - theta12, theta11 + theta22)`` (positive: the output shows the input turned
    counter-clockwise on screen). ``scale_translation``: ``scale`` (theta1), ``tx`` (theta2),
    ``ty`` (theta3). Translations are in normalised units (1 = half the image side; ``tx > 0``
    moves the content left). Both get ``coverage`` (:func:`view_coverage`). With ``labels`` and
    ``negative_index`` a column ``group`` says good / defect.
    """
    thetas = np.asarray(thetas, dtype=np.float64)
    if thetas.ndim != 3 or thetas.shape[1:] != (2, 3):
        raise DataError(f"thetas must have shape (N, 2, 3); got {thetas.shape}.")
    if transform not in TRANSFORMS:
        raise ConfigError(f"transform must be one of {sorted(TRANSFORMS)}; got {transform!r}.")
    if transform == "affine":
        frame = pd.DataFrame({f"theta{r + 1}{c + 1}": thetas[:, r, c] for r in range(2) for c in range(3)})
        linear = thetas[:, :, :2]
        frame["area_scale"] = np.linalg.det(linear) if len(thetas) else np.zeros(0)
        frame["rotation_deg"] = np.degrees(np.arctan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1]))
    else:
        frame = pd.DataFrame({"scale": thetas[:, 0, 0], "tx": thetas[:, 0, 2], "ty": thetas[:, 1, 2]})
    frame["coverage"] = view_coverage(thetas)
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(frame):
            raise DataError(f"{len(labels)} labels for {len(frame)} transforms.")
        if negative_index is None:
            raise ConfigError("theta_frame: pass negative_index (the 'good' class index) with labels.")
        frame["group"] = np.where(labels == negative_index, "good", "defect")
    return frame


def view_coverage(thetas: np.ndarray, grid: int = 64) -> np.ndarray:
    """Share of the STN output that shows the image (not the zero padding), per transform.

    1 for the identity or any zoom-in inside the image; near 0 when the transform looks outside
    the image (a collapsed STN: the backbone sees a constant image and no gradient reaches the
    STN any more). Computed by warping an image of ones on a ``grid`` x ``grid`` raster.
    """
    thetas = torch.as_tensor(np.asarray(thetas, dtype=np.float32))
    if thetas.ndim != 3 or tuple(thetas.shape[1:]) != (2, 3):
        raise DataError(f"thetas must have shape (N, 2, 3); got {tuple(thetas.shape)}.")
    if len(thetas) == 0:
        return np.zeros(0)
    ones = torch.ones(len(thetas), 1, grid, grid)
    return warp(ones, thetas).mean(dim=(1, 2, 3)).numpy().astype(np.float64)


def stn_health(coverage: np.ndarray, dead_below: float = 0.05) -> str:
    """One sentence on whether the STN still shows the image: median coverage and dead views.

    ``coverage`` is :func:`view_coverage` per image; a view showing less than ``dead_below`` of
    the image counts as dead (the backbone sees the padding only).
    """
    coverage = np.asarray(coverage, dtype=float)
    if coverage.size == 0:
        return "no transforms to check"
    dead = int((coverage < dead_below).sum())
    text = (f"median share of the STN output showing the image: {np.median(coverage):.1%}; "
            f"{dead} of {coverage.size} views show less than {dead_below:.0%} of it")
    if dead > coverage.size / 2:
        text += (" - the STN has collapsed: it looks outside the image, the backbone sees a constant input and no "
                 "gradient reaches the STN any more (a learning rate too high for the localisation network)")
    return text


#: Value of each :func:`theta_frame` column at the identity transform (where an untrained STN sits).
IDENTITY_VALUES: dict[str, float] = {
    "theta11": 1.0, "theta12": 0.0, "theta13": 0.0, "theta21": 0.0, "theta22": 1.0, "theta23": 0.0,
    "area_scale": 1.0, "rotation_deg": 0.0, "scale": 1.0, "tx": 0.0, "ty": 0.0, "coverage": 1.0,
}


# --------------------------------------------------------------------------- attention
@torch.no_grad()
def attention_maps(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64
                   ) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int]]]:
    """Softmax probabilities and the attention maps of ResNet_att_2, upsampled to the input.

    Returns ``(probs (n, C), [map_conv4 (n, S, S), map_conv5 (n, S, S)], [grid shape of each map])``.
    Each map is the model's attention ``a`` (summing to one over its grid positions), upsampled
    bilinearly (``align_corners=False``) and multiplied by the number of grid positions, so a
    uniform map is 1 everywhere and the values say how many times the average weight a position
    gets.
    """
    if not hasattr(model, "forward_with_attention"):
        raise ConfigError(f"{type(model).__name__} has no forward_with_attention; pass a resnet18_att2 model.")
    if inputs.ndim != 4:
        raise DataError(f"inputs must be (n, 3, H, W); got {tuple(inputs.shape)}.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs: list[torch.Tensor] = []
    maps: list[list[torch.Tensor]] = []
    grids: list[tuple[int, int]] = []
    size = tuple(inputs.shape[2:])
    for start in range(0, len(inputs), batch_size):
        logits, raw = model.forward_with_attention(inputs[start:start + batch_size].to(device))
        probs.append(F.softmax(logits.float(), dim=1).cpu())
        grids = [tuple(m.shape[1:]) for m in raw]
        up = [F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
              * (m.shape[1] * m.shape[2]) for m in raw]
        maps.append([u.cpu() for u in up])
    model.train(was_training)
    if not probs:
        return np.zeros((0, 0)), [], []
    layers = [torch.cat([batch[i] for batch in maps]).numpy() for i in range(len(maps[0]))]
    return torch.cat(probs).numpy().astype(np.float64), layers, grids


def conv6_gradient_norm(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Gradient norms after one cross-entropy backward pass: conv6, conv5 (layer4), the classifier.

    With the report's concatenation compatibility ``<u, [l_i ; g]>`` the ``g`` term is the same
    at every position and cancels in the softmax, so ``conv6`` (which only feeds ``g``) gets a
    zero gradient (up to rounding); the dot-product compatibility ``<l_i, g>`` gives it one.
    The model's gradients are cleared afterwards.
    """
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), labels).backward()

    def norm(module: nn.Module) -> float:
        grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    out = {"conv6": norm(model.conv6), "layer4 (conv5)": norm(model.backbone.layer4),
           "classifier": norm(model.classifier)}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return out


def att2_layer_table(model: nn.Module, image_size: int) -> pd.DataFrame:
    """Table 1 for a given input size: each layer of ResNet_att_2 (report's names) and its output shape."""
    outputs: dict[str, str] = {}
    hooks = []
    for name, path in ATT2_LAYERS.items():
        module = model.get_submodule(path)

        def record(_module, _inputs, output, name=name):
            tensors = output if isinstance(output, tuple) else (output,)
            outputs[name] = " + ".join(str(tuple(t.shape[1:])) for t in tensors)
        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    descriptions = {
        "conv1": "7x7, 64, stride 2 + 3x3 max pool",
        "conv2": "[3x3, 64; 3x3, 64] x 2",
        "conv3": "[3x3, 128; 3x3, 128] x 2",
        "conv4": "[3x3, 256; 3x3, 256] x 2",
        "conv5": "[3x3, 512; 3x3, 512] x 2",
        "conv6": "3x3, 512 (+ BN, ReLU), replaces avgpool",
        "conv6 max pool (g)": "global max pool: the global feature g",
        "attention after conv4": "1x1 projection 256 -> 512, <u, [l_i; g]>, softmax: (g_a, map)",
        "attention after conv5": "<u, [l_i; g]>, softmax: (g_a, map)",
        "output (fc)": "linear 1024 (= [g_a conv4; g_a conv5]) -> classes",
    }
    return pd.DataFrame({"layer": list(ATT2_LAYERS), "what": [descriptions[n] for n in ATT2_LAYERS],
                         "module": list(ATT2_LAYERS.values()),
                         "output shape (C, H, W)": [outputs.get(n, "") for n in ATT2_LAYERS]}).set_index("layer")


# --------------------------------------------------------------------------- boxes


