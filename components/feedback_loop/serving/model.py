"""A KServe predictor for a version directory written by `train_model`, for every family.

    <version>/saved_model/<n>/   SavedModel; signature `serving_default`: {inputs} -> {output_name}
                                 (probabilities [N, classes], a regressor's value or a recommender's score [N, 1])
    <version>/lineage.json       version, task, classes, input_name, output_name, spec (the columns)

One `SavedModelPredictor` serves both protocols of KServe's `ModelServer`:

- v1 (`POST /v1/models/<name>:predict`, body `{"instances": [...]}`) answers
  `{"predictions": [{"label", "probabilities", "prediction_id"}...], "model_version": ...}`
  (a regressor answers `value`, a recommender `score`, instead of label and probabilities);
- v2 (`POST /v2/models/<name>/infer`) answers the output tensor (FP32), `label` (BYTES [N],
  classifiers) and `prediction_id` (BYTES [N]) with the response's `model_version` set.

Every answer names the version that produced it (also as the `x-model-version` header) and
an id per row: the id the feedback endpoint takes, so that the rollout analysis can compare
the feedback of two versions. With capture on, each row is written to the feedback store
off the request path (serving.capture). The signature is called directly, in the request's
thread: for small models that is cheaper than a hop to a worker thread.

A model with text (categorical) features takes raw values; the vocabulary is inside the
model and an unseen value lands in its out-of-vocabulary bucket. Its v1 instances are
objects keyed by column (`{"age": 41, "city": "Lyon"}`) or by input
(`{"features": [41.0], "categories": ["Lyon"]}`); its v2 request sends the tensors
`features` (FP32 [N, numeric columns]) and `categories` (BYTES [N, categorical columns]).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from feedback_loop.errors import ModelNotFound
from feedback_loop.feedback.pseudonyms import Pseudonymizer
from feedback_loop.layout import COMPLETE_MARKER, LINEAGE_FILE, SAVED_MODEL_DIR
from feedback_loop.serving.capture import PREDICTIONS, Capture
from feedback_loop.serving.records import CLASSIFICATION, REGRESSION, Answered

FEATURES, CATEGORIES = "features", "categories"  # the tabular families' inputs (train.families.columns)

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
OUTPUT = "probabilities"
VERSION_HEADER = "x-model-version"
# Who asked, and whether they agreed to their predictions being used: headers (or v1 body
# keys / v2 parameters user_id and consent), read only when capture is on.
USER_HEADER, CONSENT_HEADER = "x-user-id", "x-consent"
MAX_ROWS = 1024  # rows per request, at most (413 above)

try:  # the serve and deploy images carry kserve; the class below needs it
    import kserve
    from kserve.errors import InferenceError, InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, RequestedOutput
    from prometheus_client import Counter, Histogram
except ImportError:  # pragma: no cover - the data and train images
    kserve = None

if kserve is not None:
    # Per version, so that Prometheus can compare a canary with the stable model.
    REQUESTS = Counter(
        "feedback_loop_requests", "Inference requests by outcome (HTTP status class)",
        ["model_name", "model_version", "code"],
    )
    LATENCY = Histogram(
        "feedback_loop_request_seconds", "Inference latency inside the model server",
        ["model_name", "model_version"],
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    ROWS = Counter("feedback_loop_predicted_rows", "Rows predicted", ["model_name", "model_version"])


def read_lineage(model_dir: Path) -> dict[str, Any]:
    """lineage.json of a version directory, or of a bare SavedModel directory (KServe's storageUri)
    where publishing copied it into `<n>/assets.extra/`."""
    path = Path(model_dir) / LINEAGE_FILE
    if not path.is_file() and not (Path(model_dir) / SAVED_MODEL_DIR).is_dir():
        try:
            path = saved_model_path(model_dir) / "assets.extra" / LINEAGE_FILE if path.parent.is_dir() else path
        except ModelNotFound:
            pass
    if not path.is_file():
        raise ModelNotFound(f"{path} not found: serve a version directory written by train_model")
    lineage = json.loads(path.read_text())
    missing = [key for key in ("version", "input_name") if not lineage.get(key)]
    if task_of(lineage) == CLASSIFICATION and not lineage.get("classes"):
        missing.append("classes")
    if missing:
        raise ModelNotFound(f"{path} lacks {', '.join(missing)}: serve a version directory written by train_model")
    return lineage


def task_of(lineage: dict[str, Any]) -> str:
    """classification, regression or ranking: written by train_model; older lineages had classes or nothing."""
    return str(lineage.get("task") or (CLASSIFICATION if lineage.get("classes") else REGRESSION))


def require_complete(model_dir: Path | str) -> None:
    """Refuses a directory whose publication did not complete: no `_COMPLETE` marker, no serving.

    A version directory carries the marker; so does its `saved_model/` (what KServe mounts),
    which, served in place from a local store, may also rely on its version's.
    """
    model_dir = Path(model_dir)
    read_lineage(model_dir)  # a directory that is no version at all says so first
    markers = [model_dir / COMPLETE_MARKER]
    if model_dir.name == SAVED_MODEL_DIR:
        markers.append(model_dir.parent / COMPLETE_MARKER)
    if not any(marker.is_file() for marker in markers):
        raise ModelNotFound(
            f"{model_dir} has no {COMPLETE_MARKER} marker: an unpublished or half-uploaded version is never served; "
            "serve a version from the model store (deploy_canary publishes it, marker last)"
        )


def saved_model_path(model_dir: Path) -> Path:
    """The highest numbered SavedModel under `<model_dir>/saved_model/` (TF Serving's rule)."""
    root = Path(model_dir) / SAVED_MODEL_DIR
    if not root.is_dir():
        root = Path(model_dir)  # the SavedModel directory itself (what KServe mounts at /mnt/models)
    numbered = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) if root.is_dir() else []
    if not numbered:
        raise ModelNotFound(f"{root} holds no numbered SavedModel (e.g. {SAVED_MODEL_DIR}/1/)")
    return numbered[-1]


def time_ordered_id() -> str:
    """32 hex digits, the first 12 the time in milliseconds (as a UUIDv7's), then 80 random bits.

    A request's prediction ids are this and the row's number. Ids that grow with time land on
    the right edge of the `predictions` primary key instead of on random pages: with uuid4's,
    PostgreSQL spent 1.1-1.4x the CPU per captured row, more as the table grew
    (`./build.sh bench capture_write`, 41 000 and 154 000 rows).
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def finite(x: np.ndarray, name: str) -> None:
    """Refuses an input that holds NaN or infinity (a JSON number beyond float32's range becomes
    infinity): the model would answer NaN. Text inputs are not numbers, and pass."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise ValueError(f"input {name!r} holds a number float32 cannot hold (NaN, infinity, or beyond ±3.4e38) in row {row}: send finite numbers")


def to_float32(values: Any) -> np.ndarray:
    """float32, quietly: a number beyond float32's range becomes infinity without numpy's
    "overflow" warning, and `finite` then refuses the request, naming the row."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32)


def as_text(values: Any) -> np.ndarray:
    """Raw categories as the model learnt them: text; a missing value is "" (the unknown bucket)."""
    array = np.asarray(values, dtype=object)
    flat = ["" if v is None else v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return np.asarray(flat, dtype=object).reshape(array.shape)


class SignatureRunner:
    """The `serving_default` signature of a SavedModel, called in process (what the server wraps)."""

    def __init__(self, model_dir: Path) -> None:
        import tensorflow as tf

        self.lineage = read_lineage(model_dir)
        self.version = str(self.lineage["version"])
        self.classes = [str(c) for c in self.lineage["classes"]]
        self.input_name = str(self.lineage["input_name"])
        self.task = task_of(self.lineage)
        self.output = str(self.lineage.get("output_name") or OUTPUT)
        self.image = str(self.lineage.get("family") or "").startswith("image") or self.input_name == "pixels"
        loaded = tf.saved_model.load(str(saved_model_path(model_dir)))
        self._loaded = loaded  # keeps the variables alive
        self._fn = loaded.signatures[SIGNATURE]
        specs = self._fn.structured_input_signature[1]
        self.row_shape = [int(d) for d in specs[self.input_name].shape[1:]]
        self.shapes = {name: [int(d) if d is not None else -1 for d in s.shape[1:]] for name, s in specs.items()}
        self.input_names = sorted(specs)
        self.text_inputs = {name for name, s in specs.items() if s.dtype == tf.string}
        model_spec = self.lineage.get("spec") or {}
        numeric = model_spec.get("numeric_columns", model_spec.get("feature_columns") or self.lineage.get("feature_columns") or [])
        # Which columns of a row fill which input, in the model's column order.
        self.columns = {
            FEATURES: [str(c) for c in numeric],
            CATEGORIES: [str(c) for c in model_spec.get("categorical_columns") or []],
        }
        self._constant, self._string = tf.constant, tf.string

    @property
    def takes_rows(self) -> bool:
        """Whether requests must name their inputs (several inputs, or text ones)."""
        return len(self.input_names) > 1 or bool(self.text_inputs)

    def __call__(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        feeds = x if isinstance(x, dict) else {self.input_name: x}
        tensors = {
            name: self._constant(value, dtype=self._string) if name in self.text_inputs else self._constant(value)
            for name, value in feeds.items()
        }
        out = self._fn(**tensors)[self.output].numpy()
        # Probabilities [N, classes]; a value or a score per row [N].
        return out if self.task == CLASSIFICATION else out.reshape(len(out), -1)[:, 0]

    def example(self) -> np.ndarray | dict[str, np.ndarray]:
        """One neutral row (zeros, empty texts) to trace the signature before traffic."""
        if not self.takes_rows:
            return np.zeros([1, *self.row_shape], np.float32)
        example = {}
        for name in self.input_names:
            shape = [len(self.columns.get(name, [])) if d < 0 else d for d in self.shapes[name]]
            example[name] = np.full([1, *shape], "", object) if name in self.text_inputs else np.zeros([1, *shape], np.float32)
        return example

    def from_instances(self, instances: list[Any]) -> dict[str, np.ndarray]:
        """v1 instances of a model that names its inputs: objects keyed by column, or by input."""
        if not instances or not all(isinstance(row, dict) for row in instances):
            columns = ", ".join(c for name in self.input_names for c in self.columns.get(name, []))
            raise ValueError(f"expected instances as objects keyed by column ({columns}) or by input ({', '.join(self.input_names)})")
        by_input = set(instances[0]) <= set(self.input_names)
        out = {}
        for name in self.input_names:
            if by_input:
                if any(name not in row for row in instances):
                    raise ValueError(f"each instance needs the key {name!r}")
                values = [row[name] for row in instances]
            else:
                wanted = self.columns.get(name, [])
                if missing := sorted({c for row in instances for c in wanted if c not in row}):
                    raise ValueError(f"instances lack the columns {', '.join(missing)}")
                values = [[row[c] for c in wanted] for row in instances]
            try:
                array = as_text(values) if name in self.text_inputs else to_float32(values)
            except (TypeError, ValueError):
                raise ValueError(f"input {name!r} must hold numbers, one list per row") from None
            shape = self.shapes.get(name, [])
            if -1 not in shape and array.size == len(instances) * int(np.prod(shape)):
                array = array.reshape([len(instances), *shape])  # e.g. a recommender's [N, 1] user and item
            out[name] = array
        return out

    def as_batch(self, data: Any) -> np.ndarray:
        """Rows as the signature wants them: float32, reshaped when each row is flattened."""
        # Lists of Python floats convert faster as float64, then cast, than straight to float32.
        x = to_float32(data if isinstance(data, np.ndarray) else np.array(data))
        width = int(np.prod(self.row_shape)) if self.row_shape else 1
        if x.size == 0 or x.size % width:
            raise ValueError(f"expected rows of shape {self.row_shape} ({width} values each), got an array of shape {list(x.shape)}")
        return x.reshape([-1, *self.row_shape])


if kserve is not None:

    class TooManyRows(InvalidInput):
        """More rows in one request than the server takes: 413."""

    class SavedModelPredictor(kserve.Model):
        """Serves one exported version under `name` (the InferenceService's model name).

        Each answer names `model_version` and one `prediction_id` per row; with a `capture`,
        each row is queued for the feedback store (see serving.capture), never waited for.
        """

        def __init__(self, name: str, model_dir: Path | str, *, capture: Capture | None = None,
                     max_rows: int = MAX_ROWS, hmac_key: str | None = None) -> None:
            super().__init__(name, return_response_headers=True)
            self.model_dir = Path(model_dir)
            self.runner: SignatureRunner | None = None
            self.version = ""
            self.capture, self.max_rows = capture, max_rows
            self._hmac_key = hmac_key or None
            self._pseudonyms = Pseudonymizer(self._hmac_key)

        def load(self) -> bool:
            self.runner = SignatureRunner(self.model_dir)
            self.version = self.runner.version
            self.runner(self.runner.example())  # trace once before traffic
            self.ready = True
            log.info("loaded %s version %s (%s) from %s", self.name, self.version, self.runner.task, self.model_dir)
            return self.ready

        async def __call__(self, body: Any, headers: dict[str, str] | None = None, verb: Any = None) -> Any:
            started, code = time.perf_counter(), "5xx"
            try:
                result = await (super().__call__(body, headers) if verb is None else super().__call__(body, headers, verb))
                code = "2xx"
                return result
            except InvalidInput:
                code = "4xx"
                raise
            finally:
                REQUESTS.labels(self.name, self.version, code).inc()
                LATENCY.labels(self.name, self.version).observe(time.perf_counter() - started)

        def validate(self, payload: Any) -> Any:
            # Rows of numbers arrive as one array (serving.v1_json), which KServe's v1 check for a list would refuse.
            if isinstance(payload, dict) and isinstance(payload.get("instances"), np.ndarray):
                return payload
            return super().validate(payload)

        def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None) -> Any:
            assert self.runner is not None, "load() first"
            started = time.perf_counter()
            v2 = isinstance(payload, InferRequest)
            self._check_rows(payload, v2)
            try:
                if self.runner.takes_rows:
                    x: Any = self._v2_inputs(payload) if v2 else self.runner.from_instances(self._v1_rows(payload))
                else:
                    x = self.runner.as_batch(self._v2_input(payload) if v2 else self._v1_instances(payload))
                inputs = x if isinstance(x, dict) else {self.runner.input_name: x}
                for name, values in inputs.items():
                    finite(values, name)  # every input, however it came (v1 or v2, one input or several)
                rows = len(next(iter(inputs.values())))
            except ValueError as err:
                raise InvalidInput(str(err)) from None
            if rows > self.max_rows:
                raise TooManyRows(f"{rows} rows in one request, over this server's limit of {self.max_rows}: split the request")
            try:
                outputs = self.runner(x)
            except Exception as err:  # a model that cannot answer this input: a server error, counted as such
                raise InferenceError(f"model {self.name} version {self.version} failed: {type(err).__name__}") from None
            ROWS.labels(self.name, self.version).inc(rows)
            base = time_ordered_id()
            ids = [f"{base}-{i}" for i in range(rows)]
            if response_headers is not None:
                response_headers[VERSION_HEADER] = self.version
            self._capture(payload, headers or {}, v2, x, outputs, ids, started)
            return self._answer(payload, v2, outputs, ids)

        def _answer(self, payload: Any, v2: bool, outputs: np.ndarray, ids: list[str]) -> Any:
            runner = self.runner
            if runner.task == CLASSIFICATION:
                labels = [runner.classes[i] for i in outputs.argmax(axis=1).tolist()]
                if v2:
                    tensors = [InferOutput(runner.output, list(outputs.shape), "FP32", outputs.astype(np.float32)),
                               InferOutput("label", [len(labels)], "BYTES", labels)]
                else:
                    rows = [{"label": label, "probabilities": dict(zip(runner.classes, row)), "prediction_id": pid}
                            for label, row, pid in zip(labels, outputs.tolist(), ids)]
            else:
                key = "value" if runner.task == REGRESSION else "score"
                if v2:
                    tensors = [InferOutput(runner.output, [len(outputs)], "FP32", outputs.astype(np.float32))]
                else:
                    rows = [{key: value, "prediction_id": pid} for value, pid in zip(outputs.tolist(), ids)]
            if v2:
                tensors.append(InferOutput("prediction_id", [len(ids)], "BYTES", ids))
                return InferResponse(payload.id or str(uuid.uuid4()), self.name, tensors, model_version=self.version,
                                     use_binary_outputs=payload.use_binary_outputs, requested_outputs=self._requested(payload))
            return {"predictions": rows, "model_version": self.version}

        def _requested(self, payload: InferRequest) -> list[RequestedOutput] | None:
            """The outputs a v2 request names (each binary or not as it asks), and always the
            prediction ids: feedback needs them."""
            if not payload.request_outputs:
                return None
            asked = list(payload.request_outputs)
            if "prediction_id" not in {o.name for o in asked}:
                asked.append(RequestedOutput("prediction_id", {"binary_data": False}))
            return asked

        def _check_rows(self, payload: Any, v2: bool) -> None:
            """Refuses an oversized batch before converting it (the body limit bounds the bytes)."""
            if v2:
                sizes = [int(t.shape[0]) for t in payload.inputs if t.shape]
            else:
                instances = payload.get("instances") if isinstance(payload, dict) else None
                sizes = [len(instances)] if isinstance(instances, (list, np.ndarray)) else []
            if sizes and max(sizes) > self.max_rows:
                raise TooManyRows(f"{max(sizes)} rows in one request, over this server's limit of {self.max_rows}: split the request")

        def _capture(self, payload: Any, headers: dict[str, str], v2: bool, x: Any, outputs: np.ndarray,
                     ids: list[str], started: float) -> None:
            if self.capture is None or not self.capture.enabled:
                return
            asked = (payload.parameters or {}) if v2 else payload
            user = headers.get(USER_HEADER) or asked.get("user_id")
            consent = headers.get(CONSENT_HEADER, asked.get("consent", True))
            runner = self.runner
            answered = Answered(
                created_at=datetime.now(timezone.utc), ids=ids, model_name=self.name, model_version=self.version,
                task=runner.task, inputs=x, columns=runner.columns, image=runner.image, outputs=outputs,
                classes=runner.classes, latency_ms=(time.perf_counter() - started) * 1000,
                user_id=self._pseudonym(user), consent=_truthy(consent),
            )
            self.capture.offer(PREDICTIONS, len(ids), answered)

        def _pseudonym(self, user: Any) -> str | None:
            if user is None or self._hmac_key is None:
                return None  # without a key, no id is stored
            return self._pseudonyms.digest(str(user))

        def _v1_instances(self, payload: Any) -> Any:
            instances = _instances(payload)
            if isinstance(instances, np.ndarray):  # rows of numbers, parsed straight into an array (serving.v1_json)
                return instances
            if instances and isinstance(instances[0], dict) and self.runner.input_name not in instances[0] \
                    and self.runner.columns.get(self.runner.input_name):  # [{"age": 41, ...}, ...]: by column
                return self.runner.from_instances(instances)[self.runner.input_name]
            if instances and isinstance(instances[0], dict):  # [{"pixels": [...]}, ...]
                try:
                    return [row[self.runner.input_name] for row in instances]
                except (KeyError, TypeError):
                    raise ValueError(f"each instance needs the key {self.runner.input_name!r}") from None
            return instances

        def _v1_rows(self, payload: Any) -> list[Any]:
            instances = _instances(payload)
            # Rows of numbers: from_instances says what it wants instead.
            return instances.tolist() if isinstance(instances, np.ndarray) else instances

        def _v2_inputs(self, payload: InferRequest) -> dict[str, np.ndarray]:
            out = {}
            for name in self.runner.input_names:
                tensor = payload.get_input_by_name(name)
                if tensor is None:
                    raise ValueError(f"expected the input tensors {', '.join(self.runner.input_names)}")
                out[name] = tensor.as_numpy() if name not in self.runner.text_inputs else as_text(tensor.as_numpy())
            return out

        def _v2_input(self, payload: InferRequest) -> np.ndarray:
            tensor = payload.get_input_by_name(self.runner.input_name) or (payload.inputs[0] if len(payload.inputs) == 1 else None)
            if tensor is None:
                raise ValueError(f"expected an input tensor named {self.runner.input_name!r}")
            return tensor.as_numpy()


def _instances(payload: Any) -> list[Any] | np.ndarray:
    """A v1 body's instances: a list, or the array serving.v1_json made of rows of numbers."""
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, (list, np.ndarray)):
        raise ValueError('expected a JSON body {"instances": [...]}')
    return instances


def _truthy(value: Any) -> bool:
    """A consent flag from JSON (true/false) or a header ("true", "false", "1", "0", "yes", "no")."""
    if isinstance(value, str):
        return value.strip().lower() not in {"false", "0", "no", "off", ""}
    return bool(value)
