"""Tests of nexperia_utils.training.losses against hand computations written with numpy/math."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.training.losses import (
    CrossEntropy,
    SelfAdaptiveTraining,
    WeightedBinaryCE,
    build_loss,
)

CLASSES = [
    "chipping", "device_flip", "empty_pocket", "foreign_material", "good",
    "lead_defect", "lead_glue", "marking_defect", "pocket_damage", "scratch",
]

LOGITS = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [-0.5, 0.2, 0.1]])


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def t(x, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=dtype)


def roundtrip(state: dict) -> dict:
    """Save and load a state dict the way checkpoints do (weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --------------------------------------------------------------------------- cross entropy
def test_cross_entropy_hand():
    targets = [0, 2, 1]
    p = np_softmax(LOGITS)
    want = np.mean([-math.log(p[i, targets[i]]) for i in range(3)])
    got = CrossEntropy()(t(LOGITS), t(targets, torch.long), t([0, 1, 2], torch.long), 0)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert CrossEntropy().epoch_snapshot() is None
    assert CrossEntropy().state_dict() == {}


def test_cross_entropy_label_smoothing_hand():
    """Target (1 - eps) on the label plus eps / C on every class: loss = -(1 - eps) log p_y - eps/C sum_c log p_c."""
    targets = [0, 2, 1]
    eps, c = 0.1, LOGITS.shape[1]
    logp = np.log(np_softmax(LOGITS))
    want = np.mean([-(1 - eps) * logp[i, targets[i]] - eps / c * logp[i].sum() for i in range(3)])
    loss = build_loss("ce", ["a", "good", "b"], "good", label_smoothing=eps)
    got = loss(t(LOGITS), t(targets, torch.long), None, 0)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert loss.state_dict() == {} and "label_smoothing=0.1" in repr(loss)
    for bad in (-0.1, 1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="label_smoothing"):
            CrossEntropy(bad)


# --------------------------------------------------------------------------- SAT
def make_sat(**kw) -> SelfAdaptiveTraining:
    labels = kw.pop("labels", [0, 1, 2, 1])
    base = dict(num_samples=len(labels), num_classes=3, train_labels=torch.tensor(labels), alpha=0.9, sat_es=2)
    base.update(kw)
    return SelfAdaptiveTraining(**base)


def test_sat_is_plain_ce_before_sat_es_and_keeps_state():
    sat = make_sat()
    before = sat.soft_targets.clone()
    idx = t([0, 1, 2], torch.long)
    targets = t([0, 1, 2], torch.long)
    for epoch in (0, 1):
        got = sat(t(LOGITS), targets, idx, epoch)
        want = CrossEntropy()(t(LOGITS), targets, idx, epoch)
        assert got.item() == pytest.approx(want.item(), rel=1e-7)
    assert torch.equal(sat.soft_targets, before)
    np.testing.assert_array_equal(before.numpy(), np.eye(3)[[0, 1, 2, 1]])


def test_sat_uniform_prediction_gives_log_c():
    # softmax = 1/3 everywhere: every target row has the same max, weights all 1, loss = log 3
    sat = make_sat()
    loss = sat(torch.zeros(3, 3), t([0, 1, 2], torch.long), t([0, 1, 2], torch.long), 2)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)
    np.testing.assert_allclose(sat.soft_targets[0].numpy(), [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3], rtol=1e-6)


