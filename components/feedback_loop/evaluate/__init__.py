"""Evaluation stage: candidate vs production on the same holdout rows, and the blessing.

`core` holds the logic (no kfp import); `component` is the KFP wrapper `evaluate_model`.
"""
