"""The extract's columns: the base ones, then the JSONB features typed in Arrow.

The features are parsed into typed columns in Arrow (`pyarrow.json`), not in SQL: nothing has
to scan the window for its keys first. A key is a number column when every value is a number,
else text. At most `max_columns` keys become columns (the most frequent first): a client that
sends thousands of distinct keys cannot blow up the extract; the keys left out are counted.
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


# Feature columns kept at most, by default (setting max_feature_columns).
DEFAULT_MAX_COLUMNS = 1000


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

    def __init__(self, max_columns: int = DEFAULT_MAX_COLUMNS) -> None:
        if max_columns < 1:
            raise ValueError(f"max_columns must be at least 1, not {max_columns}")
        self.types: dict[str, pa.DataType] = {}  # always in sorted key order
        self.max_columns = max_columns
        self.dropped: set[str] = set()  # keys beyond the cap, left out
        self._known = False

    def schema(self) -> pa.Schema:
        """The whole extract's schema: the base columns, then the feature columns."""
        return pa.schema(BASE_COLUMNS + list(self.types.items()))

    def parse(self, column: pa.Array) -> list[pa.ChunkedArray | pa.Array]:
        """The feature columns (in `schema()`'s order) of `column`'s JSON texts."""
        texts = column.storage if isinstance(column.type, pa.BaseExtensionType) else column
        if not self._known:
            if _key_estimate(texts) > self.max_columns:  # Arrow's inference slows down badly with the column count
                objects = _loads(texts)
                types = _types_of(objects)
                counts = _key_counts(objects, types)
            else:
                types, counts = _types_inferred(texts)
            self.types, self._known = self._capped(types, counts), True
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
        seen = _types_of(objects)
        new = {k: v for k, v in seen.items() if k not in self.types}
        kept = self._capped(new, _key_counts(objects, new), room=self.max_columns - len(self.types))
        wider = _widest(self.types, {k: v for k, v in seen.items() if k in self.types or k in kept})
        if wider != self.types:
            added = sorted(set(wider) - set(self.types)) or sorted(k for k in wider if wider[k] != self.types[k])
            self.types = wider
            raise WiderFeatures(f"feature column(s) {shorten(added)} appeared or turned to text after the first batch")
        return [_feature_array(objects, name, kind) for name, kind in self.types.items()]

    def _capped(self, types: dict[str, pa.DataType], counts: dict[str, int], room: int | None = None) -> dict[str, pa.DataType]:
        """`types` cut to the `room` (default: the cap) most frequent keys; the others are dropped."""
        room = self.max_columns if room is None else max(room, 0)
        if len(types) <= room:
            return types
        ranked = sorted(types, key=lambda k: (-counts.get(k, 0), k))
        dropped = ranked[room:]
        fresh = set(dropped) - self.dropped
        self.dropped.update(dropped)
        if fresh:
            log.warning(
                "%d feature key(s) beyond the cap of %d columns are left out (max_feature_columns): %s",
                len(fresh), self.max_columns, shorten(sorted(fresh)),
            )
        return {k: types[k] for k in sorted(ranked[:room])}


_RESERVED = {name for name, _ in BASE_COLUMNS}


def shorten(names: list[str], limit: int = 10) -> str:
    """The first `limit` names and how many more: a log line stays a line."""
    shown = ", ".join(n[:64] for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _key_estimate(texts: pa.Array) -> int:
    """About how many distinct keys `texts` hold, in Arrow: no fewer than the top-level ones
    (nested keys and text that looks like a key count too; an overestimate only costs time)."""
    fragments = pc.list_flatten(pc.split_pattern(pc.drop_null(texts), pattern=', "'))
    # After the split a fragment starts with its key (the first one after `{"`).
    keys = pc.extract_regex(fragments, r'^(?:\{")?(?P<key>(?:[^"\\]|\\.)*)": ')
    return pc.count_distinct(pc.struct_field(keys, [0])).as_py()


def _key_counts(objects: list[dict], keys: dict[str, pa.DataType]) -> dict[str, int]:
    """How many rows hold each of `keys` (non-null)."""
    counts = dict.fromkeys(keys, 0)
    for o in objects:
        for k, v in o.items():
            if v is not None and k in counts:
                counts[k] += 1
    return counts
# The server and the batches' conversion already keep both cores busy: more threads only cost.
_ONE_THREAD = pajson.ReadOptions(use_threads=False, block_size=1 << 26)


def _widest(a: dict[str, pa.DataType], b: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
    """Every key of both; text where either says text."""
    return {k: pa.string() if pa.string() in (a.get(k), b.get(k)) else pa.float64() for k in sorted({**a, **b})}


def _loads(texts: pa.Array) -> list[dict]:
    """Each row's features as a dict (a JSON value that is no object counts as none)."""
    objects = [json.loads(t) if t is not None else None for t in texts.to_pylist()]
    return [o if isinstance(o, dict) else {} for o in objects]


def _types_inferred(texts: pa.Array) -> tuple[dict[str, pa.DataType], dict[str, int]]:
    """The types of the keys in `texts`, inferred by Arrow, and how many rows hold each; in
    Python when Arrow's inference cannot tell (mixed or nested values, booleans, strings it
    would read as timestamps)."""
    try:
        inferred = pajson.read_json(pa.BufferReader(_lines(texts)), read_options=_ONE_THREAD)
    except pa.ArrowInvalid:
        inferred = None
    plain = {pa.float64(), pa.int64(), pa.string(), pa.null()}
    if inferred is None or any(f.type not in plain for f in inferred.schema) or set(inferred.column_names) & _RESERVED:
        objects = _loads(texts)
        types = _types_of(objects)
        return types, _key_counts(objects, types)
    types = {f.name: pa.string() if f.type == pa.string() else pa.float64() for f in sorted(inferred.schema, key=lambda f: f.name)}
    return types, {c: inferred.num_rows - inferred.column(c).null_count for c in inferred.column_names}


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
        # float(): an integer beyond 2**53 (JSONB prints 1e16 as one) is no exact double, which Arrow refuses.
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def _lines(texts: pa.Array) -> pa.Buffer:
    """The JSON texts as newline-delimited JSON, built in Arrow (no Python loop)."""
    joined = pc.binary_join_element_wise(pc.fill_null(texts, "{}"), "", "\n")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + len(joined) + 1]
    return joined.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
