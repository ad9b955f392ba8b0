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

from nexperia_utils.config import get_profile
from nexperia_utils.experiment import open_experiment, train_model
from nexperia_utils.reporting import (kept_checkpoint_metrics, plot_best_checkpoint_roc, plot_training_curves,
                                      save_figure)

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
test = exp.part("test")
kept = kept_checkpoint_metrics(result.run_dir, test, P.top_k, device)
kept

# %% [markdown]
# ## ROC curve of the best checkpoint on the test part

# %%
fig = plot_best_checkpoint_roc(kept.results, test, exp.outputs / "runs", exp.negative_class,
                               title=f"Test ROC of the best checkpoint, {run}")
save_figure(fig, exp.figures_dir(), f"02_roc_{run}")
fig
