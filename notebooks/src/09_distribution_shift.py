# %% [markdown]
# # 09 · Distribution shift: a batch from another machine (report sections 1, 3.1, 5.3)
#
# The report names four difficulties and leaves the fourth unexplored: batches from different machines
# and times. The same group measured a ResNet18 trained on batch 2 at AUC 99.83 % on batch 2 and
# 94.93 % on batch 3 (FPR at TPR = 100 %: 36.80 % vs 99.16 %). This notebook measures it on the
# generator's **batch 3** (another gain curve, illumination, lens blur, sensor noise, tape texture and a
# fainter marking, plus two classes batch 2 does not have: `tin_particle` and the rare `camera_glitch`),
# with the profile's ResNet18 baseline trained on batch 2 (`02_baseline.ipynb`, Table 3's run).
#
# Rows of the shift table, each scored on the same batch-2 test part and the same batch-3 test part:
# the batch-2 model as it is; **AdaBN** (BatchNorm statistics re-estimated on unlabelled batch-3
# images); **few-shot fine-tuning** on k labelled batch-3 images per class (k = 5, 10, 20); **several
# batches** (trained from scratch on batch 2 plus the k = 20 share of batch 3); and the pixel
# logistic-regression reference. Classes are mapped by name; batch 3's new classes never enter the AUC
# and are reported apart. Then: flagging the unknown (OOD scores and their AUROC) and the drift check.

# %% parameters
profile = "quick"
data_root = ""
run = None                   # None: run_name("resnet18", "ce"), the Table 3 ResNet18 baseline
shots = [5, 10, 20]          # k labelled batch-3 images per class for fine-tuning
fine_tune_epochs = 15
fine_tune_lr = 1e-4
several_batches = True       # train ResNet18 from scratch on batch 2 + the largest few-shot share
ood_quantile = 0.99          # OOD threshold: this quantile of the batch-2 validation scores
level = 0.991                # TPR of the operating threshold chosen on batch-2 validation
n_boot = 1000                # bootstrap resamples of the AUC intervals
retrain = False
device = "auto"
seed = 0

# %%
%matplotlib inline
import logging
import time

import pandas as pd
from IPython.display import Markdown, display

from nexperia_utils.analysis import shift
from nexperia_utils.training.checkpoints import list_checkpoints, load_checkpoint
from nexperia_utils.config import get_profile
from nexperia_utils.line.drift import drift_check, score_images
from nexperia_utils.experiment import cache_dir, open_experiment, run_name, train_model
from nexperia_utils.analysis.ood import OOD_METHODS, ModelOutputs, fit_detector, ood_table
from nexperia_utils.evaluation.pixel_reference import fit_pixel_reference
from nexperia_utils.reporting import save_figure, write_table
from nexperia_utils.reporting.shift_figures import plot_ood_scores, plot_shift

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
started = time.perf_counter()
P = get_profile(profile)
exp = open_experiment(P, data_root or None)
size = P.image_size
name = run or run_name("resnet18", "ce", weights=P.weights)
train_model(exp, "resnet18", overwrite=retrain, run=name)  # reused when finished
model, meta = load_checkpoint(list_checkpoints(exp.run_dir(name))[0]["path"], device=device)
b2_val, b2_test = exp.part("val"), exp.part("test")

# %% [markdown]
# ## Batch 3
# Generated beside the batch-2 data at the same scale (`data/<name>-batch3`). Every batch-3 image is
# labelled by name with the batch-2 model's classes; the few-shot pools are nested (k = 5 within 10
# within 20, at most half of each class) and the test part is everything outside the largest pool.

# %%
b3_root = shift.prepare_batch(P, seed=seed, progress=exp.progress)
b3 = shift.batch_part(b3_root, exp.classes, size, cache_dir(), exp.progress)
pools, test_mask = shift.few_shot_masks(b3, shots, seed)
b3_test = shift.subset(b3, test_mask, "batch3_test")
columns = {f"k={k}": b3.frame[pools[k]]["label"].value_counts() for k in sorted(pools)}
columns["test"] = b3_test.frame["label"].value_counts()
display(pd.concat(columns, axis=1).fillna(0).astype(int).rename_axis("filed label"))

# %% [markdown]
# ## The models of the table

# %%
negative = exp.negative_index
scorers = {"batch-2 model": shift.model_scorer(model, size, negative, device)}
adapted = shift.adapt_batchnorm(model, b3_test, size, device=device)  # unlabelled: labels are not used
scorers["AdaBN (batch-3 BN statistics)"] = shift.model_scorer(adapted, size, negative, device)
tune = shift.FineTuneConfig(epochs=fine_tune_epochs, lr=fine_tune_lr, augmentation=P.augmentation, seed=seed)
for k in sorted(pools):
    tuned, losses = shift.fine_tune(model, shift.subset(b3, pools[k], f"batch3_k{k}"), size, tune, device)
    logging.info("fine-tuned on k=%d per class (%d images): loss %.3f -> %.3f", k, int(pools[k].sum()),
                 losses[0], losses[-1])
    scorers[f"few-shot fine-tuning, k={k}"] = shift.model_scorer(tuned, size, negative, device)
