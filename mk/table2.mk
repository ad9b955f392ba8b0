# Table 2 (report section 4.1): ResNet18, VGG19_bn, ResNet18_stn, VGG19_bn_stn and ResNet_att_2 on one split.
#   make reproduce-table2          baselines (02), STN models (03), ResNet_att_2 + Table 2 (04)
#   make stn-resnet18_stn          one STN model (STN_TRANSFORM=affine|scale_translation)
#   make attention                 ResNet_att_2 alone (04 without Table 2)
# Finished runs are reused (RETRAIN=True retrains them); an interrupted one resumes.

STN_TRANSFORM ?= affine
STN_ARCHS := resnet18_stn vgg19_bn_stn
# executed STN notebooks: 03_stn-<arch>.ipynb, 03_stn-<arch>-scale_translation.ipynb for the other transform
STN_SUFFIX := $(if $(filter-out affine,$(STN_TRANSFORM)),-$(STN_TRANSFORM))
STN_NOTEBOOKS := $(foreach a,$(STN_ARCHS),$(NB_OUT)/03_stn-$(a)$(STN_SUFFIX).ipynb)

.PHONY: reproduce-table2 attention $(addprefix stn-,$(STN_ARCHS))

# `split` is phony, so these always run; a finished training run is not repeated (only re-evaluated).
$(NB_OUT)/03_stn-%$(STN_SUFFIX).ipynb: split
	$(PAPERMILL) notebooks/03_stn.ipynb $@ $(NB_PARAMS) -p arch $* -p stn_transform $(STN_TRANSFORM) -p retrain $(RETRAIN)

$(addprefix stn-,$(STN_ARCHS)): stn-%: $(NB_OUT)/03_stn-%$(STN_SUFFIX).ipynb

attention: split
	$(PAPERMILL) notebooks/04_attention.ipynb $(NB_OUT)/04_attention.ipynb $(NB_PARAMS) -p assemble_table2 False -p retrain $(RETRAIN)

reproduce-table2: baseline-resnet18 baseline-vgg19_bn $(STN_NOTEBOOKS)
	$(PAPERMILL) notebooks/04_attention.ipynb $(NB_OUT)/04_attention.ipynb $(NB_PARAMS) -p assemble_table2 True -p stn_transform $(STN_TRANSFORM) -p retrain $(RETRAIN)
	@echo "Table 2: $(OUT)/tables/table2.md"
	@cat $(OUT)/tables/table2.md
