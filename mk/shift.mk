# Distribution shift (issue 14; report sections 1, 3.1, 5.3): notebooks/09_distribution_shift.ipynb on the
# profile's ResNet18 baseline (trained first when missing). Generates batch 3 beside the data
# (data/<name>-batch3), writes tables/shift*.{csv,md} and figures/09_*.
#   make reproduce-shift [SHIFT_PARAMS='-p several_batches False -y "shots: [5, 10]"']
#   make drift IMAGES=<folder> [RUN=...] [DRIFT_FLAGS='--method energy --fail-on-drift']
SHIFT_PARAMS ?=
DRIFT_FLAGS ?=

.PHONY: reproduce-shift drift

reproduce-shift: baseline-resnet18 | $(NB_OUT)
	$(PAPERMILL) notebooks/09_distribution_shift.ipynb $(NB_OUT)/09_distribution_shift.ipynb $(NB_PARAMS) \
		-p retrain $(RETRAIN) $(SHIFT_PARAMS)
	@echo "Shift table: $(OUT)/tables/shift.md"
	@cat $(OUT)/tables/shift.md $(OUT)/tables/shift_ood.md

drift: setup
	@test -n "$(IMAGES)" || { echo "error: pass IMAGES=<folder of new images>"; exit 2; }
	$(PY) -m nexperia_utils.line.drift --run $(RUN) --images "$(IMAGES)" --profile $(PROFILE) --data-root "$(DATA_DIR)" \
		$(DRIFT_FLAGS)
