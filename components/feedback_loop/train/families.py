"""Model families: what a model reads, what it predicts, and how it is built.

A family turns rows of the shared dataset contract into named model inputs and targets,
builds an uncompiled Keras model whose preprocessing (rescaling, normalisation,
vocabularies) is part of the model, and says how its outputs read:

    image_classifier    `pixels` (28x28 uint8) -> class probabilities            (small CNN)
    tabular_classifier  numeric feature columns -> class probabilities           (normalised MLP)
    tabular_regressor   numeric feature columns -> a value; label holds a number (two dense layers + output)
    recommender         `user`, `item` strings -> interaction score; label > 0 is an interaction
                        (implicit feedback, trained with sampled negatives, judged on precision@k / recall@k)
    module:function     user-defined: `function(spec, inputs) -> keras.Model` (uncompiled), importable
                        in the training image; it reads the inputs and predicts the outputs of the base
                        family the data implies (set `function.task = "regression"` for a value)

`spec` is the JSON-able description a family derives from its training rows (classes,
feature columns, vocabularies, target scale); it is stored in the lineage so that a
loaded model reads new rows exactly as it read its training rows.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import pandas as pd

from feedback_loop.dataset import ID, LABEL, PIXELS, feature_columns
from feedback_loop.errors import DataError, SettingsError

log = logging.getLogger(__name__)

CLASSIFICATION, REGRESSION, RANKING = "classification", "regression", "ranking"
IMAGE_CLASSIFIER, TABULAR_CLASSIFIER = "image_classifier", "tabular_classifier"
TABULAR_REGRESSOR, RECOMMENDER = "tabular_regressor", "recommender"
AUTO = "auto"
BUILT_IN = (IMAGE_CLASSIFIER, TABULAR_CLASSIFIER, TABULAR_REGRESSOR, RECOMMENDER)
_OLD_NAMES = {"image": IMAGE_CLASSIFIER, "tabular": TABULAR_CLASSIFIER}  # lineage written before families had names
USER, ITEM = "user", "item"
IMAGE_SIDE = 28
IMAGE_BYTES = IMAGE_SIDE * IMAGE_SIDE
_CUSTOM = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# Above this share of interactions with users or items the parent never saw, warm-starting
# a recommender would leave most of the data in the out-of-vocabulary bucket.
MAX_UNKNOWN_SHARE = 0.2


@dataclass(frozen=True)
class Examples:
    """What `fit` consumes: named inputs, targets, and for each example the row it came from."""

    inputs: dict[str, np.ndarray]
    targets: np.ndarray
    rows: np.ndarray  # positions in the frame: sample weights of sampled negatives follow their row


class Family:
    """A built-in family; subclasses fill in the data and model parts."""

    name: str = ""
    task: str = CLASSIFICATION
    output_name: str = "probabilities"
    loss: str = "sparse_categorical_crossentropy"
    metrics: tuple[str, ...] = ("accuracy",)

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        raise NotImplementedError

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        raise NotImplementedError

    def examples(self, frame: pd.DataFrame, spec: dict[str, Any], rng: np.random.Generator) -> Examples:
        return Examples(self.inputs(frame, spec), self.targets(frame, spec), np.arange(len(frame)))

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        """Why a model described by `spec` cannot be warm-started on `frame`; None when it can."""
        return None

    def predict(self, model: keras.Model, frame: pd.DataFrame, spec: dict[str, Any], batch: int = 512) -> np.ndarray:
        """Classification: probabilities [N, classes]; regression and ranking: one value per row [N]."""
        out = np.asarray(model.predict(call_inputs(self.inputs(frame, spec)), batch_size=batch, verbose=0))
        return out if self.task == CLASSIFICATION else out.reshape(len(frame), -1)[:, 0]


def call_inputs(inputs: dict[str, np.ndarray]) -> Any:
    # A one-input functional model wants the bare array; a dict warns about structure.
    return next(iter(inputs.values())) if len(inputs) == 1 else inputs


# --- classification ---------------------------------------------------------------------


class _Classifier(Family):
    def _classes(self, frame: pd.DataFrame) -> list[str]:
        classes = sorted(frame[LABEL].astype(str).unique())
        if len(classes) < 2:
            raise DataError(
                f"the data has one class only ({classes[0]!r} in {len(frame)} rows): a classifier needs two or more"
            )
        return classes

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        return encode_labels(frame[LABEL].astype(str), spec["classes"])

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        if new := sorted(set(frame[LABEL].astype(str)) - set(spec["classes"])):
            return f"new classes {', '.join(map(repr, new))} the production model cannot output"
        return None


class ImageClassifier(_Classifier):
    name = IMAGE_CLASSIFIER

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {"classes": self._classes(frame), "feature_columns": [], "inputs": [PIXELS]}

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        return {PIXELS: image_array(frame)}

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        pixels = keras.Input((IMAGE_SIDE, IMAGE_SIDE), name=PIXELS)
        x = keras.layers.Reshape((IMAGE_SIDE, IMAGE_SIDE, 1))(pixels)
        x = keras.layers.Rescaling(1.0 / 255)(x)
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(64, activation="relu")(x)
        x = keras.layers.Dropout(0.3)(x)
        out = keras.layers.Dense(len(spec["classes"]), activation="softmax", dtype="float32", name=self.output_name)(x)
        return keras.Model(pixels, out, name=self.name)


class _Tabular(Family):
    input_name = "features"

    def _describe_features(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {"feature_columns": numeric_features(frame), "inputs": [self.input_name]}

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        return {self.input_name: tabular_array(frame, list(spec["feature_columns"]))}

    def _normalized(self, inputs: dict[str, np.ndarray]) -> tuple[keras.KerasTensor, keras.KerasTensor]:
        x_train = inputs[self.input_name]
        normalize = keras.layers.Normalization()
        normalize.adapt(x_train)  # statistics of the training rows only, stored in the model
        features = keras.Input((x_train.shape[1],), name=self.input_name)
        return features, normalize(features)

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        if missing := [c for c in spec["feature_columns"] if c not in frame.columns]:
            return f"feature columns {', '.join(missing)} are gone"
        return None


class TabularClassifier(_Tabular, _Classifier):
    name = TABULAR_CLASSIFIER

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {"classes": self._classes(frame), **self._describe_features(frame)}

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        features, x = self._normalized(inputs)
        x = keras.layers.Dense(32, activation="relu")(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        out = keras.layers.Dense(len(spec["classes"]), activation="softmax", dtype="float32", name=self.output_name)(x)
        return keras.Model(features, out, name=self.name)

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        return _Tabular.incompatible(self, spec, frame) or _Classifier.incompatible(self, spec, frame)


class TabularRegressor(_Tabular):
    name = TABULAR_REGRESSOR
    task = REGRESSION
    output_name = "value"
    loss = "mse"
    metrics = ("mae",)

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        y = numeric_labels(frame, self.name)
        std = float(y.std()) or 1.0
        return {"classes": [], **self._describe_features(frame), "target_mean": float(y.mean()), "target_std": std}

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        return numeric_labels(frame, self.name).astype(np.float32)

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        features, x = self._normalized(inputs)
        x = keras.layers.Dense(64, activation="relu")(x)
        x = keras.layers.Dense(32, activation="relu")(x)
        x = keras.layers.Dense(1, dtype="float32")(x)
        # The net predicts a standardised value; the model returns it in the label's own unit.
        out = keras.layers.Rescaling(spec["target_std"], offset=spec["target_mean"], dtype="float32", name=self.output_name)(x)
        return keras.Model(features, out, name=self.name)


# --- recommender ------------------------------------------------------------------------


class Recommender(Family):
    name = RECOMMENDER
    task = RANKING
    output_name = "scores"
    loss = "binary_crossentropy"
    metrics = ("binary_accuracy",)
    negatives = 4  # sampled non-interactions per interaction
    dimension = 16

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        _require(frame, [USER, ITEM], self.name)
        numeric_labels(frame, self.name)
        return {
            "classes": [],
            "feature_columns": [USER, ITEM],
            "inputs": [USER, ITEM],
            "users": sorted(frame[USER].astype(str).unique()),
            "items": sorted(frame[ITEM].astype(str).unique()),
        }

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        _require(frame, [USER, ITEM], self.name)
        return {USER: frame[USER].astype(str).to_numpy(object), ITEM: frame[ITEM].astype(str).to_numpy(object)}

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        return (numeric_labels(frame, self.name) > 0).astype(np.float32)

    def examples(self, frame: pd.DataFrame, spec: dict[str, Any], rng: np.random.Generator) -> Examples:
        """The rows as given, plus `negatives` random catalogue items per interaction, labelled 0."""
        inputs, targets = self.inputs(frame, spec), self.targets(frame, spec)
        positive = np.flatnonzero(targets > 0)
        rows = np.repeat(positive, self.negatives)
        items = np.asarray(spec["items"], dtype=object)
        sampled = items[rng.integers(0, len(items), size=len(rows))]
        # A sampled "negative" the user did interact with would teach the opposite: drop it.
        seen = set(zip(inputs[USER][positive], inputs[ITEM][positive], strict=True))
        keep = np.array([(u, i) not in seen for u, i in zip(inputs[USER][rows], sampled, strict=True)], dtype=bool)
        rows, sampled = rows[keep], sampled[keep]
        return Examples(
            {USER: np.concatenate([inputs[USER], inputs[USER][rows]]), ITEM: np.concatenate([inputs[ITEM], sampled])},
            np.concatenate([targets, np.zeros(len(rows), np.float32)]),
            np.concatenate([np.arange(len(frame)), rows]),
        )

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        user, item = keras.Input((), dtype="string", name=USER), keras.Input((), dtype="string", name=ITEM)
        # The vocabularies are part of the model: an unknown user or item maps to index 0.
        u = keras.layers.StringLookup(vocabulary=spec["users"], name="user_lookup")(user)
        i = keras.layers.StringLookup(vocabulary=spec["items"], name="item_lookup")(item)
        u_vec = keras.layers.Embedding(len(spec["users"]) + 1, self.dimension, name="user_embedding")(u)
        i_vec = keras.layers.Embedding(len(spec["items"]) + 1, self.dimension, name="item_embedding")(i)
        i_bias = keras.layers.Embedding(len(spec["items"]) + 1, 1, name="item_bias")(i)
        logit = keras.layers.Add()([keras.layers.Dot(axes=1)([u_vec, i_vec]), i_bias])
        out = keras.layers.Activation("sigmoid", dtype="float32", name=self.output_name)(logit)
        return keras.Model({USER: user, ITEM: item}, out, name=self.name)

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        users, items = set(spec["users"]), set(spec["items"])
        unknown = ~(frame[USER].astype(str).isin(users) & frame[ITEM].astype(str).isin(items))
        if unknown.mean() > MAX_UNKNOWN_SHARE:
            return f"{unknown.mean():.0%} of the interactions involve users or items the production model never saw"
        return None


# --- user-defined -----------------------------------------------------------------------


class Custom(Family):
    """A user function building the model; the base family reads the data and the outputs."""

    def __init__(self, reference: str, build_fn: Callable[..., keras.Model], base: Family) -> None:
        self.name, self.build_fn, self.base = reference, build_fn, base
        self.task, self.output_name = base.task, base.output_name
        self.loss, self.metrics = base.loss, base.metrics

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {**self.base.describe(frame), "base_family": self.base.name}

    def inputs(self, frame: pd.DataFrame, spec: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.base.inputs(frame, spec)

    def targets(self, frame: pd.DataFrame, spec: dict[str, Any]) -> np.ndarray:
        return self.base.targets(frame, spec)

    def examples(self, frame: pd.DataFrame, spec: dict[str, Any], rng: np.random.Generator) -> Examples:
        return self.base.examples(frame, spec, rng)

    def incompatible(self, spec: dict[str, Any], frame: pd.DataFrame) -> str | None:
        return self.base.incompatible(spec, frame)

    def build(self, spec: dict[str, Any], inputs: dict[str, np.ndarray]) -> keras.Model:
        model = self.build_fn(spec, inputs)
        if not isinstance(model, keras.Model):
            raise SettingsError(f"family {self.name} returned {type(model).__name__}, not a keras.Model")
        return model


_FAMILIES: dict[str, type[Family]] = {
    IMAGE_CLASSIFIER: ImageClassifier,
    TABULAR_CLASSIFIER: TabularClassifier,
    TABULAR_REGRESSOR: TabularRegressor,
    RECOMMENDER: Recommender,
}


def infer(frame: pd.DataFrame) -> str:
    """The built-in family the columns imply: images, interactions, else tabular classes."""
    if PIXELS in frame.columns:
        return IMAGE_CLASSIFIER
    if {USER, ITEM} <= set(frame.columns):
        return RECOMMENDER
    return TABULAR_CLASSIFIER


def resolve(name: str, frame: pd.DataFrame | None = None, base: str | None = None) -> Family:
    """The family called `name`: built-in, `auto` (inferred from `frame`), or `module:function`."""
    name = _OLD_NAMES.get(name, name)
    if name == AUTO:
        if frame is None:
            raise SettingsError("family 'auto' needs the training rows to choose a family")
        name = infer(frame)
    if name in _FAMILIES:
        return _FAMILIES[name]()
    if not _CUSTOM.match(name):
        raise SettingsError(
            f"unknown family {name!r}: choose auto, {', '.join(BUILT_IN)}, or module:function for your own"
        )
    module_name, function_name = name.split(":")
    try:
        build_fn = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        raise SettingsError(f"family {name}: cannot import it ({err}); install the module in the training image") from None
    if base is None:
        inferred = infer(frame) if frame is not None else TABULAR_CLASSIFIER
        base = TABULAR_REGRESSOR if getattr(build_fn, "task", None) == REGRESSION else inferred
    return Custom(name, build_fn, _FAMILIES[_OLD_NAMES.get(base, base)]())


def from_lineage(lineage: dict[str, Any]) -> Family:
    """The family of a trained model, from its lineage record."""
    spec = lineage.get("spec") or {}
    return resolve(str(lineage["family"]), base=spec.get("base_family"))


def spec_from_lineage(lineage: dict[str, Any]) -> dict[str, Any]:
    spec = dict(lineage.get("spec") or {})
    spec.setdefault("classes", list(lineage.get("classes") or []))
    spec.setdefault("feature_columns", list(lineage.get("feature_columns") or []))
    return spec


# --- data helpers -----------------------------------------------------------------------


def _require(frame: pd.DataFrame, columns: list[str], family: str) -> None:
    if missing := [c for c in columns if c not in frame.columns]:
        raise DataError(f"the {family} family reads columns {', '.join(columns)}; missing: {', '.join(missing)}")


def numeric_labels(frame: pd.DataFrame, family: str) -> np.ndarray:
    values = pd.to_numeric(frame[LABEL], errors="coerce").to_numpy(np.float64)
    if np.isnan(values).any():
        bad = frame[LABEL][np.isnan(values)].iloc[0]
        raise DataError(f"the {family} family needs a number in '{LABEL}' on every row; found {bad!r}")
    return values


def encode_labels(labels: pd.Series, classes: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    if unknown := sorted(set(labels) - index.keys()):
        raise DataError(
            f"labels unknown to the model: {', '.join(map(repr, unknown))} (model classes: {', '.join(classes)})"
        )
    return labels.map(index).to_numpy(dtype=np.int64)


def image_array(frame: pd.DataFrame) -> np.ndarray:
    """`pixels` bytes as float32 [N, 28, 28] of raw values 0..255 (the model rescales)."""
    if PIXELS not in frame.columns:
        raise DataError(f"the model reads images but the data has no '{PIXELS}' column")
    pixels = frame[PIXELS]
    bad = [
        i for i, value in enumerate(pixels) if not isinstance(value, (bytes, bytearray)) or len(value) != IMAGE_BYTES
    ]
    if bad:
        first = pixels.iloc[bad[0]]
        size = len(first) if isinstance(first, (bytes, bytearray)) else type(first).__name__
        where = frame[ID].iloc[bad[0]] if ID in frame.columns else bad[0]
        raise DataError(
            f"column '{PIXELS}' must hold {IMAGE_BYTES} bytes per row (a {IMAGE_SIDE}x{IMAGE_SIDE} uint8 image); "
            f"{len(bad)} rows do not, e.g. row {where!r} ({size})"
        )
    flat = np.frombuffer(b"".join(pixels), dtype=np.uint8)
    return flat.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).astype(np.float32)


def numeric_features(frame: pd.DataFrame) -> list[str]:
    """The numeric feature columns, in file order; other feature columns are left out."""
    candidates = feature_columns(list(frame.columns))
    numeric = [c for c in candidates if pd.api.types.is_numeric_dtype(frame[c])]
    if skipped := [c for c in candidates if c not in numeric]:
        log.warning("ignoring non-numeric feature columns: %s", ", ".join(skipped))
    if not numeric:
        raise DataError(f"no numeric feature column to train on (columns: {', '.join(frame.columns)})")
    return numeric


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
