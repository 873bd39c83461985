"""Prediction capture: the model server's answers and feedback, written to the feedback store
off the request path.

A request only appends its batch to a bounded queue (a lock, a list append); one writer
thread turns queued batches into rows and inserts them, `batch_rows` at a time. The rows of
predictions (image statistics, CSV text) are built in a helper process: built in the writer
thread, their Python held the server's GIL for 7-9 % of a saturated server's time at batch 1
(bench serve), and longer per request at batch 32.

A slow or dead database never fails nor slows a request: while it is away the writer keeps
its batch and retries; the queue fills up, and what arrives once it is full is dropped and
counted, row by row. When the database answers again the writer drains the queue.
Capture is off without a DSN.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feedback_loop.feedback import capture as store_capture

log = logging.getLogger(__name__)

PREDICTIONS, FEEDBACK = "predictions", "feedback"


@dataclass(frozen=True)
class CaptureConfig:
    """How the model server captures; `dsn` None or "" switches capture off."""

    dsn: str | None = None
    queue_rows: int = 10_000  # predictions and answers waiting, at most; more are dropped and counted
    batch_rows: int = 500  # rows per INSERT
    linger_s: float = 0.2  # how long the writer lets a batch gather once rows are queued
    retry_s: float = 0.5  # pause between attempts while the database is away
    build_process: bool = True  # build prediction rows in a helper process, off the server's GIL
    build_timeout_s: float = 30.0  # a helper that takes longer for one batch (~20 ms is usual) is given up


@dataclass
class Pending:
    """One request's rows, as queued: its builder makes the table rows in the writer thread."""

    kind: str
    rows: int
    payload: Any


def rows_as_given(payloads: list[list[Any]]) -> list[Any]:
    """The builder of payloads that are already table rows (feedback answers)."""
    return [row for payload in payloads for row in payload]


