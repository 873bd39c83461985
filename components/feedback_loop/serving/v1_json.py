"""v1 request bodies to Python, numeric rows straight to one numpy array.

`{"instances": [[0.12, 0.5, ...], ...]}`, rows of numbers, is most of what a model server
reads. Parsed into Python lists (orjson) and then converted by numpy, each number becomes a
Python float and is read back: ~3 ms for 32 images of 784 values, three times the model's
own call. simdjson parses the same body and copies the rows into one buffer of doubles in C.

Only a regular array takes that path: every row an array of the same length, holding numbers
and nothing else (no deeper arrays: the body has exactly rows + 1 opening brackets). Anything
else (rows that are objects, nested rows, ragged rows, text) is parsed by orjson, as before,
and validated where it always was (SignatureRunner.as_batch, from_instances).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import orjson
import simdjson

INSTANCES = "instances"
# One parser per thread, reused: a new one allocates its buffers for every body (page faults
# each request). A parser can parse again only once no object of its last document is left,
# which numeric_rows ensures by keeping them local to the call.
_parsers = threading.local()


def loads(body: bytes) -> Any:
    """The body as `orjson.loads` reads it, except that numeric rows under "instances" are one
    float64 array [rows, width]; `orjson.JSONDecodeError` for a body that is not JSON."""
    payload = numeric_rows(body)
    return payload if payload is not None else orjson.loads(body)


def numeric_rows(body: bytes) -> dict[str, Any] | None:
    """The payload with its "instances" as a float64 array, or None when they are not a regular
    array of numbers (or the body is no JSON object)."""
    if b'"instances"' not in body:
        return None
    try:
        doc = _parse(body)
    except (ValueError, RuntimeError):  # not JSON, or a number simdjson does not hold (a 20-digit integer): orjson's verdict
        return None
    if not isinstance(doc, simdjson.Object):
        return None
    rows = doc.get(INSTANCES)
    if not isinstance(rows, simdjson.Array) or len(rows) == 0:
        return None
    widths = {len(row) if isinstance(row, simdjson.Array) else -1 for row in rows}
    if len(widths) != 1 or -1 in widths or _brackets(body) != len(rows) + 1:
        return None  # a row that is no array, ragged rows, or arrays inside rows
    try:
        values = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):  # text, booleans or nulls among the numbers
        return None
    (width,) = widths
    if values.size != len(rows) * width:
        return None
    payload = {key: _plain(doc[key]) for key in doc.keys() if key != INSTANCES}
    payload[INSTANCES] = values.reshape(len(rows), width)
    return payload


def _plain(value: Any) -> Any:
    """A value beside the rows (user_id, consent, ...) as orjson gives it."""
    if isinstance(value, simdjson.Array):
        return value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


def _brackets(body: bytes) -> int:
    """How many "[" the body holds: numpy's compare is ~3x as fast as bytes.count (0.05 against
    0.15 ms for 500 KB, measured)."""
    return int(np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == ord("[")))


def _parse(body: bytes) -> Any:
    parser = getattr(_parsers, "parser", None) or simdjson.Parser()
    _parsers.parser = parser
    try:
        return parser.parse(body)
    except RuntimeError:  # its last document still referenced (a traceback kept it), or an integer over 64 bits: a new parser, once
        _parsers.parser = simdjson.Parser()
        return _parsers.parser.parse(body)