def test_sat_momentum_update_weights_and_loss_by_hand():
    alpha = 0.9
    labels = np.array([0, 1, 2, 1])
    sat = make_sat(labels=labels.tolist(), alpha=alpha)
    idx = np.array([2, 0, 3])
    targets = labels[idx]

    # step 1 (epoch 2 = sat_es)
    p1 = np_softmax(LOGITS)
    t_old = np.eye(3)[targets]
    t1 = alpha * t_old + (1 - alpha) * p1
    w = t1.max(axis=1)
    w = w * 3 / w.sum()
    assert w.sum() == pytest.approx(3.0)
    ce_soft = -(t1 * np.log(p1)).sum(axis=1)
    want1 = np.mean(w * ce_soft)
    got1 = sat(t(LOGITS), t(targets, torch.long), t(idx, torch.long), 2)
    assert got1.item() == pytest.approx(want1, rel=1e-6)
    np.testing.assert_allclose(sat.soft_targets[idx].numpy(), t1, rtol=1e-6)
    np.testing.assert_array_equal(sat.soft_targets[1].numpy(), [0, 1, 0])  # not in the batch: untouched

    # step 2 (epoch 3): the momentum continues from t1
    logits2 = LOGITS[::-1].copy() * 0.7
    p2 = np_softmax(logits2)
    t2 = alpha * t1 + (1 - alpha) * p2
    w2 = t2.max(axis=1)
    w2 = w2 * 3 / w2.sum()
    want2 = np.mean(w2 * -(t2 * np.log(p2)).sum(axis=1))
    got2 = sat(t(logits2), t(targets, torch.long), t(idx, torch.long), 3)
    assert got2.item() == pytest.approx(want2, rel=1e-6)
    np.testing.assert_allclose(sat.soft_targets[idx].numpy(), t2, rtol=1e-6)


def test_sat_weights_are_rescaled_to_batch_size():
    # If the weights were not rescaled, halving every weight would halve the loss. With the
    # rescaling, two batches whose soft targets have the same max ratio give the same loss.
    sat = make_sat(alpha=0.5, sat_es=0)
    idx = t([0, 1, 2], torch.long)
    targets = t([0, 1, 2], torch.long)
    logits = t(LOGITS)
    p = np_softmax(LOGITS)
    tt = 0.5 * np.eye(3) + 0.5 * p
    raw_w = tt.max(axis=1)
    per = -(tt * np.log(p)).sum(axis=1)
    unnormalised = np.mean(raw_w * per)
    normalised = np.mean(raw_w * 3 / raw_w.sum() * per)
    got = sat(logits, targets, idx, 0).item()
    assert got == pytest.approx(normalised, rel=1e-6)
    assert abs(got - unnormalised) > 1e-3


def test_sat_gradient_treats_targets_and_weights_as_constants():
    sat = make_sat(sat_es=0, alpha=0.6)
    logits = t(LOGITS).requires_grad_(True)
    idx = t([0, 1, 2], torch.long)
    loss = sat(logits, t([0, 1, 2], torch.long), idx, 0)
    (grad,) = torch.autograd.grad(loss, logits)
    p = np_softmax(LOGITS)
    tt = 0.6 * np.eye(3) + 0.4 * p
    w = tt.max(axis=1)
    w = w * 3 / w.sum()
    # d/dz of sum_j -t_j log softmax(z)_j = p - t (t sums to 1); mean over 3 samples
    want = (w[:, None] * (p - tt)) / 3
    np.testing.assert_allclose(grad.numpy(), want, rtol=1e-5, atol=1e-7)


def test_sat_bad_1_keeps_defect_targets_one_hot():
    good = 1
    labels = [0, 1, 2, 1]
    sat = make_sat(labels=labels, mod="bad_1", negative_index=good, sat_es=0)
    idx = np.array([0, 1, 2])
    targets = np.array(labels)[idx]
    loss = sat(t(LOGITS), t(targets, torch.long), t(idx, torch.long), 0)

    p = np_softmax(LOGITS)
    tt = np.eye(3)[targets]
    tt[1] = 0.9 * tt[1] + 0.1 * p[1]  # only the good-labelled sample moves
    np.testing.assert_allclose(sat.soft_targets[idx].numpy(), tt, rtol=1e-6)
    np.testing.assert_array_equal(sat.soft_targets[0].numpy(), [1, 0, 0])
    np.testing.assert_array_equal(sat.soft_targets[2].numpy(), [0, 0, 1])
    w = tt.max(axis=1)  # defects: 1.0
    w = w * 3 / w.sum()
    want = np.mean(w * -(tt * np.log(p)).sum(axis=1))
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_sat_bad_boost_weights_by_hand():
    good = 1
    labels = [0, 1, 2, 1]
    sat = make_sat(labels=labels, mod="bad_boost", negative_index=good, boost={2: 5.0}, sat_es=0)
    idx = np.array([0, 1, 2, 3])
    logits = np.vstack([LOGITS, [[0.3, 0.3, 0.9]]])
    targets = np.array(labels)
    loss = sat(t(logits), t(targets, torch.long), t(idx, torch.long), 0)

    p = np_softmax(logits)
    tt = np.eye(3)[targets]
    for i in (1, 3):  # good-labelled rows move
        tt[i] = 0.9 * tt[i] + 0.1 * p[i]
    w = tt.max(axis=1) * np.array([1.0, 1.0, 5.0, 1.0])  # label 2 boosted x5 before rescaling
    w = w * 4 / w.sum()
    assert w[2] / w[0] == pytest.approx(5.0)
    want = np.mean(w * -(tt * np.log(p)).sum(axis=1))
    assert loss.item() == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(sat.soft_targets[2].numpy(), [0, 0, 1])


