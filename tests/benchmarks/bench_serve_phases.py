"""Where a request's time goes in our model server, at batch 1 and 32, v1 JSON and binary v2,
capture off and on: what `bench serve`'s `batch32_overhead_ratio` is made of.

Two servers (`feedback-loop serve`; one capturing into a real PostgreSQL) run with timers
around their phases: reading the body, decoding it (serving.v1_json / serving.v2_binary), the
model's call (SignatureRunner), encoding a v1 answer, the whole app (uvicorn's ASGI cycle). A
sequential keep-alive client on 127.0.0.1 sends the same bodies as `bench serve`, the servers
taking turns (SLICES times, ABBA) with the in-process limit, measured back to back and right
after decoding the same body in process.

Prints one JSON object as its last line: per mode and protocol, the batch-1 and batch-32
overheads over the in-process call, their ratio, and how much more each phase costs at batch
32 than at batch 1 (p50s: medians add up only roughly), with each phase's p50 under
`by_mode`. The ratio is at most 2 only if those extra costs together are at most batch 1's
whole overhead; `ratio_floor_from_receive_and_decode` is the ratio that receiving and
decoding the JSON body alone would give, were nothing else dearer at batch 32.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_serve
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: serving_helpers

import numpy as np  # noqa: E402
from bench_serve import JSON, export, in_process, latencies, v2_binary  # noqa: E402

from serving_helpers import ModelServerProcess, StoppablePostgres  # noqa: E402

REQUESTS = 360  # per batch size, protocol and mode, in SLICES turns
SLICES = 6
MODES = ("capture_off", "capture_on")

# `feedback-loop serve` with timers around its phases; on SIGUSR1 it writes what they measured
# since the last signal to $PHASES_OUT and starts again.
TIMED_SERVER = r'''
import functools, json, os, signal, sys, time
from collections import defaultdict
times = defaultdict(list)
def timed(name, f):
    @functools.wraps(f)
    def run(*a, **k):
        started = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            times[name].append((time.perf_counter() - started) * 1e3)
    return run
def timed_async(name, f):
    @functools.wraps(f)
    async def run(*a, **k):
        started = time.perf_counter()
        try:
            return await f(*a, **k)
        finally:
            times[name].append((time.perf_counter() - started) * 1e3)
    return run
from starlette.requests import Request
from uvicorn.protocols.http import httptools_impl
from feedback_loop.serving import http, model, v1_json, v2_binary
v1_json.loads = timed("decode", v1_json.loads)
v2_binary.read = timed("decode", v2_binary.read)
model.SignatureRunner.__call__ = timed("model_call", model.SignatureRunner.__call__)
http._json = timed("encode_answer", http._json)
Request.body = timed_async("receive_body", Request.body)
httptools_impl.RequestResponseCycle.run_asgi = timed_async("app", httptools_impl.RequestResponseCycle.run_asgi)
def dump(*_):
    with open(os.environ["PHASES_OUT"], "w") as out:
        json.dump(times, out)
    times.clear()
signal.signal(signal.SIGUSR1, dump)
from feedback_loop import cli
sys.argv = ["feedback-loop", *sys.argv[1:]]
cli.main()
'''


def server_phases(server: ModelServerProcess, out: Path) -> dict[str, list[float]]:
    """What the server's timers measured since the last call."""
    out.unlink(missing_ok=True)
    os.kill(server.process.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not out.exists() or not out.stat().st_size:
        if time.monotonic() > deadline:
            raise TimeoutError("the timed server wrote no phases")
        time.sleep(0.05)
    time.sleep(0.1)  # written whole
    return json.loads(out.read_text())


def after_decode(runner: object, decode: object, body: bytes, x: np.ndarray, n: int) -> list[float]:
    """The model's call right after decoding the body in process, as the server calls it."""
    times = []
    for _ in range(n):
        decode(body)
        started = time.perf_counter()
        runner(x)
        times.append((time.perf_counter() - started) * 1000)
    return times


def p50(samples: list[float]) -> float:
    return round(statistics.median(samples), 3) if samples else 0.0


def phase_row(served: list[float], limit: list[float], decoded: list[float], phases: dict[str, float]) -> dict[str, float]:
    row = {"client_p50_ms": p50(served), "in_process_p50_ms": p50(limit), "in_process_after_decode_p50_ms": p50(decoded),
           "overhead_ms": round(p50(served) - p50(limit), 3), **{f"{name}_ms": phases.get(name, 0.0) for name in PHASES}}
    row["model_call_over_in_process_ms"] = round(row["model_call_ms"] - row["in_process_p50_ms"], 3)
    row["rest_of_app_ms"] = round(row["app_ms"] - sum(row[f"{name}_ms"] for name in PHASES if name != "app"), 3)
    row["outside_app_ms"] = round(row["client_p50_ms"] - row["app_ms"], 3)
    return row


PHASES = ("receive_body", "decode", "model_call", "encode_answer", "app")
PARTS = ("receive_body_ms", "decode_ms", "model_call_over_in_process_ms", "encode_answer_ms", "rest_of_app_ms", "outside_app_ms")


def main() -> None:
    from feedback_loop.serving import v1_json, v2_binary as v2
    from feedback_loop.serving.model import SignatureRunner

    rng = np.random.default_rng(0)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        version = export(Path(scratch))
        runner = SignatureRunner(version)
        db = StoppablePostgres()
        outs = {mode: Path(scratch) / f"phases-{mode}.json" for mode in MODES}
        servers = {mode: ModelServerProcess(version, "bench", entry=["-c", TIMED_SERVER],
                                            env={"PHASES_OUT": str(outs[mode]), **({"DATABASE_URL": db.dsn} if mode == "capture_on" else {})})
                   for mode in MODES}
        try:
            for server in servers.values():
                server.wait_ready()
            for batch in (1, 32):
                x = rng.uniform(0, 1, size=(batch, 28, 28, 1)).astype(np.float32)
                body = json.dumps({"instances": x.reshape(batch, -1).tolist()}).encode()
                binary, headers = v2_binary(x)
                decoders = {"v1": v1_json.loads,
                            "v2_binary": lambda b, h=headers: v2.read(b, h["Inference-Header-Content-Length"], "bench")}
                for protocol, path, data, head in (("v1", "/v1/models/bench:predict", body, JSON),
                                                   ("v2_binary", "/v2/models/bench/infer", binary, headers)):
                    served: dict[str, list[float]] = {mode: [] for mode in MODES}
                    for mode, server in servers.items():
                        latencies(server.port, path, data, 50, head)  # warm
                        server_phases(server, outs[mode])  # and forget
                    limit, decoded = [], []
                    for turn in range(SLICES):  # ABBA: the machine's drift falls on both modes alike
                        limit += in_process(runner, x, REQUESTS // SLICES)
                        decoded += after_decode(runner, decoders[protocol], data, x, REQUESTS // SLICES)
                        for mode in (MODES if turn % 2 == 0 else MODES[::-1]):
                            served[mode] += latencies(servers[mode].port, path, data, REQUESTS // SLICES, head)[0]
                    for mode, server in servers.items():
                        phases = {name: p50(samples) for name, samples in server_phases(server, outs[mode]).items()}
                        row = phase_row(served[mode], limit, decoded, phases)
                        results.setdefault(mode, {})[f"batch{batch}_{protocol}"] = row
                        print(f"{mode} batch {batch} {protocol}: {json.dumps(row)}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
            db.close()
    summary: dict[str, object] = {"benchmark": "serve_phases"}
    for mode in MODES:
        by = results[mode]
        for protocol in ("v1", "v2_binary"):
            one, many = by[f"batch1_{protocol}"], by[f"batch32_{protocol}"]
            summary[f"{mode}_{protocol}"] = {
                "batch1_overhead_ms": one["overhead_ms"], "batch32_overhead_ms": many["overhead_ms"],
                "batch32_overhead_ratio": round(many["overhead_ms"] / max(one["overhead_ms"], 1e-3), 2),
                "batch32_extra_over_batch1": {k: round(many[k] - one[k], 3) for k in PARTS},
            }
        one, many = by["batch1_v1"], by["batch32_v1"]
        receive_and_decode = (many["receive_body_ms"] + many["decode_ms"]) - (one["receive_body_ms"] + one["decode_ms"])
        summary[f"{mode}_v1"]["ratio_floor_from_receive_and_decode"] = round(1 + receive_and_decode / max(one["overhead_ms"], 1e-3), 2)
    summary["by_mode"] = results
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