if several_batches:
    k = max(pools)
    joint = shift.train_several_batches(exp, shift.subset(b3, pools[k], "batch3_share"), f"{name}-batch2+3",
                                        overwrite=retrain)
    joint_model, _ = load_checkpoint(list_checkpoints(joint.run_dir)[0]["path"], device=device)
    scorers[f"several batches (batch 2 + k={k} of batch 3)"] = shift.model_scorer(joint_model, size, negative,
                                                                                 device)
reference = fit_pixel_reference(exp.part("train"), b2_val, negative, size)
scorers["pixel logistic regression (reference)"] = reference.defect_score

# %% [markdown]
# ## The shift table
# Percent. AUC and FPR at TPR >= 99.1 % / = 100 % on each test part (known classes only); "at
# threshold": TPR and FPR on batch 3 at the threshold each model reaches TPR >= 99.1 % with on the
# batch-2 validation part. The published row is the group's ResNet18 (ImageNet-pretrained, full data).

# %%
table, detection = shift.shift_table(scorers, b2_val, b2_test, b3_test, negative, level, n_boot,
                                     progress=exp.progress)
published = pd.DataFrame({"batch 2 AUC": [99.83], "batch 2 FPR@100": [36.80], "batch 3 AUC": [94.93],
                          "batch 3 FPR@100": [99.16]}, index=["published ResNet18 (the group's slides)"])
table = pd.concat([table, published])
caption = (f"Distribution shift ({P.name} profile): ResNet18 trained on batch 2, scored on the batch-2 test part "
           f"({len(b2_test)} images) and on {len(b3_test)} batch-3 images outside every few-shot pool "
           f"(known classes only in the AUC). Thresholds at TPR >= {level * 100:g} % on batch-2 validation. "
           f"The pixel logistic regression is the trivial reference.")
write_table(table.round(2), exp.tables_dir(), "shift", caption, index_header="model", row_labels={})
display(Markdown(caption))
display(table.round(2))

# %% [markdown]
# ## Detection per batch-3 class
# Share of each batch-3 test class at or above each model's threshold: defects caught, `good` false
# alarms, `tin_particle` (a defect the batch-2 model never saw as such) and `camera_glitch` (neither
# good nor defect: it should go to review, see below).

# %%
caption = "Share (percent) of each batch-3 test class (true class) at or above each model's threshold."
write_table(detection.round(1), exp.tables_dir(), "shift_detection", caption, index_header="model", row_labels={})
display(detection.round(1))
fig = plot_shift(table.drop(index=published.index))
save_figure(fig, exp.figures_dir(), "09_shift")
fig

# %% [markdown]
# ## Flagging the unknown
# Out-of-distribution scores of the batch-2 model (max-softmax, energy, Mahalanobis on the penultimate
# layer fitted on batch-2 training features). AUROC of telling each batch-3 group from the batch-2 test
# images, and the share flagged at the batch-2 validation quantile.

# %%
groups = {g: shift.subset(b3_test, (b3_test.frame["true_class"] == g).to_numpy(), g)
          for g in ("camera_glitch", "tin_particle")}
groups["batch 3 known classes"] = shift.subset(b3_test, (b3_test.labels >= 0), "batch3_known")
outputs = ModelOutputs(model, size, device, exp.progress)  # one forward pass per part for the table, detector and plot
ood = ood_table(model, exp.part("train"), b2_val, b2_test, groups, size, ood_quantile, outputs=outputs)
caption = (f"OOD scores of the batch-2 ResNet18: AUROC (percent) against the {len(b2_test)} batch-2 test images, and "
           f"the share flagged at the {ood_quantile * 100:g} % quantile of the batch-2 validation scores.")
write_table(ood.round(2), exp.tables_dir(), "shift_ood", caption, index_header="OOD score", row_labels={})
display(ood.round(2))
best_method = max(OOD_METHODS, key=lambda m: ood.loc[m, "AUROC camera_glitch"])
detector = fit_detector(model, exp.part("train"), b2_val, size, negative, method=best_method,
                        quantile=ood_quantile, outputs=outputs)
scores = {part.name: detector.score(*outputs(part)) for part in [b2_test, *groups.values()]}
fig = plot_ood_scores(scores, detector.threshold, best_method)
save_figure(fig, exp.figures_dir(), "09_ood_scores")
fig

# %% [markdown]
# ## The drift check a line engineer runs on a new folder
# `make drift IMAGES=<folder>` (`python -m nexperia_utils.line.drift`) does this on image files: the share of
# images the OOD detector flags, against the share expected on familiar images, and the shift of the
# defect-score distribution against the validation part.

# %%
for part in (b2_test, b3_test):
    scored = score_images(exp.run_dir(name), detector, part, device, progress=False)
    report = drift_check(detector.val_defect_scores, scored["defect_score"], scored["unfamiliar"],
                         1 - detector.quantile)
    print(f"{part.name}: {report.message}")
seconds = time.perf_counter() - started
display(Markdown(f"Notebook wall time: {seconds / 60:.1f} min."))