def test_sat_duplicate_indices_store_last_occurrence():
    sat = make_sat(sat_es=0)
    idx = t([1, 1, 0], torch.long)
    logits = np.array([[0.0, 1.0, 0.0], [0.0, 3.0, -2.0], [1.0, 0.0, 0.0]])
    sat(t(logits), t([1, 1, 0], torch.long), idx, 0)
    p = np_softmax(logits)
    np.testing.assert_allclose(sat.soft_targets[1].numpy(), 0.9 * np.eye(3)[1] + 0.1 * p[1], rtol=1e-6)


def test_sat_rejects_targets_that_disagree_with_indices():
    sat = make_sat(sat_es=0)
    with pytest.raises(DataError, match="indices"):
        sat(t(LOGITS), t([0, 1, 2], torch.long), t([1, 0, 2], torch.long), 0)


def test_sat_state_dict_roundtrip_gives_identical_losses():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 10)
    batches = [(rng.normal(size=(4, 3)), rng.choice(10, 4, replace=False)) for _ in range(6)]

    def run(loss_fn, part):
        return [loss_fn(t(z), t(labels[i], torch.long), t(i, torch.long), 1 + k).item() for k, (z, i) in part]

    a = make_sat(labels=labels.tolist(), sat_es=1)
    all_losses = run(a, list(enumerate(batches)))

    b = make_sat(labels=labels.tolist(), sat_es=1)
    first = run(b, list(enumerate(batches))[:3])
    state = roundtrip(b.state_dict())
    assert set(state) == {"soft_targets", "labels", "class_multipliers"}
    c = make_sat(labels=labels.tolist(), sat_es=1)
    c.load_state_dict(state)
    rest = run(c, list(enumerate(batches))[3:])
    assert first + rest == all_losses  # bit-identical
    assert torch.equal(c.soft_targets, a.soft_targets)


def test_sat_resumed_training_run_is_identical():
    """Model + optimiser + SAT checkpointed mid-run and resumed reproduce the uninterrupted run."""
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    labels = torch.randint(0, 3, (12,))
    order = [torch.randperm(12, generator=torch.Generator().manual_seed(e)) for e in range(4)]

    def fresh():
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        loss_fn = SelfAdaptiveTraining(12, 3, labels, alpha=0.8, sat_es=1)
        return model, opt, loss_fn

    def epochs(model, opt, loss_fn, which):
        out = []
        for e in which:
            for b in order[e].split(4):
                loss = loss_fn(model(x[b]), labels[b], b, e)
                opt.zero_grad()
                loss.backward()
                opt.step()
                out.append(loss.item())
        return out

    full = epochs(*fresh(), range(4))
    m, o, l = fresh()
    head = epochs(m, o, l, range(2))
    ckpt = roundtrip({"model": m.state_dict(), "opt": o.state_dict(), "loss": l.state_dict()})
    m2, o2, l2 = fresh()
    m2.load_state_dict(ckpt["model"])
    o2.load_state_dict(ckpt["opt"])
    l2.load_state_dict(ckpt["loss"])
    tail = epochs(m2, o2, l2, range(2, 4))
    assert head + tail == full


