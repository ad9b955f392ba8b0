# %% [markdown]
# # 01 · Data and split (report section 3.1)
#
# Loads the data set (by default the embedded synthetic Nexperia-like data, generated on first use),
# validates every image, and draws the report's split: per class 10 % of the images to test, then 10 %
# of the rest to validation (a class with fewer than 10 images gives exactly one image to each). The
# split is saved under `data/splits/` and reused by every other notebook; it is never silently redrawn.

# %% parameters
profile = "quick"        # smoke | quick | full
data_root = ""           # empty: the profile's embedded synthetic data; else a folder-per-class data set
seed = 0                 # split seed
scale = None             # synthetic data only: fraction of the batch-2 class counts (None: the profile's)
overwrite_split = False  # redraw an existing split
examples_per_class = 4

# %%
%matplotlib inline
import logging

import pandas as pd
from IPython.display import display

from nexperia_utils.config import get_profile
from nexperia_utils.experiment import open_experiment
from nexperia_utils.analysis.galleries import plot_examples, plot_visibility, visibility_summary
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.reporting import save_figure
from nexperia_utils.data.split import split_counts

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
P = get_profile(profile, data_scale=scale)
exp = open_experiment(P, data_root or None, split_seed=seed, overwrite_split=overwrite_split)
print(f"data: {exp.data_root}\nsplit: {exp.split_csv} (hash {exp.split_hash})")
print(f"classes: {exp.classes} (negative class: {exp.negative_class!r})")

# %% [markdown]
# ## Images per class in train / validation / test
# The counts that the legends of Figures 7-8 show next to each class.

# %%
counts = split_counts(exp.split)
atomic_write_csv(exp.tables_dir() / "split_counts.csv", counts, index=True)
display(counts)

# %% [markdown]
# ## Example images per class
# Defect boxes (red) come from the synthetic data's `annotations.csv`; images whose label is noisy
# (a defect filed as `good`) say so in their title. Real data without annotations shows no boxes.

# %%
fig = plot_examples(exp.data_root, exp.split, exp.classes, exp.annotations(), per_class=examples_per_class, seed=seed)
save_figure(fig, exp.figures_dir(), "01_examples")
fig

# %% [markdown]
# ## How visible the defects are (synthetic data)
# Per defect image, `annotations.csv` stores a model-free visibility: the image and its defect-free
# twin, rendered from the same seed, differ only by the defect; the peak of their difference at a
# 64 px input (the quick profile's size until 2026-12-07, the long profile's), divided by the sensor
# noise's std there. Below about 5 a defect hardly stands out of the noise (borderline). Real data
# has no such column and skips this section.

# %%
annotations = exp.annotations()
if annotations is not None and "visibility" in annotations.columns:
    display(visibility_summary(annotations).round(3))
    fig = plot_visibility(annotations)
    save_figure(fig, exp.figures_dir(), "01_visibility")
    display(fig)
else:
    print("no visibility annotations (not the synthetic data set): section skipped")
