# Kaggle submission (notebooks/08_submission.ipynb), the HTML run report and `make all`.
#   make submission [KAGGLE_DIR=/data/kaggle-stage2] [KAGGLE_STAGE=2] [SUBMIT_ARCH=resnet34] [SUBMIT_CROP=ten]
#                   [SUBMIT_ENSEMBLE=best|top-k|N] [SUBMIT_RUN=<run folder>]
#   make report     -> $(OUT)/report.html from whatever has been run
#   make all        -> every table, the error analysis, the submission and the report (PROFILE=quick by default)
KAGGLE_DIR ?=
KAGGLE_STAGE ?=
SUBMIT_RUN ?=
SUBMIT_ARCH ?= resnet18
SUBMIT_CROP ?= center
SUBMIT_ENSEMBLE ?= top-k
SUBMIT_PARAMS = -p profile $(PROFILE) -p data_root "$(KAGGLE_DIR)" -p run "$(SUBMIT_RUN)" -p arch $(SUBMIT_ARCH) \
	-p crop $(SUBMIT_CROP) -p ensemble $(SUBMIT_ENSEMBLE) -p retrain $(RETRAIN) \
	$(if $(KAGGLE_STAGE),-p stage $(KAGGLE_STAGE))

.PHONY: submission report all

# Trains the run first when it does not exist (the notebook does it); without KAGGLE_DIR it uses the
# synthetic data exported in the stage-1 layout and scores the file against the hidden answer key.
submission: setup | $(NB_OUT)
	$(PAPERMILL) notebooks/08_submission.ipynb $(NB_OUT)/08_submission.ipynb $(SUBMIT_PARAMS)
	@echo "Submission: $(OUT)/submission.csv"

report: setup
	$(PY) -m nexperia_utils.reporting.html --profile $(PROFILE)
	@echo "Report: $(OUT)/report.html"

all: reproduce-table2 reproduce-table3 reproduce-table4 error-analysis reproduce-shift submission
	$(MAKE) --no-print-directory report