class Capture:
    """The bounded queue and its writer thread. `offer` is what the request path calls."""

    def __init__(self, config: CaptureConfig, *, builders: dict[str, Callable[[list[Any]], list[Any]]] | None = None,
                 writers: dict[str, Callable[[Any, list[Any]], int]] | None = None, connect: Callable[[str], Any] | None = None) -> None:
        from feedback_loop.serving.records import pack, packed_prediction_csv, prediction_csv

        self.config = config
        # Payload -> table rows, a batch at a time: predictions are `records.Answered` requests, built into CSV.
        self._builders = {PREDICTIONS: prediction_csv, FEEDBACK: rows_as_given, **(builders or {})}
        # The default prediction builder runs in the helper process: kind -> (what packs the payloads
        # here for the trip, the module function that builds their rows there).
        self._remote = {PREDICTIONS: (pack, packed_prediction_csv)} if config.build_process and PREDICTIONS not in (builders or {}) else {}
        self._pool: Any = None
        self._writers = writers or {PREDICTIONS: store_capture.write_predictions, FEEDBACK: store_capture.write_feedback}
        self._connect = connect or store_capture.connect
        self._queue: deque[Pending] = deque()
        self._queued = 0  # rows in the queue
        self._lock = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        # Exact counts, by kind: rows offered, written, dropped because the queue was full.
        self.offered = {PREDICTIONS: 0, FEEDBACK: 0}
        self.written = {PREDICTIONS: 0, FEEDBACK: 0}
        self.dropped = {PREDICTIONS: 0, FEEDBACK: 0}
        self.write_errors = 0
        self.failed_rows = 0  # rows that could never be written (the database refused them)
        self.database_up = False

    @property
    def enabled(self) -> bool:
        return bool(self.config.dsn)

    def depth(self) -> int:
        return self._queued

    def start(self) -> Capture:
        if self.enabled and self._thread is None:
            if self._remote:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                try:  # spawn: a fork of a process running TensorFlow's threads is not safe
                    self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
                except (OSError, ImportError) as err:  # e.g. no /dev/shm for its semaphores
                    log.warning("capture: no row builder process (%s); building rows in the server's process", _cut(err))
            self._thread = threading.Thread(target=self._run, name="prediction-capture", daemon=True)
            self._thread.start()
        return self

    def offer(self, kind: str, rows: int, payload: Any) -> bool:
        """Queues one request's `rows` (its payload, built into table rows later); False (and counted
        as dropped) when the queue is full or capture is off."""
        with self._lock:
            self.offered[kind] += rows
            if not self.enabled or self._stop or self._queued + rows > self.config.queue_rows:
                self.dropped[kind] += rows
                return False
            self._queue.append(Pending(kind, rows, payload))
            self._queued += rows
            if len(self._queue) == 1:  # wake the writer only when it waits for rows: a wake per request costs them CPU
                self._lock.notify()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Writes what is queued if the database allows within `timeout`, then stops the writer."""
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def counts(self) -> dict[str, Any]:
        return {"offered": dict(self.offered), "written": dict(self.written), "dropped": dict(self.dropped),
                "queued": self._queued, "write_errors": self.write_errors, "failed_rows": self.failed_rows,
                "database_up": self.database_up}

    # --- the writer thread ---------------------------------------------------------------------

    def _take(self) -> list[Pending]:
        """The next batch: waits for rows, then lingers so that a batch gathers (one transaction per
        request would cost the requests the CPU the writer spends per transaction)."""
        with self._lock:
            while not self._queue and not self._stop:
                self._lock.wait(timeout=1.0)
            if not self._queue:
                return []
            linger = self._queued < self.config.batch_rows and not self._stop
        if linger:
            time.sleep(self.config.linger_s)
        with self._lock:
            taken, rows = [], 0
            while self._queue and (not taken or rows + self._queue[0].rows <= self.config.batch_rows):
                item = self._queue.popleft()
                taken.append(item)
                rows += item.rows
            return taken

    def _build(self, kind: str, payloads: list[Any]) -> Any:
        """The table rows of `payloads`: in the helper process when it serves this kind, else here.
        A helper that died or hangs is not restarted: the rows are built here from then on, and it says so."""
        from concurrent.futures import TimeoutError as BuildTimeout
        from concurrent.futures.process import BrokenProcessPool

        pool = self._pool
        if kind in self._remote and pool is not None:
            try:
                packed, build = self._remote[kind]
                return pool.submit(build, packed(payloads)).result(timeout=self.config.build_timeout_s)
            except (BrokenProcessPool, BuildTimeout) as err:
                why = _cut(err) if str(err) else f"no answer in {self.config.build_timeout_s:g} s"
                log.warning("capture: the row builder process stopped (%s); building rows in the server's process", why)
                self._pool = None
                for process in list(getattr(pool, "_processes", {}).values()):  # a hung helper would hold the exit
                    process.kill()
                pool.shutdown(wait=False, cancel_futures=True)
        return self._builders[kind](payloads)

    def _release(self, rows: int) -> None:
        with self._lock:
            self._queued -= rows

    def _run(self) -> None:
        conn = None
        deadline: float | None = None
        while True:
            batch = self._take()
            if not batch:
                break
            by_kind: dict[str, list[Any]] = {}
            for kind in {item.kind for item in batch}:
                items = [item for item in batch if item.kind == kind]
                try:
                    by_kind[kind] = self._build(kind, [item.payload for item in items])
                except Exception as err:  # rows that cannot be built are lost, and counted as such
                    self.failed_rows += sum(item.rows for item in items)
                    log.warning("capture: %d %s rows could not be built: %s", sum(item.rows for item in items), kind, _cut(err))
            while by_kind:
                if self._stop:
                    deadline = deadline or time.monotonic() + 5.0
                    if time.monotonic() > deadline:
                        self.failed_rows += sum(len(rows) for rows in by_kind.values())
                        break
                try:
                    conn = conn or self._connect(self.config.dsn)
                    for kind in list(by_kind):
                        self.written[kind] += self._writers[kind](conn, by_kind[kind])
                        del by_kind[kind]
                    if not self.database_up:
                        log.info("capture: the feedback database answers; writing")
                    self.database_up = True
                except Exception as err:  # kept and retried: the queue, not the request, absorbs an outage
                    self.write_errors += 1
                    if not store_capture.transient(err):  # the database answered, and said no: retrying cannot help
                        self.failed_rows += sum(len(rows) for rows in by_kind.values())
                        log.error("capture: %s; %d rows not written", _cut(err), sum(len(r) for r in by_kind.values()))
                        by_kind = {}
                        break
                    if self.database_up or self.write_errors == 1:
                        log.warning("capture: the feedback database is unavailable (%s); retrying every %.1f s", _cut(err), self.config.retry_s)
                    self.database_up = False
                    conn = _close(conn)
                    time.sleep(self.config.retry_s)
            self._release(sum(item.rows for item in batch))
        _close(conn)


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:  # already broken
            pass
    return None


def _cut(err: Exception, limit: int = 300) -> str:
    """One line, no DSN: the driver's first line, cut short."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


class CaptureCollector:
    """The capture's counts on /metrics, read when Prometheus scrapes (nothing to update per request)."""

    def __init__(self, capture: Capture, model_name: str) -> None:
        self.capture, self.model_name = capture, model_name

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts = self.capture.counts()
        captured = CounterMetricFamily("feedback_loop_captured", "Rows written to the feedback store", labels=["model_name", "kind"])
        dropped = CounterMetricFamily(
            "feedback_loop_capture_dropped", "Rows not written: queue full, capture off, or refused by the database",
            labels=["model_name", "kind", "reason"],
        )
        for kind in (PREDICTIONS, FEEDBACK):
            captured.add_metric([self.model_name, kind], counts["written"][kind])
            dropped.add_metric([self.model_name, kind, "queue_full" if self.capture.enabled else "capture_off"], counts["dropped"][kind])
        dropped.add_metric([self.model_name, "any", "refused"], counts["failed_rows"])
        depth = GaugeMetricFamily("feedback_loop_capture_queue_rows", "Rows waiting to be written", labels=["model_name"])
        depth.add_metric([self.model_name], counts["queued"])
        up = GaugeMetricFamily("feedback_loop_capture_database_up", "1 while the last write succeeded", labels=["model_name"])
        up.add_metric([self.model_name], 1.0 if counts["database_up"] else 0.0)
        errors = CounterMetricFamily("feedback_loop_capture_write_errors", "Failed write attempts (retried)", labels=["model_name"])
        errors.add_metric([self.model_name], counts["write_errors"])
        return [captured, dropped, depth, up, errors]
