# nexperia: every target sets itself up (make setup) and runs on the embedded synthetic data
# unless DATA_DIR points at a real data set. PROFILE=smoke|quick|long|full (default quick).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-$(shell sha256sum pyproject.toml | cut -c1-16)
PROFILE ?= quick
DATA_DIR ?=
SEED ?= 0
OUT := outputs/$(PROFILE)
NB_OUT := $(OUT)/notebooks
PAPERMILL := $(PY) -m nexperia_utils.run_notebook --kernel nexperia --cwd notebooks --log-output --no-progress-bar
NB_PARAMS := -p profile $(PROFILE) -p data_root "$(DATA_DIR)"
RETRAIN ?= False

.PHONY: help setup test data split baselines reproduce-table3 bench clean-outputs

help:
	@echo "The two commands:"
	@echo "  make reproduce-table3   Table 3 (ResNet18/34/50 x centre/five/ten crop) + pixel reference + operating points"
	@echo "  make test               the test suite (smoke profile)"
	@echo "Tables and analyses:"
	@echo "  make reproduce-table2   Table 2: ResNet18, VGG19_bn, their STN models, ResNet_att_2"
	@echo "  make reproduce-table4   Table 4: ResNet34 with CE, WBCE, SAT, SAT bad 1, SAT bad boost"
	@echo "  make error-analysis     07: confusion matrix, Grad-CAM galleries, mislabels, Table 5 (EA_PARAMS=...)"
	@echo "  make submission         08: submission.csv for a Kaggle layout (KAGGLE_DIR=...)"
	@echo "  make reproduce-shift    09: batch 2 -> batch 3 shift table, AdaBN, few-shot, several batches, OOD (SHIFT_PARAMS=...)"
	@echo "  make inspect IMAGES=dir decisions for a folder of new images (RUN=, TARGET_TPR=, REVIEW_BAND=)"
	@echo "  make drift IMAGES=dir   drift check of a folder against a run: unfamiliar share, defect-score shift"
	@echo "  make report             outputs/<profile>/report.html"
	@echo "  make all                all of the above"
	@echo "Steps:"
	@echo "  make help               this list"
	@echo "  make setup              .venv with the package and the Jupyter kernel"
	@echo "  make data               generate the synthetic data set (DATA_OUT=..., SCALE=...)"
	@echo "  make split              notebooks/01_split.ipynb"
	@echo "  make baseline-<arch>    notebooks/02_baseline.ipynb for one model (resnet18|resnet34|resnet50|vgg19_bn)"
	@echo "  make baselines          the three ResNet baselines of Table 3 (resnet18, resnet34, resnet50)"
	@echo "  make stn-<arch>_stn, make attention, make table4-<loss>   single models of Tables 2 and 4"
	@echo "  make bench              training throughput benchmark (BENCH_ARCH=...)"
	@echo "  make train ARCH= LOSS= NPROC_PER_NODE=2   one model on N processes (torchrun + DistributedDataParallel)"
	@echo "  make gpu-check          tools/gpu_check.py: full-scale data, throughput, ResNet18 training, Table 3 column"
	@echo "  make clean-outputs      remove outputs/<profile>"
	@echo "Variables: PROFILE=smoke|quick|long|full (now $(PROFILE)) DATA_DIR=<folder-per-class data> SEED=0 RETRAIN=True"
	@echo "Notebooks are edited in notebooks/src/*.py and rebuilt: .venv/bin/python tools/nbbuild.py SRC DST"

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name nexperia --display-name "Python (nexperia)" > /dev/null
	rm -f $(VENV)/.setup-*
	touch $@

test: setup
	$(PY) -m pytest -q

DATA_OUT ?= data/synthetic
SCALE ?= 0.1
data: setup
	$(PY) -m nexperia_utils.data.synthetic --out $(DATA_OUT) --scale $(SCALE) --seed $(SEED)

$(NB_OUT):
	mkdir -p $@

split: setup | $(NB_OUT)
	$(PAPERMILL) notebooks/01_split.ipynb $(NB_OUT)/01_split.ipynb $(NB_PARAMS) -p seed $(SEED)

baseline-%: split
	$(PAPERMILL) notebooks/02_baseline.ipynb $(NB_OUT)/02_baseline-$*.ipynb $(NB_PARAMS) -p arch $* -p retrain $(RETRAIN)

baselines: baseline-resnet18 baseline-resnet34 baseline-resnet50

reproduce-table3: baselines
	$(PAPERMILL) notebooks/06_cropping.ipynb $(NB_OUT)/06_cropping.ipynb $(NB_PARAMS)
	@echo "Table 3: $(OUT)/tables/table3.md"
	@cat $(OUT)/tables/table3.md

BENCH_ARCH ?= resnet18
bench: setup
	$(PY) -m nexperia_utils.training.bench --profile $(PROFILE) --arch $(BENCH_ARCH)

clean-outputs:
	rm -rf outputs/$(PROFILE)

# Targets of the other tables, the error analysis, the submission and the report live in mk/*.mk.
-include $(sort $(wildcard mk/*.mk))
