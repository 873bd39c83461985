"""serving.v2_binary: a binary-tensor v2 body read as KServe reads it, but with each binary
tensor kept as an array over its bytes (KServe 0.20 converts it into a Python list)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kserve.protocol.infer_type import InferRequest

from feedback_loop.serving.v2_binary import BadBinaryRequest, read


def body_of(header: dict, *tensors: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(tensors), str(len(text))


def test_binary_tensors_stay_arrays_and_the_request_is_kserves() -> None:
    pixels = np.random.default_rng(0).uniform(0, 1, (32, 28, 28, 1)).astype(np.float32)
    ids = np.arange(32, dtype=np.int64)
    header = {"id": "r-7", "parameters": {"user_id": "u1"},
              "inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": "FP32", "parameters": {"binary_data_size": pixels.nbytes}},
                         {"name": "note", "shape": [2], "datatype": "INT32", "data": [4, 5]},
                         {"name": "ids", "shape": [32], "datatype": "INT64", "parameters": {"binary_data_size": ids.nbytes}}],
              "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    body, length = body_of(header, pixels.tobytes(), ids.tobytes())
    request = read(body, length, "m")
    kserves = InferRequest.from_bytes(body, int(length), "m")
    assert (request.id, request.parameters, request.model_name) == ("r-7", {"user_id": "u1"}, "m") == (kserves.id, kserves.parameters, "m")
    assert [o.name for o in request.request_outputs] == ["probabilities"]
    for name in ("pixels", "note", "ids"):
        np.testing.assert_array_equal(request.get_input_by_name(name).as_numpy(), kserves.get_input_by_name(name).as_numpy())
        assert request.get_input_by_name(name).datatype == kserves.get_input_by_name(name).datatype
    # KServe's holds the pixels as 25 088 Python floats; ours, as the bytes sent, viewed by numpy.
    assert isinstance(kserves.get_input_by_name("pixels").data, list)
    array = request.get_input_by_name("pixels").as_numpy()
    assert request.get_input_by_name("pixels").data is None and array.dtype == np.float32 and array.shape == pixels.shape


@pytest.mark.parametrize("header, tensors, length, says", [
    ({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 20}}]}, [b"\0" * 20], None,
     "binary_data_size is 20 bytes, but shape [2, 3] of FP32 takes 24"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}, [b"\0" * 4], None,
     "8 bytes declared, 4 left"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}, [b"\0" * 12], None,
     "8 bytes after the last input"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, [], None, "neither data nor parameters.binary_data_size"),
    ({"inputs": [{"name": "x", "datatype": "FP32"}]}, [], None, 'needs "name", "shape" and "datatype"'),
    ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "parameters": {"binary_data_size": 0}}]}, [], None, "shape must be a list of sizes"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "parameters": {"binary_data_size": 4}}]}, [b"\0" * 4], None, "unknown datatype"),
    ({"inputs": []}, [], None, 'must be an object with "inputs"'),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}, [b"\0" * 4], "999", "at most the body's"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}, [b"\0" * 4], "ten", "at most the body's"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}, [b"\0" * 4], "3", "is not JSON"),
])
def test_a_body_that_does_not_add_up_is_named(header: dict, tensors: list[bytes], length: str | None, says: str) -> None:
    body, declared = body_of(header, *tensors)
    with pytest.raises(BadBinaryRequest, match=says.replace("[", r"\[").replace("]", r"\]")) as err:
        read(body, length or declared, "m")
    assert "\n" not in str(err.value)
