# %% [markdown]
# # 07 · Error analysis: escapes, false alarms, suspected mislabels, Table 5 (report sections 1, 4.2)
#
# What an inspection engineer opens after training: which defective devices the model misses, which
# good devices it rejects, where it looks (Grad-CAM heatmaps of the defect score), and which labels
# are probably wrong. It analyses one trained run (default: the profile's ResNet18 baseline from
# `02_baseline.ipynb`) on the **test** part.
#
# **Operating points.** A device is rejected when its defect score `1 - p(good)` is at or above a
# threshold: the default cut 0.5, or the threshold of the first ROC operating point whose TPR reaches
# 99.1 ... 100 % (the tables' FPR rows). At TPR = 100 % the threshold *is* the lowest defect score, so
# nothing escapes by definition and that one image sets the FPR at TPR = 100 %. The galleries therefore
# show the defects missed at the 0.5 cut, the lowest-scoring defects (the report's Figure 10; those
# below the TPR >= 99.1 % threshold are marked as its escapes) and the highest-scoring good images
# (the false alarms that section 4.2 found to be mostly mislabelled defects).
#
# Also: a localisation score (does the heatmap point at the annotated defect?), a ranked CSV of
# suspected mislabels, Table 5 (the same checkpoints on corrected test labels) and PCA / t-SNE of the
# penultimate-layer activations (as in the student slides).

# %% parameters
profile = "quick"
data_root = ""
run = None                     # None: run_name("resnet18", "ce"), the profile's ResNet18 baseline
checkpoint = "best"            # "best" (highest validation AUC) or the epoch of a kept checkpoint
crop = "center"                # crop style of the predictions: center | five | ten (heatmaps: centre crop)
cam_method = "gradcam"         # gradcam | gradcam++ | layercam
cam_image_size = None          # Grad-CAM input size; None: the training size (see below)
cam_layer = None               # None: the profile's (quick layer2); auto: deepest with a >= 7x7 map; layer1-4 / block2-5
gallery_size = 12              # images per gallery
gallery_columns = 6
top_k_relabel = 46             # K: top suspected test images relabelled for Table 5 (the report: 46)
mislabel_parts = ["train", "val", "test"]  # parts ranked in suspected_mislabels.csv
sat_run = None                 # a SAT run whose sat/epoch_NNN.npz ranks the training images (None: the analysed run's own)
corrections_csv = None         # image_id,corrected_label; None: built from the synthetic annotations
boxes_csv = None               # defect boxes for real data (image_id,x,y,w,h or Kaggle defect_area.csv)
embedding_parts = ["test"]     # parts embedded with PCA / t-SNE
top_k = None                   # checkpoints evaluated for Table 5 (None: the profile's top-k)
device = "auto"
seed = 0

# %%
%matplotlib inline
import logging

import pandas as pd
from IPython.display import Markdown, display

from nexperia_utils.analysis import interpretation as ea
from nexperia_utils.analysis.interpretation import Interpretation, output_tag
from nexperia_utils.analysis import mislabels as ml
from nexperia_utils.data.boxes import box_lookup, input_boxes, read_boxes
from nexperia_utils.config import get_profile
from nexperia_utils.experiment import open_experiment, run_name
from nexperia_utils.analysis.explain import localisation_table, profile_cam_layer
from nexperia_utils.analysis.galleries import gallery_figure
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.reporting.published import published_table
from nexperia_utils.reporting import format_fraction_columns, save_figure, side_by_side, summary_table, write_table

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
P = get_profile(profile)
exp = open_experiment(P, data_root or None)
run = run or run_name("resnet18", "ce", weights=P.weights)
interp = Interpretation.from_experiment(exp, run, "test", checkpoint, crop, device)
A, test, pred, y = interp.checkpoint, interp.part, interp.predictions, interp.y_defect
tag = output_tag(run, checkpoint, crop, cam_method, cam_layer)  # file names: run + what differs from the defaults
k_ckpt = top_k or P.top_k
annotations = exp.annotations()
noisy = ml.noisy_ids(annotations)
boxes = box_lookup(read_boxes(boxes_csv) if boxes_csv else annotations)
print(f"{run}, checkpoint of epoch {A.epoch} (val AUC {A.val_auc:.4f}), "
      f"{A.display_name} at {A.image_size} px, predictions with {crop} crop")
print(f"test part: {len(test)} images, {int(y.sum())} defects; test AUC {interp.auc:.4f}")
print(f"annotations: {'yes' if annotations is not None else 'none'} "
      f"({len(noisy & set(pred['image_id']))} annotated mislabels in the test part); boxes for {len(boxes)} images")

