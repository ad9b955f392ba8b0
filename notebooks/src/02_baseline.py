# %% [markdown]
# # 02 · Baseline model (report section 3.2)
#
# Trains one torchvision model (ResNet18/34/50 or VGG19_bn) with cross entropy on the training part of
# the split: SGD with momentum, learning rate divided by 10 every `step_size` epochs, validation after
# every epoch. The checkpoints with the best validation AUC are kept for the test evaluation
# (`06_cropping.ipynb` evaluates them with each crop style). A finished run is not retrained unless
# `retrain=True`; an interrupted one resumes.

# %% parameters
profile = "quick"
data_root = ""
arch = "resnet18"        # resnet18 | resnet34 | resnet50 | vgg19_bn
weights = None           # none | imagenet | path to a state dict (None: the profile's)
epochs = None            # None: the profile's
lr = None
batch_size = None
image_size = None
train_crop = "center"    # center | five | ten: train on several crops per image (Figure 6)
eval_test_each_epoch = False
retrain = False
device = "auto"

# %%
%matplotlib inline
import logging

import pandas as pd
from IPython.display import display

from nexperia_utils.evaluation import metrics
from nexperia_utils.config import get_profile
from nexperia_utils.evaluation.predict import evaluate_run, predict_proba
from nexperia_utils.experiment import open_experiment, train_model
from nexperia_utils.reporting import checkpoint_metrics, plot_roc, plot_training_curves, save_figure
from nexperia_utils.training.checkpoints import list_checkpoints, load_checkpoint

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
P = get_profile(profile, image_size=image_size)
exp = open_experiment(P, data_root or None)

# %% [markdown]
# ## Training

# %%
result = train_model(exp, arch, weights=weights, epochs=epochs, lr=lr, batch_size=batch_size,
                     train_crop=train_crop, eval_test_each_epoch=eval_test_each_epoch,
                     device=device, overwrite=retrain)
run = result.run_dir.name
print(f"{run}: best validation AUC {result.best_val_auc:.4f} at epoch {result.best_epoch}; "
      f"training {result.train_time_s / 60:.1f} min on {result.device}, peak memory {result.peak_memory_mb:.0f} MB")
fig = plot_training_curves(result.history, title=f"{run} ({P.name} profile, weights: {P.weights if weights is None else weights})")
save_figure(fig, exp.figures_dir(), f"02_curves_{run}")
fig

# %% [markdown]
# ## Test metrics of the kept checkpoints (centre crop)
# Each of the top-k checkpoints (by validation AUC) is evaluated on the **test** part; the report
# gives the mean (std) over them.

# %%
results = evaluate_run(result.run_dir, exp.part("test"), crops=["center"], top_k=P.top_k, device=device)
shown, mean_std = checkpoint_metrics(results)
display(shown.style.format({c: "{:.4f}" for c in shown.columns if c not in ("checkpoint", "epoch")}))
print("mean over checkpoints (%):")
display(mean_std)

# %% [markdown]
# ## ROC curve of the best checkpoint on the test part

# %%
best = list_checkpoints(result.run_dir)[0]
model, meta = load_checkpoint(best["path"], device="cpu")
test = exp.part("test")
probs = predict_proba(model, test, meta["config"]["image_size"], "center")
y = metrics.is_defect(test.labels, exp.negative_index)
fig = plot_roc({f"{run} epoch {best['epoch']}": (y, metrics.defect_score(probs, exp.negative_index))},
               title=f"Test ROC, {run}")
save_figure(fig, exp.figures_dir(), f"02_roc_{run}")
fig
