"""The extract's columns: the base ones, then the JSONB features typed in Arrow.

The features are parsed into typed columns in Arrow (`pyarrow.json`), not in SQL: nothing has
to scan the window for its keys first. A key is a number column when every value is a number,
else text.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

log = logging.getLogger(__name__)

# Base columns of the extract, in order, with their Arrow types.
BASE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("model_version", pa.string()),
    ("predicted_label", pa.string()),
    ("confidence", pa.float64()),
    ("latency_ms", pa.float64()),
    ("input_uri", pa.string()),
    ("user_id", pa.string()),  # HMAC of the stored id, never the id itself
    ("is_correct", pa.bool_()),
    ("corrected_label", pa.string()),
    ("comment", pa.string()),
    ("feedback_at", pa.timestamp("us", tz="UTC")),
    ("label", pa.string()),
]
# The query also returns bookkeeping columns (excluded, feedback_excluded, answers), tallied and
# dropped, and the JSONB `features`, parsed into the columns that follow the base ones.


class WiderFeatures(Exception):
    """A batch held a feature key or a text value the columns written so far cannot take."""


class FeatureColumns:
    """The JSONB features as typed columns, keys in sorted order: a key is a number column when
    every value is a number, else text (strings as they are; booleans and nested values as
    JSON text, as PostgreSQL's ->> gives them).

    The types are set from the first batch (inferred by Arrow, or in Python where Arrow cannot
    tell), then each batch is parsed in Arrow against them. A batch Arrow cannot parse against them (a text value under a number key, a nested
    value) is read in Python; if it needs wider columns (a new key, text under a number key), the
    types widen and `WiderFeatures` asks for the window to be read again: a rare, one-off cost.
    """

    def __init__(self) -> None:
        self.types: dict[str, pa.DataType] = {}  # always in sorted key order
        self._known = False

    def schema(self) -> pa.Schema:
        """The whole extract's schema: the base columns, then the feature columns."""
        return pa.schema(BASE_COLUMNS + list(self.types.items()))

    def parse(self, column: pa.Array) -> list[pa.ChunkedArray | pa.Array]:
        """The feature columns (in `schema()`'s order) of `column`'s JSON texts."""
        texts = column.storage if isinstance(column.type, pa.BaseExtensionType) else column
        if not self._known:
            self.types, self._known = _types_inferred(texts), True
        if not self.types:
            return []
        options = pajson.ParseOptions(explicit_schema=pa.schema(list(self.types.items())), unexpected_field_behavior="error")
        try:
            table = pajson.read_json(pa.BufferReader(_lines(texts)), parse_options=options, read_options=_ONE_THREAD)
        except pa.ArrowInvalid:
            return self._parse_in_python(texts)
        return [table.column(name) for name in self.types]

    def _parse_in_python(self, texts: pa.Array) -> list[pa.Array]:
        objects = _loads(texts)
        wider = _widest(self.types, _types_of(objects))
        if wider != self.types:
            added = sorted(set(wider) - set(self.types)) or sorted(k for k in wider if wider[k] != self.types[k])
            self.types = wider
            raise WiderFeatures(f"feature column(s) {', '.join(added)} appeared or turned to text after the first batch")
        return [_feature_array(objects, name, kind) for name, kind in self.types.items()]


_RESERVED = {name for name, _ in BASE_COLUMNS}
# The server and the batches' conversion already keep both cores busy: more threads only cost.
_ONE_THREAD = pajson.ReadOptions(use_threads=False, block_size=1 << 26)


def _widest(a: dict[str, pa.DataType], b: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
    """Every key of both; text where either says text."""
    return {k: pa.string() if pa.string() in (a.get(k), b.get(k)) else pa.float64() for k in sorted({**a, **b})}


def _loads(texts: pa.Array) -> list[dict]:
    """Each row's features as a dict (a JSON value that is no object counts as none)."""
    objects = [json.loads(t) if t is not None else None for t in texts.to_pylist()]
    return [o if isinstance(o, dict) else {} for o in objects]


def _types_inferred(texts: pa.Array) -> dict[str, pa.DataType]:
    """The types of the keys in `texts`, inferred by Arrow; in Python when Arrow's inference
    cannot tell (mixed or nested values, booleans, strings it would read as timestamps)."""
    try:
        inferred = pajson.read_json(pa.BufferReader(_lines(texts)), read_options=_ONE_THREAD).schema
    except pa.ArrowInvalid:
        return _types_of(_loads(texts))
    plain = {pa.float64(), pa.int64(), pa.string(), pa.null()}
    if any(f.type not in plain for f in inferred) or set(inferred.names) & _RESERVED:
        return _types_of(_loads(texts))
    return {f.name: pa.string() if f.type == pa.string() else pa.float64() for f in sorted(inferred, key=lambda f: f.name)}


def _types_of(objects: list[dict]) -> dict[str, pa.DataType]:
    """float64 for keys whose values are all numbers (or null), string for the others."""
    text: set[str] = set()
    keys: set[str] = set()
    for o in objects:
        keys.update(o)
        text.update(k for k, v in o.items() if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))))
    clashing = keys & _RESERVED
    if clashing:
        log.warning("feature key(s) %s clash with extract columns and are left out", sorted(clashing))
    return {k: pa.string() if k in text else pa.float64() for k in sorted(keys - _RESERVED)}


def _feature_array(objects: list[dict], name: str, kind: pa.DataType) -> pa.Array:
    values = [o.get(name) for o in objects]
    if kind == pa.float64():
        return pa.array(values, pa.float64())
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def _lines(texts: pa.Array) -> pa.Buffer:
    """The JSON texts as newline-delimited JSON, built in Arrow (no Python loop)."""
    joined = pc.binary_join_element_wise(pc.fill_null(texts, "{}"), "", "\n")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + len(joined) + 1]
    return joined.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
