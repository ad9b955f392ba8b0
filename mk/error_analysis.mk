# Error analysis (report sections 1 and 4.2, Table 5, Figure 10): notebooks/07_error_analysis.ipynb on the
# profile's ResNet18 baseline. Writes outputs/$(PROFILE)/suspected_mislabels.csv,
# corrections_template.csv, tables/table5.{csv,md}, tables/07_* and figures/07_*.
# Extra papermill parameters, e.g. EA_PARAMS='-p cam_method gradcam++ -p corrections_csv /path/to/corrections.csv'
# (lists with -y: EA_PARAMS='-y "embedding_parts: [train, test]"')
EA_PARAMS ?=

.PHONY: error-analysis

error-analysis: baseline-resnet18 | $(NB_OUT)
	$(PAPERMILL) notebooks/07_error_analysis.ipynb $(NB_OUT)/07_error_analysis.ipynb $(NB_PARAMS) $(EA_PARAMS)
	@echo "suspected mislabels: $(OUT)/suspected_mislabels.csv"
	@if [ -f $(OUT)/tables/table5.md ]; then echo "Table 5: $(OUT)/tables/table5.md"; cat $(OUT)/tables/table5.md; fi
