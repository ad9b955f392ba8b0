"""Training: the loop, losses (SAT, WBCE), samplers, run folders and checkpoints, several processes, the benchmark."""
