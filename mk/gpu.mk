# Training on several processes (torchrun + DistributedDataParallel) and the GPU check of issue 15.
#   make train ARCH=resnet18 LOSS=ce NPROC_PER_NODE=2 [TRAIN_ARGS='--set epochs=3 --set lr=0.01']
# trains one model of the profile with torch.distributed.run (NCCL on GPUs, gloo on the CPU); the
# batch size stays the global one. Runs go to outputs/$(PROFILE)/runs/<arch>-<loss>.
#   make gpu-check [GPU_CHECK_ARGS='--budget-s 240']   tools/gpu_check.py: data, throughput, training, Table 3 column
ARCH ?= resnet18
LOSS ?= ce
NPROC_PER_NODE ?= 1
TRAIN_ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: train gpu-check

train: setup
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC_PER_NODE) -m nexperia_utils.training.distributed \
		--profile $(PROFILE) --arch $(ARCH) --loss $(LOSS) $(if $(DATA_DIR),--data-root "$(DATA_DIR)") $(TRAIN_ARGS)

gpu-check: setup
	$(PY) tools/gpu_check.py $(GPU_CHECK_ARGS)
