"""Adopt a model trained elsewhere: turn a Keras model and the rows it was trained on into a
complete version directory (see `layout`), without retraining.

The data becomes the dataset contract (`dataset`): the named label column becomes `label`,
`id` and `created_at` are kept when present (else made up: row numbers, the adoption
time), and rows without a usable label or with a missing number are left out and counted
by reason. The model must read the data's feature columns as they are: one numeric input
as wide as the numeric feature columns (in file order), or inputs named `features` /
`categories` as our tabular families build them, or `pixels` for images. Its validated
error (the retrain rule's baseline) is the one given, else measured on the test set, else
on the training rows (recorded as not held out). The lineage is checked against
`lineage.schema.json` before anything is written to the store.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feedback_loop import dataset
from feedback_loop.dataset import CREATED_AT, ID, LABEL, write_parquet
from feedback_loop.errors import DataError, ModelNotFound, SettingsError
from feedback_loop.layout import REFERENCE_PREDICTIONS_FILE
from feedback_loop.lineage import code_lineage, data_hash, validate

log = logging.getLogger(__name__)

_PROBE_ROWS = 256  # rows the model must read before anything is written
_REFERENCE_ROWS = 2000  # rows the validated error is measured on, when none is given
_INTEGER = re.compile(r"^-?\d+$")
# What a given metric means as the validated error: (name in the lineage, value from the given one).
METRICS = {
    "error_rate": ("error_rate", lambda v: v),
    "accuracy": ("error_rate", lambda v: 1.0 - v),
    "mse": ("mse", lambda v: v),
    "rmse": ("mse", lambda v: v * v),
}


@dataclass(frozen=True)
class Request:
    """What the user hands over: the model, the rows it learned from, and what is known about it."""

    model_path: Path
    data_path: Path
    label_column: str
    model_name: str
    test_path: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"accuracy": 0.91} or {"mse": 2.3}
    family: str = "auto"
    classes: list[str] = field(default_factory=list)  # output index -> label, when the labels do not say
    version: str | None = None


@dataclass(frozen=True)
class Adopted:
    version: str
    model_dir: Path
    lineage: dict[str, Any]
    rows: int
    excluded: dict[str, int]


def read_table(path: Path, label_column: str, now: datetime, what: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows of a Parquet or CSV file in the dataset contract, and the rows left out by reason."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} not found: pass a Parquet or CSV file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".txt"):
            frame = pd.read_csv(path)
        else:
            raise DataError(f"{what} {path}: unknown format {path.suffix!r}; pass a .parquet or .csv file")
    except (OSError, ValueError) as err:
        raise DataError(f"{what} {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0]}): pass a Parquet or CSV file") from None
    if label_column not in frame.columns:
        raise DataError(f"{what} {path} has no label column {label_column!r} (columns: {', '.join(map(str, frame.columns))}): name it with --label")
    if label_column != LABEL:
        if LABEL in frame.columns:
            raise DataError(f"{what} {path} has a column 'label' beside the label column {label_column!r}: rename one of them")
        frame = frame.rename(columns={label_column: LABEL})
    if ID not in frame.columns:
        frame.insert(0, ID, [f"{path.stem}-{i}" for i in range(len(frame))])
    frame[ID] = frame[ID].astype(str)
    if CREATED_AT in frame.columns:
        frame[CREATED_AT] = pd.to_datetime(frame[CREATED_AT], utc=True, errors="coerce")
    else:
        frame[CREATED_AT] = pd.Timestamp(now)  # every row counts as seen at adoption
    excluded: dict[str, int] = {}
    keep = np.ones(len(frame), dtype=bool)
    for reason, bad in (
        ("no_label", frame[LABEL].isna() | frame[LABEL].astype(str).str.strip().isin(["", "nan", "NaN"])),
        ("bad_created_at", frame[CREATED_AT].isna()),
        ("missing_feature", frame[[c for c in dataset.feature_columns(list(frame.columns)) if pd.api.types.is_numeric_dtype(frame[c])]].isna().any(axis=1)),
    ):
        newly = bad.to_numpy() & keep
        if newly.any():
            excluded[reason] = int(newly.sum())
        keep &= ~bad.to_numpy()
    frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        counts = ", ".join(f"{n} {reason}" for reason, n in excluded.items()) or "the file is empty"
        raise DataError(f"{what} {path} has no usable rows ({counts}): every row needs a label and its feature values")
    frame[LABEL] = dataset.label_text(frame, f"{what} {path.name}")
    if excluded:
        log.warning("%s %s: left out %s", what, path.name, ", ".join(f"{n} rows ({reason})" for reason, n in excluded.items()))
    return frame, excluded


def load_keras(path: Path) -> Any:
    import keras

    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"model {path} not found: pass a .keras file or a SavedModel directory")
    if path.is_dir():
        raise ModelNotFound(
            f"model {path} is a SavedModel directory: adopt needs the Keras model to fine-tune it; load it in the code that "
            "trained it and save it with model.save('model.keras'), then adopt that file"
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 (Keras raises anything from ValueError to OSError on a bad file)
        raise ModelNotFound(f"model {path} cannot be loaded by Keras ({type(err).__name__}: {str(err).splitlines()[0][:200]}): pass a .keras file saved with model.save") from None


def output_width(model: Any) -> int:
    shape = model.outputs[0].shape
    return int(shape[-1]) if len(shape) > 1 and shape[-1] is not None else 1


def choose_family(name: str, model: Any, frame: pd.DataFrame) -> Any:
    """The family given, or the one the columns and the model's output imply."""
    from feedback_loop.train import families

    if name != families.AUTO:
        return families.resolve(name, frame)
    inferred = families.infer(frame)
    if inferred in (families.TABULAR_CLASSIFIER, families.TABULAR_REGRESSOR):
        numeric = pd.to_numeric(frame[LABEL], errors="coerce").notna().all()
        inferred = families.TABULAR_REGRESSOR if output_width(model) == 1 and numeric else families.TABULAR_CLASSIFIER
    return families.get(inferred)()