# %% [markdown]
# ## Confusion matrix and defect scores per class (test part)
# Rows are the filed labels, columns the argmax class; the colour is the share of the row (log scale).
# The operating-point table says, for each threshold, how many defects escape and how many good
# devices are rejected.

# %%
fig = interp.plot_confusion(title=f"Confusion matrix, {run} epoch {A.epoch}, test part ({len(test)} images)")
save_figure(fig, exp.figures_dir(), f"07_confusion_{tag}")
display(fig)
points = interp.operating_points()
atomic_write_csv(exp.tables_dir() / f"07_operating_points_{tag}.csv", points)
display(format_fraction_columns(points, ["tpr", "fpr"]).style.format({"threshold": "{:.4g}"}).hide(axis="index"))

# %%
thresholds = interp.thresholds()
fig = interp.plot_score_distributions(marked=noisy, marked_label="annotated mislabel (defect filed as good)",
                                      title=f"Test defect scores per filed class, {run} epoch {A.epoch}")
save_figure(fig, exp.figures_dir(), f"07_scores_per_class_{tag}")
fig

# %% [markdown]
# ## Grad-CAM heatmaps
# Heatmaps explain the defect score (`explain.DefectScoreTarget`) on the centre crop at the training
# size. ResNets downsample 32x: the report's layer, `layer4`, is 7x7 at 224 px but 2x2 at 64 px,
# too coarse to point at a defect of a few pixels. `cam_layer = "auto"` reads the deepest layer whose
# map is still at least 7x7 (`explain.auto_cam_layer`: `layer4` at 224 px, `layer3` at 128 px); the
# quick profile reads `layer2` (16x16 at 128 px), the best Grad-CAM layer of its from-scratch ResNets
# at 64, 96 and 128 px (docs/LEARNING.md). The table of the localisation section compares every layer.
# A larger `cam_image_size` is valid too (the ResNets are fully convolutional up to the global pool),
# but the model then sees the device larger than in training: the Spearman correlation printed then
# compares the defect scores at the two sizes (close to 1: the heatmaps explain the same decisions).
# Captions give the image id, filed label, defect score and rank (1 = highest score of the test part)
# at the evaluation size; annotated boxes are dashed.

# %%
cam_size = int(cam_image_size or A.image_size)
test_cam = exp.part("test", cam_size)
threshold_991 = thresholds["TPR >= 99.1 %"]
galleries = interp.galleries(gallery_size)
boxes_cam = input_boxes(test_cam.frame, boxes, exp.data_root, cam_size)
with_box = [i for i, b in enumerate(boxes_cam) if b is not None]
needed = set(with_box).union(*[set(g.index) for g in galleries.values()])
cam_layer = cam_layer or profile_cam_layer(A.arch, P.cam_layer)
heat = interp.heatmaps(test_cam, needed, cam_size, cam_method, layer=cam_layer)
rho = interp.cam_score_agreement(test_cam, heat)
if rho is not None:
    print(f"heatmaps at {cam_size} px (training size {A.image_size} px): Spearman correlation of the defect "
          f"scores at the two sizes over the {len(heat.indices)} heatmapped images: {rho:.3f}")
else:
    print(f"heatmaps at the training size, {cam_size} px ({len(heat.indices)} images)")
print(f"{cam_method} reads {heat.layer or 'the last block'}")
flags = {i: "escape at TPR >= 99.1 %" for i in interp.escapes(threshold_991)}
truth = annotations.set_index("image_id") if annotations is not None else None
flags.update({i: f"annotated: {truth.loc[i, 'true_class']}" for i in noisy})

# %%
n_missed = len(interp.escapes(0.5))
fig = gallery_figure(galleries["missed"], heat, boxes_cam, columns=gallery_columns, flags=flags,
                     n_total=len(pred),
                     title=f"Escapes at the default cut: defects with defect score < 0.5 "
                           f"({n_missed} of {int(y.sum())}; lowest first; boxes dashed)")
save_figure(fig, exp.figures_dir(), f"07_gallery_missed_at_0.5_{tag}")
fig

# %%
fpr100 = points.loc[points["operating_point"] == "TPR = 100 %", "fpr"].iloc[0]
fig = gallery_figure(galleries["lowest_defects"], heat, boxes_cam, columns=gallery_columns, flags=flags,
                     n_total=len(pred),
                     title=f"Figure 10: lowest-scoring defects. The first sets the TPR = 100 % threshold "
                           f"({thresholds['TPR = 100 %']:.3g}, FPR {fpr100 * 100:.1f} %); "
                           f"TPR >= 99.1 % threshold {threshold_991:.3g}")
save_figure(fig, exp.figures_dir(), f"07_gallery_lowest_defects_{tag}")
fig

