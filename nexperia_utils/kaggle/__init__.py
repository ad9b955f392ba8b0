"""Kaggle: the competitions' layouts and submissions."""
