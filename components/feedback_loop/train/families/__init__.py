"""Model families: what a model reads, what it predicts, and how it is built.

A family turns rows of the shared dataset contract into named model inputs and targets,
builds an uncompiled Keras model whose preprocessing (rescaling, normalisation,
vocabularies) is part of the model, and says how its outputs read. One file per family,
registered below; a new family is one new file and one `register` line:

    image_classifier    `pixels` (28x28 uint8) -> class probabilities            (image.py)
    tabular_classifier  numeric and text feature columns -> class probabilities  (tabular.py)
    tabular_regressor   numeric and text feature columns -> a value              (regressor.py)
    recommender         `user`, `item` strings -> interaction score              (recommender.py)
    module:function     user-defined: `function(spec, inputs) -> keras.Model`   (custom.py)

`spec` is the JSON-able description a family derives from its training rows (classes,
feature columns, vocabularies, target scale); it is stored in the lineage so that a
loaded model reads new rows exactly as it read its training rows.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import pandas as pd

from feedback_loop.errors import SettingsError
from feedback_loop.train.families.base import (
    CLASSIFICATION,
    RANKING,
    REGRESSION,
    Examples,
    Family,
    call_inputs,
    encode_labels,
    numeric_labels,
)
from feedback_loop.train.families.columns import numeric_features, tabular_array
from feedback_loop.train.families.custom import Custom
from feedback_loop.train.families.image import IMAGE_BYTES, IMAGE_CLASSIFIER, IMAGE_SIDE, ImageClassifier, image_array
from feedback_loop.train.families.recommender import ITEM, MAX_UNKNOWN_SHARE, RECOMMENDER, USER, Recommender
from feedback_loop.train.families.regressor import TABULAR_REGRESSOR, TabularRegressor
from feedback_loop.train.families.tabular import TABULAR_CLASSIFIER, TabularClassifier

__all__ = [
    "AUTO", "BUILT_IN", "CLASSIFICATION", "IMAGE_BYTES", "IMAGE_CLASSIFIER", "IMAGE_SIDE", "ITEM", "MAX_UNKNOWN_SHARE",
    "RANKING", "RECOMMENDER", "REGRESSION", "TABULAR_CLASSIFIER", "TABULAR_REGRESSOR", "USER", "Custom", "Examples",
    "Family", "ImageClassifier", "Recommender", "TabularClassifier", "TabularRegressor",
    "call_inputs", "encode_labels", "from_lineage", "get", "image_array", "infer", "numeric_features",
    "numeric_labels", "register", "resolve", "spec_from_lineage", "tabular_array",
]

AUTO = "auto"
_OLD_NAMES = {"image": IMAGE_CLASSIFIER, "tabular": TABULAR_CLASSIFIER}  # lineage written before families had names
_CUSTOM = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_REGISTRY: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    """Makes `family` choosable by its name (settings, `auto` inference, lineage)."""
    if not family.name or family.name in _REGISTRY:
        raise ValueError(f"family {family.name!r} has no name or is registered twice")
    _REGISTRY[family.name] = family
    return family


def get(name: str) -> type[Family]:
    """The registered family class called `name` (older lineage names are accepted)."""
    name = _OLD_NAMES.get(name, name)
    if name not in _REGISTRY:
        raise SettingsError(f"unknown family {name!r}: choose auto, {', '.join(_REGISTRY)}, or module:function for your own")
    return _REGISTRY[name]


register(ImageClassifier)
register(TabularClassifier)
register(TabularRegressor)
register(Recommender)

BUILT_IN = tuple(_REGISTRY)


def infer(frame: pd.DataFrame) -> str:
    """The registered family the columns imply: the highest-priority family that claims them."""
    names = set(frame.columns)
    ranked = sorted(_REGISTRY.values(), key=lambda family: -family.priority)
    return next(family.name for family in ranked if family.claims(names))


def resolve(name: str, frame: pd.DataFrame | None = None, base: str | None = None) -> Family:
    """The family called `name`: registered, `auto` (inferred from `frame`), or `module:function`."""
    name = _OLD_NAMES.get(name, name)
    if name == AUTO:
        if frame is None:
            raise SettingsError("family 'auto' needs the training rows to choose a family")
        name = infer(frame)
    if name in _REGISTRY or not _CUSTOM.match(name):
        return get(name)()
    module_name, function_name = name.split(":")
    try:
        build_fn = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        raise SettingsError(f"family {name}: cannot import it ({err}); install the module in the training image") from None
    if base is None:
        inferred = infer(frame) if frame is not None else TABULAR_CLASSIFIER
        base = TABULAR_REGRESSOR if getattr(build_fn, "task", None) == REGRESSION else inferred
    return Custom(name, build_fn, get(base)())


def from_lineage(lineage: dict[str, Any]) -> Family:
    """The family of a trained model, from its lineage record."""
    spec = lineage.get("spec") or {}
    return resolve(str(lineage["family"]), base=spec.get("base_family"))


def spec_from_lineage(lineage: dict[str, Any]) -> dict[str, Any]:
    spec = dict(lineage.get("spec") or {})
    spec.setdefault("classes", list(lineage.get("classes") or []))
    spec.setdefault("feature_columns", list(lineage.get("feature_columns") or []))
    return spec