# %%
n_false_alarms = len(interp.false_alarms(threshold_991))
fig = gallery_figure(galleries["highest_good"], heat, boxes_cam, columns=gallery_columns, flags=flags,
                     n_total=len(pred),
                     title=f"Highest-scoring good images: likely mislabels ({n_false_alarms} good images rejected "
                           f"at TPR >= 99.1 %; annotated boxes of mislabelled defects dashed)")
save_figure(fig, exp.figures_dir(), f"07_gallery_highest_good_{tag}")
fig

# %% [markdown]
# ## Localisation score (not in the report)
# Over the test images with an annotated defect box: the **pointing game** (is the heatmap's maximum
# inside the box?) and the share of the heatmap's **mass inside the box**. `chance` is the mean share
# of the image the boxes cover, which is what a uniform heatmap scores on both: a model that looks at
# the defect scores well above it; one that relies on a shortcut (pocket, lighting) does not.
# `constant_maps` counts heatmaps without any localisation (Grad-CAM found no positive evidence for the
# defect score, typical of defects the model scores low); they count as misses.

# %%
groups = (truth.loc[test_cam.frame["image_id"], "true_class"].to_numpy()
          if annotations is not None else test_cam.frame["label"].to_numpy())
loc_summary, loc_images = localisation_table(heat, boxes_cam, groups, pred["defect_score"].to_numpy())
if loc_summary.loc["all", "n"] == 0:
    print("no test image has a defect box: pass boxes_csv (image_id,x,y,w,h) to score the localisation")
else:
    loc_images.insert(1, "image_id", test_cam.frame["image_id"].to_numpy()[loc_images["index"]])
    atomic_write_csv(exp.tables_dir() / f"07_localisation_per_image_{tag}.csv", loc_images)
    caption = (f"Localisation of {cam_method} heatmaps at {heat.layer or 'the last block'} ({run}, epoch {A.epoch}, "
               f"{cam_size} px input) on the "
               f"{int(loc_summary.loc['all', 'n'])} test images with a defect box, per annotated class, in %.")
    loc_table = format_fraction_columns(loc_summary, ["pointing_game", "mass_in_box", "chance"], 1)
    write_table(loc_table, exp.tables_dir(), f"07_localisation_{tag}", caption, index_header="class", row_labels={})
    display(Markdown(caption))
    display(loc_table)

# %% [markdown]
# The same scores for every layer the heatmaps can read, with Grad-CAM and LayerCAM (which weights each
# activation by its own positive gradient, so shallow layers stay sharp): how much of the localisation
# is the method's resolution rather than the model. `pointing_bound` is the most any heatmap of that
# layer could score on these boxes: an n x n map, upsampled bilinearly, peaks next to one of its n x n
# nodes, so a box smaller than the node spacing that holds no such pixel can never be hit
# (`localisation.pointing_bound`).

# %%
if loc_summary.loc["all", "n"] > 0:
    by_layer = interp.localisation_by_layer(test_cam, boxes_cam, groups, cam_size, layer=cam_layer)
    caption = (f"Localisation per Grad-CAM layer and method ({run}, epoch {A.epoch}, {cam_size} px input, "
               f"{int(by_layer['n'].iloc[0])} boxed test defects), in %; chosen = the layer of the heatmaps above (`cam_layer`).")
    by_layer.index = by_layer["layer"] + " " + by_layer["method"]
    layer_table = format_fraction_columns(by_layer.drop(columns=["layer", "method", "n"]),
                                          ["pointing_game", "mass_in_box", "chance", "pointing_bound"], 1)
    write_table(layer_table, exp.tables_dir(), f"07_localisation_layers_{tag}", caption,
                index_header="layer, method", row_labels={})
    display(Markdown(caption))
    display(layer_table)

# %% [markdown]
# ## Suspected mislabels
# Good-labelled images ranked by suspicion: the defect score of the analysed checkpoint; for training
# images with SAT state (the analysed run's own `sat/` folder, or `sat_run`'s) the mean of the defect
# score and SAT's soft-target defect mass `1 - t[good]`. A model's scores on its *training* images are
# biased towards the filed label, so those rank low without SAT. Written to
# `outputs/<profile>/suspected_mislabels.csv`; on the synthetic data the ranking is checked against the
# annotations (precision and recall at K).

# %%
frames = [pred] + [interp.predictions_of(exp.part(p, A.image_size)) for p in mislabel_parts if p != "test"]
sat_dir = exp.run_dir(sat_run) if sat_run else (A.run_dir if A.loss.startswith("sat") else None)
sat = (ml.sat_train_scores(sat_dir, exp.split, A.negative_class)
       if sat_dir is not None and "train" in mislabel_parts else None)
