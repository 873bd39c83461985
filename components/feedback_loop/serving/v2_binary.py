"""A v2 request whose tensors come as raw bytes (the binary tensor extension), read without
turning them into Python numbers.

The body is a JSON header of `Inference-Header-Content-Length` bytes, then each input with
`parameters.binary_data_size` as that many bytes, in the order of `inputs`. KServe 0.20
reads it (`InferRequest.from_bytes`) and then converts every binary tensor into a Python
list (`set_data_from_numpy(..., binary_data=False)`), which the model converts back: for
32 images of 28x28 that costs more than the model's call. Here a binary input keeps its
bytes, and `InferInput.as_numpy` views them as an array (`np.frombuffer`); the request is
otherwise the one KServe builds (id, parameters, inputs given as JSON `data`, requested
outputs), so the model sees no difference. What KServe leaves to numpy's reshape error is
said here: a size that does not match the shape and type, bytes missing or left over.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson


class BadBinaryRequest(ValueError):
    """A binary v2 body that cannot be read as declared."""


def read(body: bytes, json_length: str, model_name: str) -> Any:
    """The `InferRequest` of a binary v2 body; `BadBinaryRequest` names the first thing wrong."""
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
    from kserve.utils.numpy_codec import to_np_dtype

    if not json_length.strip().isdigit() or int(json_length) > len(body):
        raise BadBinaryRequest(f"Inference-Header-Content-Length must be the JSON header's size in bytes, at most the body's "
                               f"{len(body)}; got {json_length[:40]!r}")
    at = int(json_length)
    try:
        header = orjson.loads(body[:at])
    except orjson.JSONDecodeError as err:
        raise BadBinaryRequest(f"the request's JSON header (its first {at} bytes) is not JSON: {err}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise BadBinaryRequest('the request\'s JSON header must be an object with "inputs": [{"name", "shape", "datatype", ...}]')
    inputs = []
    for given in header["inputs"]:
        if not isinstance(given, dict) or not {"name", "shape", "datatype"} <= set(given):
            raise BadBinaryRequest('each input needs "name", "shape" and "datatype"')
        name, shape, datatype = given["name"], given["shape"], given["datatype"]
        where = f"input {str(name)[:100]!r}"
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadBinaryRequest(f"{where}: shape must be a list of sizes, got {str(shape)[:100]}")
        parameters = given.get("parameters") or {}
        tensor = InferInput(name=name, shape=shape, datatype=datatype, parameters=parameters or None)
        if given.get("data") is not None:
            if datatype == "FP16":
                raise BadBinaryRequest(f"{where}: FP16 data must come as bytes, not JSON")
            tensor.data = given["data"]
        elif isinstance(parameters, dict) and isinstance(parameters.get("binary_data_size"), int):
            size = parameters["binary_data_size"]
            dtype = to_np_dtype(datatype)
            if dtype is None:
                raise BadBinaryRequest(f"{where}: unknown datatype {str(datatype)[:40]!r}")
            takes = math.prod(shape) * np.dtype(dtype).itemsize
            if datatype != "BYTES" and size != takes:  # BYTES: each element's length is in its bytes
                raise BadBinaryRequest(f"{where}: binary_data_size is {size} bytes, but shape {shape} of {datatype} takes {takes}")
            if at + size > len(body):
                raise BadBinaryRequest(f"{where}: {size} bytes declared, {len(body) - at} left in the body")
            tensor._raw_data = body[at:at + size]  # as_numpy views these bytes (KServe's own field for them)
            at += size
        else:
            raise BadBinaryRequest(f"{where} has neither data nor parameters.binary_data_size")
        inputs.append(tensor)
    if at != len(body):
        raise BadBinaryRequest(f"{len(body) - at} bytes after the last input: the binary_data_size values do not add up to the body")
    outputs = header.get("outputs")
    requested = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in outputs
                 if isinstance(o, dict) and "name" in o] if isinstance(outputs, list) else None
    return InferRequest(model_name=model_name, request_id=header.get("id"), parameters=header.get("parameters"),
                        infer_inputs=inputs, request_outputs=requested or None)
