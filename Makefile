# nexperia: every target sets itself up (make setup) and runs on the embedded synthetic data
# unless DATA_DIR points at a real data set. PROFILE=smoke|quick|full (default quick).
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
	@echo "make reproduce-table3   Table 3 (ResNet18/34/50 x centre/five/ten crop), PROFILE=$(PROFILE)"
	@echo "make test               the test suite (smoke profile)"
	@echo "make data               generate the synthetic data set (DATA_OUT=..., SCALE=...)"
	@echo "make split              run notebooks/01_split.ipynb"
	@echo "make bench              training throughput benchmark"
	@echo "variables: PROFILE=smoke|quick|full DATA_DIR=<folder-per-class data> RETRAIN=True"

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
	$(PY) -m nexperia_utils.synthetic --out $(DATA_OUT) --scale $(SCALE) --seed $(SEED)

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
	$(PY) -m nexperia_utils.bench --profile $(PROFILE) --arch $(BENCH_ARCH)

clean-outputs:
	rm -rf outputs/$(PROFILE)

# Targets of the other tables, the error analysis, the submission and the report live in mk/*.mk.
-include $(sort $(wildcard mk/*.mk))
