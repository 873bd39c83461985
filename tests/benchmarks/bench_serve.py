"""Serving benchmark: our model server (KServe's ModelServer + SavedModelPredictor) under load
from a client on 127.0.0.1, batch 1 and 32, against the same SavedModel signature called in
process (the limit) and a naive server calling `model.predict` per request.

Prints one JSON object as its last line: p50_ms, p99_ms, rps (ours, batch 1), p50_overhead_ms
(ours minus in-process, batch 1), speedup_vs_naive (naive p50 / ours p50, batch 1), and the
figures per batch size. Goal: p50_overhead_ms <= 2, speedup_vs_naive >= 5.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: serving_helpers

import numpy as np  # noqa: E402

from serving_helpers import ModelServerProcess, free_port  # noqa: E402

from feedback_loop.layout import COMPLETE_MARKER  # noqa: E402

REQUESTS = {1: 400, 32: 150}
LOAD_SECONDS = 4.0
CLIENTS = 4

NAIVE_SERVER = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import numpy as np, keras
model = keras.models.load_model(sys.argv[1])
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        x = np.asarray(body["instances"], dtype=np.float32).reshape([-1, 28, 28, 1])
        out = json.dumps({"predictions": model.predict(x, verbose=0).tolist()}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
'''


def export(root: Path) -> Path:
    """A small image CNN like the demo's (untrained: latency does not depend on the weights),
    exported as train_model exports: `serving_default` {pixels} -> {probabilities}."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((28, 28, 1), name="pixels")
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="probabilities")(x))
    version = root / "bench-v1"
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda pixels: {"probabilities": model(pixels, training=False)},
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="pixels")],
    )
    archive.write_out(str(version / "saved_model" / "1"), verbose=False)
    model.save(version / "model.keras")
    (version / "lineage.json").write_text(json.dumps({"version": "bench-v1", "classes": ["cat", "dog"], "input_name": "pixels"}))
    (version / COMPLETE_MARKER).write_bytes(b"")  # as publishing leaves it: `serve` refuses a version without it
    return version


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def in_process(version: Path, x: np.ndarray, n: int) -> list[float]:
    from feedback_loop.serving.model import SignatureRunner

    runner = SignatureRunner(version)
    for _ in range(20):
        runner(x)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        runner(x)
        times.append((time.perf_counter() - started) * 1000)
    return times


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> None:
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    if answer.status != 200:
        raise RuntimeError(f"{path}: HTTP {answer.status}")


def latencies(port: int, path: str, body: bytes, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(10):
        post(conn, path, body)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        post(conn, path, body)
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return times


def throughput(port: int, path: str, body: bytes) -> float:
    done = [0] * CLIENTS
    deadline = time.perf_counter() + LOAD_SECONDS

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            post(conn, path, body)
            done[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def wait_http(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the naive server exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("naive server not up")


def main() -> None:
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        version = export(Path(scratch))
        ours = ModelServerProcess(version, "bench").wait_ready()
        naive_port = free_port()
        naive = subprocess.Popen([sys.executable, "-c", NAIVE_SERVER, str(version / "model.keras"), str(naive_port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(naive_port, naive)
            for batch, n in REQUESTS.items():
                x = rng.uniform(0, 1, size=(batch, 28, 28, 1)).astype(np.float32)
                body = json.dumps({"instances": x.reshape(batch, -1).tolist()}).encode()
                limit = in_process(version, x, n)
                served = latencies(ours.port, "/v1/models/bench:predict", body, n)
                slow = latencies(naive_port, "/", body, max(30, n // 5))
                ours_p50, ours_p99 = percentiles(served)
                limit_p50, _ = percentiles(limit)
                naive_p50, naive_p99 = percentiles(slow)
                results[f"batch{batch}"] = {
                    "p50_ms": round(ours_p50, 3), "p99_ms": round(ours_p99, 3),
                    "rps": round(throughput(ours.port, "/v1/models/bench:predict", body), 1),
                    "in_process_p50_ms": round(limit_p50, 3),
                    "p50_overhead_ms": round(ours_p50 - limit_p50, 3),
                    "naive_p50_ms": round(naive_p50, 3), "naive_p99_ms": round(naive_p99, 3),
                    "naive_rps": round(throughput(naive_port, "/", body), 1),
                    "speedup_vs_naive": round(naive_p50 / ours_p50, 2),
                }
                print(f"batch {batch}: {json.dumps(results[f'batch{batch}'])}", flush=True)
        finally:
            ours.stop()
            naive.terminate()
            naive.wait(10)
    one = results["batch1"]
    summary = {
        "benchmark": "serve", "model": "demo image CNN (28x28x1 -> 2 classes), SavedModel serving_default",
        "client": f"http.client keep-alive on 127.0.0.1, v1 JSON; rps with {CLIENTS} clients for {LOAD_SECONDS:g} s",
        "p50_ms": one["p50_ms"], "p99_ms": one["p99_ms"], "rps": one["rps"],
        "p50_overhead_ms": one["p50_overhead_ms"], "speedup_vs_naive": one["speedup_vs_naive"],
        "goal_met": one["p50_overhead_ms"] <= 2 and one["speedup_vs_naive"] >= 5,
        "by_batch": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
