"""Distribution shift (issue 14): batch-3 parts, few-shot split, AdaBN, fine-tuning, OOD scores, drift check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from sklearn.metrics import roc_auc_score

from nexperia_utils.line import inspect as inspector
from nexperia_utils.analysis import ood
from nexperia_utils.analysis import shift
from nexperia_utils.data import synthetic
from nexperia_utils.data.dataset import UNLABELLED
from nexperia_utils.line.drift import DriftLimits, drift_check
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.models.builders import build_model
from nexperia_utils.training.loop import train

from conftest import CLASSES, make_part, tiny_train_config


@pytest.fixture(scope="module")
def batch3_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift") / "b3"
    synthetic.generate_dataset(root, synthetic.SyntheticConfig(scale=0.001, batch=3), progress=False, workers=1)
    return root


def test_batch_part_maps_classes_by_name_and_keeps_new_ones_apart(batch3_root):
    part = shift.batch_part(batch3_root, synthetic.CLASSES, 32, cache_dir=None, progress=False)
    frame = part.frame
    new = frame["label"].isin(synthetic.BATCH3_NEW_CLASSES)
    assert (frame["new_class"] == new).all() and new.any()
    assert (part.labels[new.to_numpy()] == UNLABELLED).all()
    known = ~new.to_numpy()
    assert [synthetic.CLASSES[i] for i in part.labels[known]] == frame.loc[known, "label"].tolist()
    assert part.images.shape[0] == len(frame) and (frame["batch"] == 3).all()


def test_few_shot_masks_are_nested_and_never_touch_the_test_part():
    labels = np.array([0] * 40 + [1] * 9 + [2] * 3 + [UNLABELLED] * 6)
    part = make_part("b3", len(labels), 0)
    part.labels[:] = labels
    masks, test = shift.few_shot_masks(part, [20, 5, 10], seed=3)
    assert sorted(masks) == [5, 10, 20]
    assert (masks[5] <= masks[10]).all() and (masks[10] <= masks[20]).all()
    for k, mask in masks.items():
        assert not (mask & test).any()
        assert not mask[labels == UNLABELLED].any()
        counts = {c: int(mask[labels == c].sum()) for c in (0, 1, 2)}
        assert counts == {0: min(k, 20), 1: min(k, 4), 2: 1}
    assert test[labels == UNLABELLED].all() and (test | masks[20]).all()
    again, _ = shift.few_shot_masks(part, [5, 10, 20], seed=3)
    assert all((again[k] == masks[k]).all() for k in masks)
    with pytest.raises(ConfigError):
        shift.few_shot_masks(part, [0])


def test_adabn_changes_only_batchnorm_statistics_to_those_of_the_new_images():
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    part = make_part("b3", 16, 4, size=40)
    part.images[:] = np.clip(part.images.astype(int) * 2 - 40, 0, 255).astype(np.uint8)  # another camera
    adapted = shift.adapt_batchnorm(model, part, 32, batch_size=8, device="cpu")
    before, after = model.state_dict(), adapted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
                           for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    # the first BatchNorm's running mean is the mean of its inputs over the new images (equal batches)
    first = next(m for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    handle = first.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    from nexperia_utils.data.transforms import eval_transform

    batch = torch.stack([eval_transform(32)(torch.from_numpy(im).unsqueeze(0)) for im in part.images])
    with torch.no_grad():
        adapted(batch)
    handle.remove()
    assert torch.allclose(first.running_mean, seen[0].mean(dim=(0, 2, 3)), atol=1e-4)
    assert first.momentum == 0.1 and not adapted.training


def test_fine_tune_moves_the_weights_and_refuses_unlabelled_images():
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    part = make_part("shots", 12, 5)
    tuned, losses = shift.fine_tune(model, part, 32, shift.FineTuneConfig(epochs=2, lr=1e-3, amp=False), "cpu")
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not torch.equal(model.fc.weight, tuned.fc.weight)
    part.labels[0] = UNLABELLED
    with pytest.raises(DataError, match="unlabelled"):
        shift.fine_tune(model, part, 32, shift.FineTuneConfig(epochs=1), "cpu")


def test_shift_row_uses_known_classes_only_and_matches_sklearn():
    part = make_part("b3", 9, 0)
    part.labels[:] = np.array([1, 1, 1, 1, 0, 0, 2, UNLABELLED, UNLABELLED])
    score = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.5, 0.9, 0.0, 1.0])
    row = shift.shift_row(shift.ShiftScores(part, score), negative_index=1, threshold=0.5)
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    assert row["AUC"] == pytest.approx(100 * roc_auc_score(y, score[:7]))
    assert row["TPR at val threshold"] == pytest.approx(100.0) and row["FPR at val threshold"] == pytest.approx(25.0)
    assert row["FPR@100"] == pytest.approx(25.0)  # the lowest defect score 0.5 passes one good image (0.6)


def test_ood_scores_against_their_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)) * 3
    assert np.allclose(ood.max_softmax_score(logits), 1 - softmax(logits, axis=1).max(axis=1))
    assert np.allclose(ood.energy_score(logits), -logsumexp(logits, axis=1))
    assert np.allclose(ood.energy_score(logits, 2.0), -2.0 * logsumexp(logits / 2.0, axis=1))
    features = rng.normal(size=(60, 5)) + np.repeat(np.eye(5)[:3] * 4, 20, axis=0)
    labels = np.repeat([0, 1, 2], 20)
    maha = ood.Mahalanobis.fit(features, labels)
    probe = rng.normal(size=(6, 5))
    direct = np.array([min((f - m) @ maha.precision @ (f - m) for m in maha.means) for f in probe])
    assert np.allclose(maha.score(probe), direct)
    assert np.allclose(maha.means[1], features[20:40].mean(axis=0))


def test_ood_auroc_on_a_hand_made_case():
    assert ood.ood_auroc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert ood.ood_auroc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0
    assert ood.ood_auroc([0.1, 0.4], [0.3, 0.5]) == 0.75  # pairs: (.3>.1) (.3<.4) (.5>.1) (.5>.4)
    assert np.isnan(ood.ood_auroc([], [1.0]))
    # a Mahalanobis detector on features: images far from every class mean are told apart
    rng = np.random.default_rng(1)
    train_features = rng.normal(size=(200, 8))
    maha = ood.Mahalanobis.fit(train_features, np.repeat([0, 1], 100))
    familiar, unfamiliar = maha.score(rng.normal(size=(50, 8))), maha.score(rng.normal(size=(50, 8)) + 3)
    assert ood.ood_auroc(familiar, unfamiliar) > 0.99


def test_detector_save_and_load_roundtrip(tmp_path):
    maha = ood.Mahalanobis(np.arange(6.0).reshape(2, 3), np.eye(3))
    detector = ood.OodDetector("mahalanobis", 4.5, 0.99, "abc", maha, np.array([0.1, 0.2]))
    detector.save(tmp_path / "d.npz")
    back = ood.OodDetector.load(tmp_path / "d.npz")
    assert (back.method, back.threshold, back.quantile, back.fingerprint) == ("mahalanobis", 4.5, 0.99, "abc")
    assert np.array_equal(back.mahalanobis.means, maha.means) and np.array_equal(back.val_defect_scores, [0.1, 0.2])
    (tmp_path / "bad.npz").write_bytes(b"not a file")
    with pytest.raises(DataError, match="bad.npz"):
        ood.OodDetector.load(tmp_path / "bad.npz")


def test_drift_check_says_ok_for_the_same_distribution_and_retrain_for_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.beta(1, 8, size=400)
    same = drift_check(reference, rng.beta(1, 8, size=300), rng.random(300) < 0.01, 0.01)
    assert not same.drifted and same.message.startswith("ok")
    moved = drift_check(reference, rng.beta(3, 3, size=300), rng.random(300) < 0.01, 0.01)
    assert moved.drifted and "Kolmogorov-Smirnov" in moved.message and moved.message.startswith("retrain / adapt")
    flagged = drift_check(reference, rng.beta(1, 8, size=300), rng.random(300) < 0.2, 0.01, DriftLimits())
    assert flagged.drifted and "unfamiliar" in flagged.message
    # a significant but tiny shift of a huge folder is not drift; the same shift of the statistic is
    tiny = drift_check(rng.beta(1, 8, size=200_000), rng.beta(1, 8, size=200_000) + 0.005,
                       np.zeros(200_000, bool), 0.01)
    assert tiny.ks_pvalue < 0.001 and tiny.ks_statistic < 0.1 and not tiny.drifted
    with pytest.raises(DataError):
        drift_check(reference, [], [], 0.01)


def test_inspector_routes_unfamiliar_images_to_review(tmp_path):
    """Every image the OOD detector flags goes to review, whatever its defect score; the others keep theirs."""
    train_part, val = make_part("train", 36, 0), make_part("val", 24, 1)
    run_dir = tmp_path / "run"
    train(tiny_train_config(epochs=1, top_k=1), train_part, val, CLASSES, "good", "h", run_dir, progress=False)
    point = inspector.choose_operating_point(run_dir, val, None, target_tpr=1.0, device="cpu")
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i, image in enumerate(val.images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    plain, _, _ = inspector.score_folder(run_dir, point, folder, device="cpu", progress=False)
    assert (plain["decision"] == "pass").any()
    everything_unfamiliar = ood.OodDetector("energy", -np.inf, 0.99, "")
    routed, _, _ = inspector.score_folder(run_dir, point, folder, device="cpu", progress=False,
                                          detector=lambda: everything_unfamiliar)
    assert routed["unfamiliar"].all() and (routed["decision"] == "review").all()
    assert np.allclose(routed["defect_score"], plain["defect_score"])
    nothing_unfamiliar = ood.OodDetector("energy", np.inf, 0.99, "")
    same, _, _ = inspector.score_folder(run_dir, point, folder, device="cpu", progress=False,
                                        detector=lambda: nothing_unfamiliar)
    assert (same["decision"] == plain["decision"]).all() and not same["unfamiliar"].any()


def test_model_outputs_make_one_forward_pass_per_part_and_change_no_number():
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).eval()
    train_part, val, fam = make_part("train", 24, 0), make_part("val", 12, 1), make_part("test", 12, 2)
    odd = {"bright": make_part("odd", 8, 3)}
    odd["bright"].images[:] = 255 - odd["bright"].images
    plain = ood.ood_table(model, train_part, val, fam, odd, 32)
    plain_detector = ood.fit_detector(model, train_part, val, 32, 1)
    outputs = ood.ModelOutputs(model, 32)
    shared = ood.ood_table(model, train_part, val, fam, odd, 32, outputs=outputs)
    detector = ood.fit_detector(model, train_part, val, 32, 1, outputs=outputs)
    scores = detector.score(*outputs(fam))
    assert outputs.passes == 4  # train, val, test and the odd group, once each
    assert shared.equals(plain) and detector.threshold == plain_detector.threshold
    assert np.array_equal(scores, plain_detector.score(*ood.logits_and_features(model, fam, 32)))
    # another part under the same name (other images) is not mistaken for the cached one
    outputs(make_part("test", 10, 2))
    assert outputs.passes == 5