def test_sat_epoch_snapshot_and_device_move():
    sat = make_sat(sat_es=0)
    sat(t(LOGITS), t([0, 1, 2], torch.long), t([0, 1, 2], torch.long), 0)
    snap = sat.epoch_snapshot()
    assert snap["weights"].dtype == np.float16 and snap["weights"].shape == (4,)
    assert snap["soft_targets"].dtype == np.float16 and snap["soft_targets"].shape == (4, 3)
    np.testing.assert_allclose(snap["weights"], sat.soft_targets.max(1).values.numpy(), rtol=1e-3)
    assert snap["weights"][3] == 1.0
    moved = sat.to(torch.float64)  # buffers follow .to(); soft targets are floating
    assert moved.soft_targets.dtype == torch.float64 and moved.labels.dtype == torch.long


def test_sat_config_errors():
    with pytest.raises(ConfigError, match="alpha"):
        make_sat(alpha=1.0)
    with pytest.raises(ConfigError, match="negative_index"):
        make_sat(mod="bad_1")
    with pytest.raises(ConfigError, match="boost"):
        make_sat(mod="bad_boost", negative_index=1)
    with pytest.raises(ConfigError, match="mod"):
        make_sat(mod="bad_2")
    with pytest.raises(DataError, match="num_samples"):
        SelfAdaptiveTraining(5, 3, torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match=r"\[0, 2\]"):
        SelfAdaptiveTraining(3, 3, torch.tensor([0, 1, 3]))


# --------------------------------------------------------------------------- WBCE
def np_wbce(logits, targets, neg, starts, m, epoch):
    p = np_softmax(logits)
    ce = -np.log(p[np.arange(len(targets)), targets])
    p_good = p[:, neg]
    bce = np.where(np.array(targets) != neg, -np.log(1 - p_good), -np.log(p_good))
    b = m * (epoch >= np.array(starts)[targets])
    return np.mean((ce + b * bce) / (1 + b)), b


@pytest.mark.parametrize("epoch", [0, 2, 3, 4, 5, 9])
def test_wbce_by_hand_and_per_class_switch(epoch):
    neg, starts, m = 1, [0, 5, 3], 0.5
    targets = np.array([0, 1, 2])
    loss_fn = WeightedBinaryCE(neg, starts, m)
    got = loss_fn(t(LOGITS), t(targets, torch.long), None, epoch).item()
    want, b = np_wbce(LOGITS, targets, neg, starts, m, epoch)
    assert got == pytest.approx(want, rel=1e-6)
    # class 0 from epoch 0, class 2 from epoch 3, class 1 (good) from epoch 5
    np.testing.assert_array_equal(b > 0, [True, epoch >= 5, epoch >= 3])


