"""Analysis of trained runs: interpretation, heatmaps, galleries, mislabels, SAT weights, the loss and
variant studies, distribution shift and OOD scores."""