print(f"SAT state: {sat_dir.name + ' epoch ' + str(sat['sat_epoch'].iloc[0]) if sat is not None else 'none'}")
ranking = ml.suspected_mislabels(pd.concat(frames, ignore_index=True), A.negative_class, sat)
atomic_write_csv(exp.outputs / "suspected_mislabels.csv", ranking)
display(ranking.head(15).style.format(precision=4).hide(axis="index"))

# %%
K = min(int(top_k_relabel), int((ranking["part"] == "test").sum()))
if annotations is not None:
    quality = ml.ranking_quality(ranking, noisy, K)
    atomic_write_csv(exp.tables_dir() / f"07_mislabel_ranking_{tag}.csv", quality)
    display(Markdown(f"Ranking against the annotations (positives: good-labelled images whose annotated class is a "
                     f"defect), precision and recall at K = {K} and average precision, in %:"))
    display(format_fraction_columns(quality, ["precision", "recall", "average_precision", "base_rate"], 1)
            .style.format(precision=1).hide(axis="index"))
    fig = ml.plot_precision_recall_at_k(ranking, noisy, K, title=f"Suspected mislabels vs annotations, {run}")
    save_figure(fig, exp.figures_dir(), f"07_mislabel_precision_recall_{tag}")
    display(fig)
else:
    print("no annotations: the ranking cannot be scored here; check the galleries and fill in the template below")

# %% [markdown]
# ## Table 5: the same checkpoints on corrected test labels
# The top-K suspected test images are relabelled from a corrections CSV (`image_id, corrected_label`):
# on the synthetic data it is built from the annotations (only images whose annotated class differs
# from the filed label become corrections); for real data fill in the template written below
# (`corrections_template.csv`, the top-K ids) after looking at the galleries and pass it as
# `corrections_csv`. Only corrections of those K images that change the label are applied. The run's
# top-k checkpoints are evaluated with the filed and the corrected labels (mean (std) over them, as in
# Table 3).

# %%
atomic_write_csv(exp.outputs / "corrections_template.csv", ml.corrections_template(ranking, K))
relabelled = ml.relabel_top_k(interp, ranking, K, k_ckpt, annotations, corrections_csv)
top_ids = ml.top_test_ids(ranking, K)
if relabelled is None:
    print(f"No corrections: fill in {exp.outputs / 'corrections_template.csv'} (column corrected_label) and rerun "
          f"with corrections_csv=<that file>; Table 5 is not written.")
else:
    t5, applied, source = relabelled.results, relabelled.applied, relabelled.source
    atomic_write_csv(exp.tables_dir() / "table5_corrections.csv", applied)
    t5.to_csv(exp.tables_dir() / "table5_checkpoints.csv", index=False)
    table5 = summary_table(t5, columns=("model",))
    origin = "ImageNet-pretrained" if P.weights == "imagenet" else "trained from scratch (no ImageNet weights)"
    caption = (f"Table 5 (reproduction, profile `{P.name}`): {A.display_name} {origin}, {run}, test part of "
               f"`{exp.data_root.name}` ({len(test)} images, {int(y.sum())} defects), {crop} crop; mean (std) in % "
               f"over the {len(t5) // 2} checkpoints with the best validation AUC, with the filed labels and after "
               f"relabelling the top K = {K} good-labelled test images by defect score from {source}: "
               f"{len(applied)} of them changed label.")
    write_table(table5, exp.tables_dir(), "table5", caption)
    display(Markdown(caption))
    display(side_by_side(table5, published_table(5)))
    display(applied)

# %% [markdown]
# ## Embeddings: PCA and t-SNE of the penultimate-layer activations
# The activations feeding the final linear layer (512 values for ResNet18), coloured by filed class;
# annotated mislabels (defects filed as good) are red stars with their annotated class, the top-K
# suspects circled.

# %%
features, emb_ids, emb_labels = interp.features([exp.part(p, A.image_size) for p in embedding_parts])
print(f"features: {features.shape} from {', '.join(embedding_parts)}")
coords = {"PCA": ea.embed_2d(features, "pca", seed), "t-SNE": ea.embed_2d(features, "tsne", seed)}
marked = {i: f"true {truth.loc[x, 'true_class']}" for i, x in enumerate(emb_ids) if x in noisy} if noisy else {}
ringed = [i for i, x in enumerate(emb_ids) if x in set(top_ids)]
fig = ea.plot_embeddings(coords, emb_labels, A.classes, A.negative_class, marked, ringed,
                         title=f"Penultimate-layer activations ({features.shape[1]} values), {run} epoch {A.epoch}, "
                               f"{' + '.join(embedding_parts)} part ({len(features)} images)")
save_figure(fig, exp.figures_dir(), f"07_embeddings_{tag}")
fig
