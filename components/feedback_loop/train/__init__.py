"""Training stage: a small Keras model per data family, exported for KServe with its lineage.

`core` holds the logic (no kfp import); `component` is the KFP wrapper `train_model`.
"""
