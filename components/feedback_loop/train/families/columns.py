"""Feature columns of the tabular families: numbers, and text categories encoded in the model.

A feature column holding numbers goes into the `features` input (float32 [N, numeric]);
one holding text goes into the `categories` input (string [N, categorical]). The model
learns each categorical column's vocabulary at training (`StringLookup` with one
out-of-vocabulary bucket, then one-hot up to `ONE_HOT_MAX` values, an embedding above),
so it takes raw values and an unseen value lands in the bucket instead of failing.
A missing category is the empty text, which no vocabulary holds: it goes to the bucket too.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np
import pandas as pd

from feedback_loop.dataset import feature_columns
from feedback_loop.errors import DataError

log = logging.getLogger(__name__)

FEATURES, CATEGORIES = "features", "categories"
MAX_VOCABULARY = 1000  # the most frequent values of a column; rarer ones share the out-of-vocabulary bucket
ONE_HOT_MAX = 32  # up to this many values a column is one-hot encoded, above it embedded
MAX_EMBEDDING = 16


def split_features(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns in file order; other kinds are left out with a warning."""
    numeric, categorical, skipped = [], [], []
    for column in feature_columns(list(frame.columns)):
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values):
            numeric.append(column)
        elif _is_text(values):
            categorical.append(column)
        else:
            skipped.append(column)
    if skipped:
        log.warning("ignoring feature columns that hold neither numbers nor text: %s", ", ".join(skipped))
    if not numeric and not categorical:
        raise DataError(f"no numeric or text feature column to train on (columns: {', '.join(frame.columns)})")
    return numeric, categorical


def _is_text(values: pd.Series) -> bool:
    if pd.api.types.is_string_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype):
        present = values.dropna()
        return present.empty or all(isinstance(v, str) for v in present.head(1000))
    return False


def describe(frame: pd.DataFrame) -> dict[str, Any]:
    """The spec part of the features: columns, and each categorical column's vocabulary."""
    numeric, categorical = split_features(frame)
    vocabularies = {column: vocabulary(frame[column]) for column in categorical}
    inputs = ([FEATURES] if numeric else []) + ([CATEGORIES] if categorical else [])
    return {
        "feature_columns": numeric + categorical,
        "numeric_columns": numeric,
        "categorical_columns": categorical,
        "vocabularies": vocabularies,
        "vocab_sizes": {column: len(values) for column, values in vocabularies.items()},
        "inputs": inputs,
    }


def vocabulary(values: pd.Series) -> list[str]:
    """The column's values by falling frequency (ties by text), at most MAX_VOCABULARY, never empty."""
    counts = category_text(values).value_counts()
    counts = counts[counts.index != ""]
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_VOCABULARY]
    if len(counts) > MAX_VOCABULARY:
        log.info("column %s: %d values, the %d most frequent kept", values.name, len(counts), MAX_VOCABULARY)
    # StringLookup refuses an empty vocabulary; a column of missing values learns one placeholder.
    return [value for value, _ in ordered] or ["<none>"]


def category_text(values: pd.Series) -> pd.Series:
    """Categories as text; missing values become "" (the out-of-vocabulary bucket)."""
    text = values.astype(object).where(values.notna(), "")
    return text.map(lambda v: v if isinstance(v, str) else str(v))


def numeric_columns(spec: dict[str, Any]) -> list[str]:
    # Lineage written before categoricals listed the numeric columns as `feature_columns`.
    return list(spec.get("numeric_columns", spec.get("feature_columns") or []))


def categorical_columns(spec: dict[str, Any]) -> list[str]:
    return list(spec.get("categorical_columns") or [])


def inputs(frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if numeric := numeric_columns(spec):
        out[FEATURES] = tabular_array(frame, numeric)
    if categorical := categorical_columns(spec):
        if missing := [c for c in categorical if c not in frame.columns]:
            raise DataError(f"categorical columns missing: {', '.join(missing)}; the model was trained on {', '.join(categorical)}")
        out[CATEGORIES] = np.stack([category_text(frame[c]).to_numpy(object) for c in categorical], axis=1)
    return out


def tabular_array(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    if missing := [c for c in columns if c not in frame.columns]:
        raise DataError(f"feature columns missing: {', '.join(missing)}; the model was trained on {', '.join(columns)}")
    try:
        values = frame[columns].to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise DataError(f"feature columns {', '.join(columns)} must be numeric: {err}") from None
    if nulls := [c for c, has_null in zip(columns, np.isnan(values).any(axis=0), strict=True) if has_null]:
        raise DataError(f"feature columns with missing values: {', '.join(nulls)}; impute them in prepare_dataset")
    return values


def numeric_features(frame: pd.DataFrame) -> list[str]:
    """The numeric feature columns, in file order."""
    return split_features(frame)[0]


def encoded(spec: dict[str, Any], data: dict[str, np.ndarray]) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor]:
    """Keras inputs and one float vector per row: normalised numbers, then each encoded category."""
    keras_inputs: dict[str, keras.KerasTensor] = {}
    parts = []
    if FEATURES in data:
        x_train = data[FEATURES]
        normalize = keras.layers.Normalization(name="normalize")
        normalize.adapt(x_train)  # statistics of the training rows only, stored in the model
        keras_inputs[FEATURES] = keras.Input((x_train.shape[1],), name=FEATURES)
        parts.append(normalize(keras_inputs[FEATURES]))
    if categorical := categorical_columns(spec):
        keras_inputs[CATEGORIES] = categories = keras.Input((len(categorical),), dtype="string", name=CATEGORIES)
        for j, column in enumerate(categorical):
            vocab = spec["vocabularies"][column]
            name = f"category_{j}"  # column names may hold characters layer names refuse
            if len(vocab) <= ONE_HOT_MAX:
                lookup = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, output_mode="one_hot", name=f"{name}_lookup")
                parts.append(lookup(categories[:, j]))
            else:
                lookup = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name=f"{name}_lookup")
                size = min(MAX_EMBEDDING, max(2, math.ceil(len(vocab) ** 0.5)))
                parts.append(keras.layers.Embedding(len(vocab) + 1, size, name=f"{name}_embedding")(lookup(categories[:, j])))
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="all_features")(parts)
    return keras_inputs, x


def model_inputs(keras_inputs: dict[str, keras.KerasTensor]) -> Any:
    # A one-input model keeps its bare input: the SavedModel signature and old clients see no change.
    return next(iter(keras_inputs.values())) if len(keras_inputs) == 1 else keras_inputs


def incompatible(spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
    wanted = numeric_columns(spec) + categorical_columns(spec)
    if missing := [c for c in wanted if c not in frame.columns]:
        return f"feature columns {', '.join(missing)} are gone"
    return None
