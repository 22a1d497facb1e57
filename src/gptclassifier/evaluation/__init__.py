"""Judging and using a classifier: metrics, inference on new messages, and baselines."""