def test_wbce_hand_numbers():
    # two classes (0 defect, 1 good): p = softmax([0, ln 3]) = (1/4, 3/4)
    logits = t([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    loss_fn = WeightedBinaryCE(1, [0, 0], m=1.0)
    # defect-labelled: ce = bce = ln 4 ; good-labelled: ce = bce = ln(4/3)
    got = loss_fn(logits, t([0, 1], torch.long), None, 0).item()
    assert got == pytest.approx((math.log(4) + math.log(4 / 3)) / 2, rel=1e-6)


def test_wbce_binary_term_has_gradient():
    neg = 1
    logits = t(LOGITS).requires_grad_(True)
    targets = t([0, 1, 2], torch.long)
    loss_fn = WeightedBinaryCE(neg, [0, 0, 0], m=1.0)
    (g_bin,) = torch.autograd.grad(loss_fn.binary_ce(logits, targets).sum(), logits)
    assert g_bin.abs().sum() > 0.1
    # hand gradient of -log(p0 + p2) for sample 0: dz_j = p_j - p_j * [j defect] / p_defect
    p = np_softmax(LOGITS)
    pd = p[0, 0] + p[0, 2]
    want0 = p[0] - np.array([p[0, 0], 0.0, p[0, 2]]) / pd
    np.testing.assert_allclose(g_bin[0].numpy(), want0, rtol=1e-5, atol=1e-7)
    # the full loss is not a rescaled CE (as it was with a detached binary term)
    (g_full,) = torch.autograd.grad(loss_fn(logits, targets, None, 0), logits)
    (g_ce,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, targets), logits)
    assert not torch.allclose(g_full, g_ce / 2, atol=1e-4)
    torch.testing.assert_close(g_full, (g_ce + g_bin / 3) / 2)


def test_wbce_stable_for_large_logits():
    logits = t([[500.0, -500.0, 0.0], [-800.0, 800.0, 0.0]])
    loss = WeightedBinaryCE(1, [0, 0, 0], m=1.0)(logits, t([1, 0], torch.long), None, 0)
    assert torch.isfinite(loss) and loss.item() > 100


# --------------------------------------------------------------------------- build_loss
def test_build_loss_defaults():
    labels = torch.tensor([4, 4, 0, 5, 9, 4])
    assert isinstance(build_loss("ce", CLASSES, "good"), CrossEntropy)

    wbce = build_loss("wbce", CLASSES, "good")
    assert isinstance(wbce, WeightedBinaryCE)
    want = [200] * 10
    want[CLASSES.index("lead_defect")] = 70
    want[CLASSES.index("marking_defect")] = 35
    want[CLASSES.index("pocket_damage")] = 0
    assert wbce.start_epochs.tolist() == want and wbce.m == 0.1 and wbce.negative_index == 4
    assert wbce.state_dict() == {}

    custom = build_loss("wbce", CLASSES, "good", start_epochs={"scratch": 3}, m=1.0, default_start=50)
    assert custom.start_epochs.tolist() == [50] * 9 + [3] and custom.m == 1.0

    sat = build_loss("sat", CLASSES, "good", train_labels=labels, sat_es=90)
    assert sat.mod == "none" and sat.sat_es == 90 and sat.alpha == 0.9 and sat.num_samples == 6
    bad1 = build_loss("sat_bad_1", CLASSES, "good", train_labels=labels)
    assert bad1.mod == "bad_1" and bad1.negative_index == 4

    boost = build_loss("sat_bad_boost", CLASSES, "good", train_labels=labels)
    mult = dict(zip(CLASSES, boost.class_multipliers.tolist()))
    assert {c for c, v in mult.items() if v == 5.0} == {"lead_defect", "marking_defect", "pocket_damage", "scratch"}
    assert all(v == 1.0 for c, v in mult.items() if c not in {"lead_defect", "marking_defect", "pocket_damage", "scratch"})
    boost2 = build_loss("sat_bad_boost", CLASSES, "good", train_labels=labels, boost_classes=["chipping"], boost_factor=2)
    assert boost2.class_multipliers.tolist() == [2.0] + [1.0] * 9


def test_build_loss_negative_class_looked_up_by_name():
    classes = ["bad", "good"]
    loss = build_loss("sat_bad_1", classes, "good", train_labels=torch.tensor([0, 1, 1]))
    assert loss.negative_index == 1
    loss = build_loss("wbce", ["good", "x", "y"], "good")
    assert loss.negative_index == 0


def test_build_loss_errors():
    labels = torch.tensor([4, 0])
    with pytest.raises(ConfigError, match=r"valid losses: \['ce', 'sat', 'sat_bad_1', 'sat_bad_boost', 'wbce'\]"):
        build_loss("focal", CLASSES, "good")
    with pytest.raises(ConfigError, match="lead_defekt.*valid class names"):
        build_loss("wbce", CLASSES, "good", start_epochs={"lead_defekt": 3})
    with pytest.raises(ConfigError, match="valid class names"):
        build_loss("sat_bad_boost", CLASSES, "good", train_labels=labels, boost_classes=["scratches"])
    with pytest.raises(ConfigError, match="valid class names"):
        build_loss("ce", CLASSES, "ok")
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['beta'\].*alpha"):
        build_loss("sat", CLASSES, "good", train_labels=labels, beta=1)
    with pytest.raises(ConfigError, match="train_labels"):
        build_loss("sat", CLASSES, "good")
    with pytest.raises(ConfigError, match="defect classes"):
        build_loss("sat_bad_boost", CLASSES, "good", train_labels=labels, boost_classes=["good"])
