"""serving.v1_json: rows of numbers straight into an array, exactly as orjson + numpy read them;
everything else left to orjson."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.serving import v1_json

finite = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-(2**53), 2**53)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6).flatmap(lambda width: st.lists(st.lists(finite, min_size=width, max_size=width), min_size=1, max_size=8)),
       st.dictionaries(st.sampled_from(["user_id", "consent", "parameters"]), st.text(max_size=5) | st.booleans()))
def test_numeric_rows_are_the_array_numpy_makes_of_what_orjson_reads(rows: list[list[float]], extra: dict) -> None:
    body = orjson.dumps({**extra, "instances": rows})
    payload = v1_json.loads(body)
    expected = orjson.loads(body)
    if any("[" in str(value) for value in extra.values()):
        assert payload == expected  # a bracket outside the rows: left to orjson
        return
    assert isinstance(payload["instances"], np.ndarray)
    assert np.array_equal(payload["instances"], np.array(expected["instances"], dtype=np.float64))
    assert {k: v for k, v in payload.items() if k != "instances"} == {k: v for k, v in expected.items() if k != "instances"}


@pytest.mark.parametrize("body", [
    b'{"instances": [[1, 2], [3]]}',  # ragged
    b'{"instances": [[1, [2, 3]], [4, 5]]}',  # an array inside a row
    b'{"instances": [[[1], [2]], [[3], [4]]]}',  # nested rows (e.g. images as [28][28][1])
    b'{"instances": [[1, 2], 3]}',  # a row that is no array
    b'{"instances": [[1, "a"]]}',  # text
    b'{"instances": [[true, 2]]}',
    b'{"instances": [[null, 2]]}',
    b'{"instances": [{"age": 41}]}',  # rows keyed by column
    b'{"instances": []}',
    b'{"instances": [1, 2]}',
    b'{"inputs": [[1, 2]]}',
    b'[[1, 2]]',
    b'{"instances": [[1, 2]], "user_id": "[x"}',  # a bracket in a text: not sure the rows are flat, orjson reads it
    b'{"instances": [[18446744073709551616, 2]]}',  # an integer over 64 bits: simdjson refuses it, orjson reads it
    b'{"instances": [[1' + b"0" * 50 + b', 2]]}',
])
def test_anything_else_is_read_by_orjson_as_before(body: bytes) -> None:
    assert v1_json.numeric_rows(body) is None
    assert v1_json.loads(body) == orjson.loads(body)


def test_a_body_that_is_no_json_raises_orjsons_error() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        v1_json.loads(b'{"instances": [[1, 2]')
    with pytest.raises(orjson.JSONDecodeError):
        v1_json.loads(b'{"instances": [[1e400, 2]]}')


def test_thirty_two_images_as_flat_rows() -> None:
    x = np.random.default_rng(0).uniform(0, 1, size=(32, 784)).astype(np.float32)
    payload = v1_json.loads(json.dumps({"instances": x.tolist(), "user_id": "u-1"}).encode())
    assert payload["user_id"] == "u-1"
    assert payload["instances"].shape == (32, 784)
    assert np.array_equal(payload["instances"].astype(np.float32), x)


def test_a_document_left_referenced_does_not_stop_the_next_parse() -> None:
    kept = v1_json._parse(b'{"instances": [[1, 2]]}')  # as a traceback holding the frame would keep it
    assert np.array_equal(v1_json.loads(b'{"instances": [[3, 4]]}')["instances"], [[3.0, 4.0]])
    with pytest.raises(orjson.JSONDecodeError):
        kept2 = v1_json._parse(b'{"instances": [[5]]}')  # noqa: F841
        v1_json.loads(b'{"instances": [[1, 2]')
    assert kept["instances"].as_list() == [[1, 2]]
