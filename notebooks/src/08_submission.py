# %% [markdown]
# # 08 · Kaggle submission
#
# Predicts every unlabelled test image of a Kaggle competition folder and writes
# `outputs/<profile>/submission.csv` in the competition's format:
#
# | stage | competition | test folder | columns |
# | --- | --- | --- | --- |
# | 1 | `semi-conductor-image-classification-first` | `test/all_tests/` | `id,label` |
# | 2 | `semi-conductor-image-classification-second-stage` | `test/test_contest/test/` | `id,defect_score` |
#
# `id` is the file name without extension; the value is the defect probability `1 - p(good)` (the
# good class is looked up by name: `good_0` or `good_all`). Both competitions score the ROC AUC.
#
# The model is a run trained on the competition folder's **training** images (their own
# train/val/test split, section 3.1); when the run does not exist yet it is trained here. Without a
# `data_root`, the synthetic data set is exported in the stage-1 layout (its test labels are kept in a
# hidden answer key outside the folder) and the submission is scored against that key at the end.
# On the real data the score comes from Kaggle: the notebook prints the `kaggle competitions submit`
# command. Public leaderboard AUCs reported for the real competitions: about 0.972 (stage 1) and
# 0.996-0.9987 (stage 2).

# %% parameters
profile = "quick"
data_root = ""           # a Kaggle stage-1/stage-2 folder; empty: the synthetic data exported in the stage-1 layout
stage = None             # 1 | 2 | None: detected from the layout
run = ""                 # run folder under outputs/<profile>/runs/; empty: <arch>-ce-kaggle<stage>
arch = "resnet18"        # architecture when the run has to be trained
epochs = None            # None: the profile's
image_size = None        # None: the profile's
synthetic_scale = None   # without data_root: size of the synthetic data (fraction of batch 2); None: the profile's
crop = "center"          # center | five | ten
ensemble = "top-k"       # top-k: mean probability of the kept checkpoints | best | a number n
allow_other_classes = False  # accept a model trained on another class set (see nexperia_utils.kaggle.submission)
retrain = False
message = ""             # Kaggle submission message; empty: a description of the model
device = "auto"

# %%
%matplotlib inline
import json
import logging

import pandas as pd
from IPython.display import Markdown, display

from nexperia_utils.kaggle import layouts as kaggle

from nexperia_utils.kaggle import submission, submission_file
from nexperia_utils.config import get_profile
from nexperia_utils.evaluation.predict import evaluate_run
from nexperia_utils.experiment import cache_dir, open_experiment, run_name, train_model
from nexperia_utils.reporting import plot_roc, plot_training_curves, save_figure
from nexperia_utils.training.checkpoints import load_result

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
P = get_profile(profile, image_size=image_size)
kaggle_root = submission.prepare_kaggle_root(submission.with_synthetic_scale(P, synthetic_scale), data_root or None, stage)
data = kaggle.read_kaggle_layout(kaggle_root, stage)
counts = {f"train/{name}": int((data.train["label"] == name).sum()) for name in kaggle.CLASS_NAMES[data.stage]}
counts["test (unlabelled)"] = len(data.test)
print(f"stage {data.stage} ({data.competition}) in {kaggle_root}")
display(pd.Series(counts, name="images").to_frame())

# %% [markdown]
# ## The model: a run trained on the competition's training images
# The training images are split per class into train/val/test parts; the checkpoints with the best
# validation AUC are kept. A finished run with the same settings is reused (`retrain=True` trains it
# again); a run named with `run` is used as it is.

# %%
exp = open_experiment(P, kaggle_root)
suffix = f"kaggle{data.stage}" + ("" if synthetic_scale is None or data_root else f"-scale{float(synthetic_scale):g}")
run_dir = exp.run_dir(run or run_name(arch, "ce", weights=P.weights, suffix=suffix))
if run and (run_dir / "done.json").exists() and not retrain:
    result = load_result(run_dir)
else:
    result = train_model(exp, arch, run=run_dir.name, epochs=epochs, device=device, overwrite=retrain)
print(f"{run_dir.name}: best validation AUC {result.best_val_auc:.4f} at epoch {result.best_epoch}; "
      f"training {result.train_time_s / 60:.1f} min on {result.device}")
fig = plot_training_curves(result.history, title=f"{run_dir.name} ({P.name} profile)")
save_figure(fig, exp.figures_dir(), f"08_curves_{run_dir.name}")
fig

# %% [markdown]
# ### Held-out check on labelled images
# The test part of the training images' split (never used for training or checkpoint choice) gives an
# estimate before submitting. It is skipped for a run trained on another split.

# %%
run_meta = json.loads((run_dir / "config.json").read_text())
if run_meta.get("split_hash") == exp.split_hash:
    held_out = evaluate_run(run_dir, exp.part("test", run_meta["config"]["image_size"]), crops=[crop],
                            top_k=submission.parse_ensemble(ensemble), device=device)
    display(held_out[["checkpoint", "epoch", "val_auc", "auc", "fpr@100"]].round(4))
else:
    print(f"{run_dir.name} was trained on another split than {exp.split_csv.name}: held-out check skipped")

# %% [markdown]
# ## Predict every test image and write the submission
# The file is validated before it is written (one row per test image, no duplicate or missing id, no
# NaN, every value in [0, 1]); on failure nothing is written.

# %%
prediction = submission.predict_test(run_dir, data, crop=crop, ensemble=ensemble, device=device,
                                     cache_dir=cache_dir(), allow_other_classes=allow_other_classes)
submission_csv = submission.write_kaggle_submission(P.outputs_dir() / "submission.csv", prediction, data)
print(f"wrote {submission_csv} ({len(prediction.frame)} rows): {prediction.describe()}")
display(pd.read_csv(submission_csv, dtype={"id": str}).head())

# %% [markdown]
# ## Submit
# With the [Kaggle CLI](https://github.com/Kaggle/kaggle-api) and an API token in `~/.kaggle/kaggle.json`:

# %%
command = submission_file.submit_command(submission_csv, data.stage, message or prediction.describe())
print(command)

# %% [markdown]
# ## Score against the hidden answer key (synthetic export only)

# %%
key = submission.answer_key_for(kaggle_root)
auc = None
if key is not None:
    auc = submission_file.score_submission(submission_csv, key)
    y = submission.key_labels(key, prediction.ids)
    print(f"ROC AUC of {submission_csv.name} against the hidden answer key {key.name}: {auc:.4f}")
    fig = plot_roc({prediction.label: (y, prediction.scores)},
                   title=f"Submission vs hidden answer key ({len(y)} test images, {int(y.sum())} defects)")
    save_figure(fig, exp.figures_dir(), "08_submission_roc")
    display(fig)
else:
    y = None
    print(f"no answer key beside {kaggle_root}: the competition scores the submission (AUC) after upload")
fig = submission.plot_score_distribution(prediction.scores, y, title="Defect probabilities of the test images")
save_figure(fig, exp.figures_dir(), "08_submission_scores")
fig

# %%
submission.write_summary(prediction, data, submission_csv, auc, exp.tables_dir(), P.name)
display(Markdown((exp.tables_dir() / f"{submission.SUMMARY_TABLE}.md").read_text()))
