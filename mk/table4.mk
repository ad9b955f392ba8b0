# Table 4 and Figures 4, 5, 7, 8, 9 (notebooks/05_sat.ipynb, report sections 2.5-2.7, 3.6-3.7):
# ResNet34 trained from scratch with each loss, one run per loss, then the comparison.
#   make reproduce-table4            every loss in turn (finished runs are reused), then Table 4 and the figures
#   make table4-<loss>               one loss: ce | wbce | sat | sat_bad_1 | sat_bad_boost
#                                    -> $(NB_OUT)/05_sat-<loss>.ipynb
#   variables: SAT_SAMPLER=none|bootstrap|without_replacement (class-balanced sampling; none: the profile's own,
#              half-defect batches on quick and smoke, plain shuffling on full), RETRAIN=True
SAT_LOSSES := ce wbce sat sat_bad_1 sat_bad_boost
SAT_SAMPLER ?= none
SAT_TARGETS := $(addprefix table4-,$(SAT_LOSSES))

.PHONY: reproduce-table4 $(SAT_TARGETS)

$(SAT_TARGETS): table4-%: split
	$(PAPERMILL) notebooks/05_sat.ipynb $(NB_OUT)/05_sat-$*.ipynb $(NB_PARAMS) -p loss $* -p compare False \
		-p sampler $(SAT_SAMPLER) -p retrain $(RETRAIN)

# The comparison trains nothing (loss=none): it evaluates the finished runs, writes
# $(OUT)/tables/table4.{csv,md}, table4_checkpoints.csv, sat_mislabel_detection.csv and the 05_* figures.
reproduce-table4: $(SAT_TARGETS)
	$(PAPERMILL) notebooks/05_sat.ipynb $(NB_OUT)/05_sat.ipynb $(NB_PARAMS) -p loss none -p compare True \
		-p sampler $(SAT_SAMPLER)
	@echo "Table 4: $(OUT)/tables/table4.md"
	@cat $(OUT)/tables/table4.md
