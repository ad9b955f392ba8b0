"""Evaluation: metrics, predictions of a run's checkpoints, operating points, the pixel reference."""
