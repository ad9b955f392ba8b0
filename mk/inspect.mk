# The line inspector (nexperia_utils/line/inspect.py): score a folder of new images with a trained run.
#   make inspect IMAGES=/path/to/images [RUN=outputs/quick/runs/resnet18-ce] [TARGET_TPR=0.997]
#                [REVIEW_BAND=0.02] [DECISIONS=$(OUT)/decisions.csv] [INSPECT_FLAGS=--skip-bad]
# The threshold is chosen on the run's validation part (DATA_DIR: the data the run was trained on)
# and saved beside its checkpoints as operating_point.json.
RUN ?= $(OUT)/runs/resnet18-ce
IMAGES ?=
TARGET_TPR ?= 0.997
REVIEW_BAND ?= 0.0
DECISIONS ?= $(OUT)/decisions.csv
INSPECT_FLAGS ?=

.PHONY: inspect

inspect: setup
	@test -n "$(IMAGES)" || { echo "error: pass IMAGES=<folder of images to inspect>"; exit 2; }
	$(PY) -m nexperia_utils.line.inspect --run $(RUN) --images "$(IMAGES)" --out $(DECISIONS) \
		--target-tpr $(TARGET_TPR) --review-band $(REVIEW_BAND) --profile $(PROFILE) --data-root "$(DATA_DIR)" \
		$(INSPECT_FLAGS)