def spec_for(family: Any, model: Any, frame: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """How the model reads rows; DataError when its inputs do not match the data's feature columns."""
    from feedback_loop.train.families import CLASSIFICATION, columns

    spec = dict(family.describe(frame))
    names = [t.name for t in model.inputs]
    numeric, categorical = columns.numeric_columns(spec), columns.categorical_columns(spec)
    if set(names) <= {columns.FEATURES, columns.CATEGORIES} and spec.get("inputs"):
        if sorted(names) != sorted(spec["inputs"]):
            raise DataError(f"the model's inputs {names} do not match the data's feature columns (numeric {numeric}, text {categorical})")
        widths = {columns.FEATURES: len(numeric), columns.CATEGORIES: len(categorical)}
        for t in model.inputs:
            if t.shape[-1] is not None and int(t.shape[-1]) != widths[t.name]:
                raise DataError(f"the model's input {t.name!r} takes {t.shape[-1]} columns, the data has {widths[t.name]}: {numeric if t.name == columns.FEATURES else categorical}")
    elif len(names) == 1 and "numeric_columns" in spec:
        width = model.inputs[0].shape[-1]
        if categorical:
            raise DataError(f"the model has one numeric input; the data also has text feature columns {categorical}: drop them from the file, or adopt a model that takes them")
        if width is not None and int(width) != len(numeric):
            raise DataError(
                f"the model's input {names[0]!r} takes {width} values per row, the data has {len(numeric)} feature columns "
                f"({', '.join(numeric)}): keep exactly the columns the model was trained on, in its order"
            )
        spec["inputs"] = [columns.FEATURES]
    if family.task == CLASSIFICATION:
        spec["classes"] = output_classes(frame, output_width(model), classes)
    return spec


def output_classes(frame: pd.DataFrame, width: int, given: list[str]) -> list[str]:
    """Output index -> label: as given; integer labels are indices; else the sorted label texts."""
    labels = sorted(set(frame[LABEL]))
    if given:
        classes = [str(c) for c in given]
    elif all(_INTEGER.match(label) for label in labels) and min(map(int, labels)) >= 0 and max(map(int, labels)) < width:
        classes = [str(i) for i in range(width)]
    else:
        classes = labels
    if len(classes) != width:
        raise DataError(f"the model outputs {width} classes, the data has labels {labels[:10]}: name them in output order with --classes")
    if unknown := sorted(set(labels) - set(classes)):
        raise DataError(f"labels {unknown[:10]} are no class of the model ({classes[:10]}): fix the data or --classes")
    return classes


def probe(model: Any, family: Any, spec: dict[str, Any], frame: pd.DataFrame) -> None:
    """The model must read a few rows and answer in the family's shape before anything is written."""
    from feedback_loop.train.families import CLASSIFICATION

    try:
        out = family.predict(model, frame.head(_PROBE_ROWS), spec)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 (a shape or dtype mismatch surfaces as any TF error)
        raise DataError(f"the model cannot read the data's feature columns ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if not np.isfinite(out).all():
        raise DataError("the model answers NaN or infinity on the training rows: check its inputs")
    if family.task == CLASSIFICATION and not np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        raise DataError("the model's outputs are not probabilities (rows do not sum to 1): end it with a softmax")


def validated(given: dict[str, float], family: Any, model: Any, spec: dict[str, Any], rows: pd.DataFrame, held_out: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The reference predictions on `rows` and the validated error (the given metric when there is one)."""
    from feedback_loop.train.quality import reference_predictions

    reference, measured = reference_predictions(model, family, spec, rows)
    if given:
        if len(given) != 1 or next(iter(given)) not in METRICS:
            raise SettingsError(f"metrics {given}: give one of {', '.join(METRICS)}, e.g. {{\"accuracy\": 0.91}}")
        (name, value), = given.items()
        metric, convert = METRICS[name]
        if metric != measured["metric"] or not (np.isfinite(value) and convert(value) >= 0):
            raise SettingsError(f"metric {name}={value} does not fit a {family.task} model: give {measured['metric']} or its kin")
        return reference, {"metric": metric, "value": float(convert(value)), "rows": len(rows), "held_out": True, "source": "given"}
    return reference, {**measured, "held_out": held_out, "source": "measured by adopt"}


def build(request: Request, out_dir: Path, now: datetime | None = None) -> Adopted:
    """Writes the version directory for `request` into `out_dir` (not yet published)."""
    from feedback_loop.train.core import new_version
    from feedback_loop.train.families import columns
    from feedback_loop.train.model_io import export

    now = now or datetime.now(timezone.utc)
    frame, excluded = read_table(request.data_path, request.label_column, now, "training data")
    model = load_keras(request.model_path)
    family = choose_family(request.family, model, frame)
    spec = spec_for(family, model, frame, request.classes)
    probe(model, family, spec, frame)
    test = None
    if request.test_path is not None:
        test, _ = read_table(request.test_path, request.label_column, now, "test data")
    rows = test if test is not None else frame.sort_values(CREATED_AT, kind="stable").iloc[-_REFERENCE_ROWS:]
    reference, validation = validated(request.metrics, family, model, spec, rows, held_out=test is not None)
    version = request.version or new_version(now)
    out_dir = Path(out_dir)
    scratch = out_dir.parent / f".{out_dir.name}-data"
    train_path = write_parquet(frame, scratch / "training_data.parquet")
    test_path = write_parquet(test, scratch / "test_data.parquet") if test is not None else None
    names = [t.name for t in model.inputs]
    lineage = {
        "model_name": request.model_name,
        "version": version,
        "family": family.name,
        "task": family.task,
        "spec": spec,
        "classes": list(spec.get("classes") or []),
        "target": request.label_column,
        "feature_columns": list(spec.get("feature_columns") or []),
        "inputs": names,
        "input_name": columns.FEATURES if columns.FEATURES in names else names[0],
        "output_name": family.output_name,
        "trained_through": frame[CREATED_AT].max().isoformat(),
        "rows": len(frame),
        "data_hash": data_hash(train_path),
        **code_lineage(),
        "created_at": now.isoformat(),
        "parent_version": None,
        "validation": validation,
        "adopted": {
            "model": Path(request.model_path).name,
            "data": Path(request.data_path).name,
            "test": Path(request.test_path).name if request.test_path else None,
            "excluded_rows": excluded,
        },
    }
    validate(lineage, f"the lineage adopt wrote for {version}")
    export(model, out_dir, lineage, train_path, test_path)
    write_parquet(reference, out_dir / REFERENCE_PREDICTIONS_FILE)
    for path in (train_path, test_path):
        if path is not None:
            path.unlink()
    scratch.rmdir()
    log.info("adopted %s %s: %s, %d rows, validated %s %.4g", request.model_name, version, family.name, len(frame),
             validation["metric"], validation["value"])
    return Adopted(version, out_dir, lineage, len(frame), excluded)


def parse_metric(text: str | None) -> dict[str, float]:
    """`accuracy=0.91` -> {"accuracy": 0.91}; None -> {} (measure it)."""
    if not text:
        return {}
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if name.strip() not in METRICS or not math.isfinite(number):
        raise SettingsError(f"--metric {text!r}: give NAME=VALUE with NAME one of {', '.join(METRICS)}, e.g. accuracy=0.91")
    return {name.strip(): number}
