"""Prediction capture and the model server's HTTP additions, without TensorFlow: the bounded
queue and its writer against a real PostgreSQL (stopped and started again mid-run), the
feedback endpoint, the body limit and the short error answers on KServe's real FastAPI app."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import pytest
from fastapi import Request

from serving_helpers import StoppablePostgres

from feedback_loop.feedback.capture import FeedbackRow, PredictionRow
from feedback_loop.serving import http
from feedback_loop.serving.capture import FEEDBACK, PREDICTIONS, Capture, CaptureConfig, rows_as_given
from feedback_loop.serving.records import SUMMARY_CHUNK, Answered, image_summary, prediction_rows, prediction_rows_many


def rows_of(n: int, prefix: str, version: str = "v1") -> list[PredictionRow]:
    now = datetime.now(timezone.utc)
    return [PredictionRow(f"{prefix}-{i}", now, "m", version, {"f0": float(i), "city": "Lyon"}, "cat", None, 0.9, 1.5, None, True)
            for i in range(n)]


def offer(capture: Capture, n: int, prefix: str) -> bool:
    return capture.offer(PREDICTIONS, n, rows_of(n, prefix))


def capture_of(**config: Any) -> Capture:
    """A capture whose prediction payloads are table rows already (the server's are answered requests)."""
    return Capture(CaptureConfig(**config), builders={PREDICTIONS: rows_as_given}).start()


def wait_for(condition: Any, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met")
        time.sleep(0.02)
    return time.monotonic() - started


def fetch(dsn: str, query: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


def test_capture_writes_every_row_in_batches(database_url: str) -> None:
    capture = capture_of(dsn=database_url, batch_rows=100)
    try:
        for i in range(30):
            assert offer(capture, 7, f"r{i}")
        wait_for(lambda: capture.written[PREDICTIONS] == 210)
        capture.offer(FEEDBACK, 1, [FeedbackRow("r0-0", datetime.now(timezone.utc), False, "dog", "wrong")])
        wait_for(lambda: capture.written[FEEDBACK] == 1)
    finally:
        capture.stop()
    assert fetch(database_url, "SELECT count(*), count(DISTINCT id), min(model_version) FROM predictions") == [(210, 210, "v1")]
    (features,) = fetch(database_url, "SELECT features FROM predictions WHERE id = 'r3-2'")[0]
    assert features == {"f0": 2.0, "city": "Lyon"}
    assert fetch(database_url, "SELECT prediction_id, is_correct, corrected_label, comment FROM feedback") == [("r0-0", False, "dog", "wrong")]
    assert capture.counts()["dropped"] == {PREDICTIONS: 0, FEEDBACK: 0} and capture.depth() == 0


def test_prediction_rows_are_built_in_a_helper_process_and_here_once_it_is_gone(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The server's answered requests become rows in the helper process (off the server's GIL); a
    helper killed mid-run loses nothing: the next batches are built in the server's process."""
    import os
    import signal

    def images(prefix: str, n: int) -> Answered:
        pixels = np.random.default_rng(n).uniform(0, 255, size=(n, 28, 28, 1)).astype(np.float32)
        return Answered(datetime.now(timezone.utc), [f"{prefix}-{i}" for i in range(n)], "m", "v1", "classification", pixels, {}, True,
                        np.tile(np.array([[0.3, 0.7]], np.float32), (n, 1)), ["cat", "dog"], 1.0, None, True)

    capture = Capture(CaptureConfig(dsn=database_url, linger_s=0.05)).start()
    try:
        assert capture.offer(PREDICTIONS, 3, images("a", 3))
        wait_for(lambda: capture.written[PREDICTIONS] == 3, timeout=60)  # the helper starts on the first batch
        (helper,) = capture._pool._processes.values()
        assert helper.pid != os.getpid() and helper.is_alive()
        os.kill(helper.pid, signal.SIGKILL)
        helper.join(10)
        with caplog.at_level(logging.WARNING, logger="feedback_loop.serving.capture"):
            assert capture.offer(PREDICTIONS, 2, images("b", 2))
            wait_for(lambda: capture.written[PREDICTIONS] == 5)
            assert capture.offer(PREDICTIONS, 4, images("c", 4))
            wait_for(lambda: capture.written[PREDICTIONS] == 9)
    finally:
        capture.stop()
    assert "the row builder process stopped" in caplog.text and capture._pool is None
    assert capture.failed_rows == 0 and capture.counts()["dropped"][PREDICTIONS] == 0
    rows = fetch(database_url, "SELECT id, predicted_label, features->>'ink' IS NOT NULL FROM predictions ORDER BY id")
    assert [r[0] for r in rows] == ["a-0", "a-1", "a-2", "b-0", "b-1", "c-0", "c-1", "c-2", "c-3"]
    assert all(label == "dog" and has_ink for _, label, has_ink in rows)


def test_a_hung_row_builder_is_given_up_and_nothing_is_lost(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    import os
    import signal

    pixels = np.zeros((2, 28, 28, 1), np.float32)

    def answered(prefix: str) -> Answered:
        return Answered(datetime.now(timezone.utc), [f"{prefix}-0", f"{prefix}-1"], "m", "v1", "classification", pixels, {}, True,
                        np.array([[0.9, 0.1], [0.2, 0.8]], np.float32), ["cat", "dog"], 1.0, None, True)

    capture = Capture(CaptureConfig(dsn=database_url, linger_s=0.05, build_timeout_s=2)).start()
    try:
        assert capture.offer(PREDICTIONS, 2, answered("a"))
        wait_for(lambda: capture.written[PREDICTIONS] == 2, timeout=60)
        (helper,) = capture._pool._processes.values()
        os.kill(helper.pid, signal.SIGSTOP)  # alive, never answers
        with caplog.at_level(logging.WARNING, logger="feedback_loop.serving.capture"):
            assert capture.offer(PREDICTIONS, 2, answered("b"))
            wait_for(lambda: capture.written[PREDICTIONS] == 4)
        helper.join(10)
        assert not helper.is_alive()  # killed, not left stopped
    finally:
        capture.stop()
    assert "no answer in 2 s" in caplog.text and capture.failed_rows == 0
    assert [r[0] for r in fetch(database_url, "SELECT id FROM predictions ORDER BY id")] == ["a-0", "a-1", "b-0", "b-1"]


def test_texts_are_stored_as_given_and_only_none_is_null(database_url: str) -> None:
    """The COPY's CSV: a text of exactly "\\N", an empty text, quotes, commas and new lines come
    back as sent; only None is NULL."""
    from feedback_loop.feedback.capture import connect, write_predictions

    now = datetime.now(timezone.utc)
    odd = [PredictionRow("t-1", now, "m", 'v "1",\nsecond line', {"note": "\\N"}, "\\N", None, 0.5, 1.0, "", False),
           PredictionRow("t-2", now, "m", "v1", {}, None, 41.5, None, 2.0, None, True)]
    conn = connect(database_url)
    try:
        assert write_predictions(conn, odd) == 2
    finally:
        conn.close()
    got = fetch(database_url, "SELECT id, model_version, features, predicted_label, predicted_value, confidence, user_id, consent"
                              " FROM predictions WHERE id LIKE 't-%' ORDER BY id")
    assert got == [("t-1", 'v "1",\nsecond line', {"note": "\\N"}, "\\N", None, 0.5, "", False),
                   ("t-2", "v1", {}, None, 41.5, None, None, True)]


def test_a_batch_written_again_stores_each_prediction_once(database_url: str) -> None:
    """A batch retried after a commit whose answer was lost repeats its ids: COPY straight into
    the table refuses it, and the staging path writes only the ids not there yet."""
    from feedback_loop.feedback.capture import connect, write_predictions

    now = datetime.now(timezone.utc)
    first = [PredictionRow(f"again-{i}", now, "m", "v1", {"x": float(i)}, "cat", None, 0.5, 1.0, None, True) for i in range(3)]
    retried = first + [PredictionRow("again-3", now, "m", "v1", {"x": 3.0}, "dog", None, 0.9, 1.0, None, True)]
    conn = connect(database_url)
    try:
        assert write_predictions(conn, first) == 3
        assert write_predictions(conn, retried) == 4
        assert write_predictions(conn, retried) == 4
    finally:
        conn.close()
    assert fetch(database_url, "SELECT id, predicted_label FROM predictions WHERE id LIKE 'again-%' ORDER BY id") == [
        ("again-0", "cat"), ("again-1", "cat"), ("again-2", "cat"), ("again-3", "dog")]


def test_capture_off_drops_and_counts() -> None:
    capture = capture_of(dsn=None)
    assert not capture.enabled and not offer(capture, 3, "x")
    assert capture.counts()["dropped"][PREDICTIONS] == 3 and capture.depth() == 0


def test_rows_the_database_refuses_are_counted_not_retried_forever(database_url: str) -> None:
    capture = capture_of(dsn=database_url)
    try:
        bad = [PredictionRow("bad", datetime.now(timezone.utc), "m", "v1", {}, None, None, None, 1.0, None, True)]
        bad = [bad[0].__class__(**{**bad[0].__dict__, "model_version": None})]  # NOT NULL column
        capture.offer(PREDICTIONS, 1, bad)
        wait_for(lambda: capture.failed_rows == 1)
        assert offer(capture, 2, "good")
        wait_for(lambda: capture.written[PREDICTIONS] == 2)
    finally:
        capture.stop()


@pytest.mark.slow
def test_a_database_outage_never_blocks_and_its_loss_is_counted_exactly() -> None:
    """Requests keep offering while PostgreSQL is stopped: nothing blocks, the queue fills, what
    does not fit is dropped and counted, and capture resumes once the database is back."""
    db = StoppablePostgres()
    capture = capture_of(dsn=db.dsn, queue_rows=300, retry_s=0.2)
    slowest = [0.0]
    stop = threading.Event()
    sent = [0]

    def requests() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            offer(capture, 3, f"q{sent[0]}")
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            sent[0] += 1
            time.sleep(0.005)

    client = threading.Thread(target=requests)
    try:
        client.start()
        wait_for(lambda: capture.written[PREDICTIONS] > 100)
        db.stop()
        wait_for(lambda: capture.dropped[PREDICTIONS] > 0, timeout=30)  # the queue filled during the outage
        assert not capture.database_up
        db.start()
        back = time.monotonic()
        written_then = capture.written[PREDICTIONS]
        wait_for(lambda: capture.written[PREDICTIONS] > written_then + 300, timeout=15)
        resumed = time.monotonic() - back
        stop.set()
        client.join()
        wait_for(lambda: capture.depth() == 0)
    finally:
        stop.set()
        capture.stop()
    try:
        counts = capture.counts()
        offered, dropped = counts["offered"][PREDICTIONS], counts["dropped"][PREDICTIONS]
        assert offered == 3 * sent[0] and counts["failed_rows"] == 0
        assert db.count() == offered - dropped  # every prediction not counted as dropped is in the table
        assert dropped > 0 and dropped % 3 == 0
        assert resumed < 5.0, f"capture resumed {resumed:.1f} s after the database returned"
        assert slowest[0] < 0.05, f"an offer took {slowest[0] * 1000:.1f} ms"
    finally:
        db.close()


def test_image_summary_matches_the_demos_statistics() -> None:
    from feedback_loop.demo.images import summary_features

    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    ours = image_summary(images.astype(np.float32))
    for name, values in summary_features(images).items():
        np.testing.assert_allclose(ours[name], values, rtol=1e-5, atol=1e-6)


def test_image_summary_is_the_padded_laplacians_to_the_last_bit_for_any_shape() -> None:
    """The in-place Laplacian against the plain np.pad form (what it replaced, and what scipy
    computes): equal bit for bit, edges and one-pixel sides included, across the chunking."""
    rng = np.random.default_rng(2)
    for shape in [(3, 1, 1), (2, 1, 5), (2, 4, 1), (4, 28, 28, 1), (2, 31, 17), (SUMMARY_CHUNK + 7, 9, 9)]:
        pixels = rng.integers(0, 256, size=shape).astype(np.float32)
        x = pixels.reshape(shape[:3]) / np.float32(255)
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="symmetric")
        lap = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:] - 4 * x
        expected = {"brightness": x.mean(axis=(1, 2)), "contrast": x.std(axis=(1, 2)), "sharpness": np.abs(lap).mean(axis=(1, 2)),
                    "ink": (x > 0.5).mean(axis=(1, 2))}
        ours = image_summary(pixels)
        for name, values in expected.items():
            np.testing.assert_array_equal(ours[name], values, err_msg=f"{name} of {shape}")
            assert ours[name].dtype == values.dtype


def test_prediction_rows_hold_summaries_never_pixels() -> None:
    pixels = np.random.default_rng(1).uniform(0, 255, size=(2, 28, 28)).astype(np.float32)
    answered = Answered(datetime.now(timezone.utc), ["a-0", "a-1"], "m", "v3", "classification", {"pixels": pixels}, {}, True,
                        np.array([[0.2, 0.8], [0.7, 0.3]], np.float32), ["cat", "dog"], 2.5, "digest", False)
    rows = prediction_rows(answered)
    assert [(r.id, r.predicted_label, round(r.confidence, 3), r.consent) for r in rows] == [("a-0", "dog", 0.8, False), ("a-1", "cat", 0.7, False)]
    assert set(rows[0].features) == {"brightness", "contrast", "sharpness", "ink"}
    # The writer computes the statistics of many requests at once: the same rows as one by one.
    more = [Answered(answered.created_at, [f"c{i}-0"], "m", "v3", "classification", {"pixels": pixels[i:i + 1] * 0.5}, {}, True,
                     answered.outputs[i:i + 1], ["cat", "dog"], 1.0, None, True) for i in range(2)]
    batch = [answered, *more]
    assert prediction_rows_many(batch) == [row for a in batch for row in prediction_rows(a)]
    tabular = Answered(datetime.now(timezone.utc), ["b-0"], "m", "v3", "regression",
                       {"features": np.array([[1.0, float("nan")]], np.float32), "categories": np.array([["Lyon"]], object)},
                       {"features": ["age", "income"], "categories": ["city"]}, False, np.array([[41.5]], np.float32), [], 1.0, None, True)
    (row,) = prediction_rows(tabular)
    assert row.features == {"age": 1.0, "income": None, "city": "Lyon"} and row.predicted_value == 41.5 and row.predicted_label is None


def test_the_writers_csv_is_the_row_paths_csv_for_every_family_and_odd_value() -> None:
    """prediction_csv builds the COPY text a request at a time; it must be the text the row path
    (a PredictionRow per row, JSON-encoded features) gives, byte for byte."""
    from feedback_loop.feedback.capture import predictions_csv
    from feedback_loop.serving.records import prediction_csv

    rng = np.random.default_rng(2)
    now = datetime.now(timezone.utc)
    nan, inf = float("nan"), float("inf")

    def answered(ids: list[str], task: str, inputs: Any, columns: dict, image: bool, outputs: Any, classes: list[str] = [],
                 user: str | None = None, consent: bool = True) -> Answered:
        return Answered(now, ids, "m", 'v "3", b', task, inputs, columns, image, np.asarray(outputs, np.float32), classes, 2.5, user, consent)

    odd_classes = ['a "cat"', "dog, big"]
    batch = [
        answered(["i-0"], "classification", rng.uniform(0, 255, (1, 28, 28, 1)).astype(np.float32), {}, True, [[0.2, 0.8]], odd_classes),
        answered(["i2-0", "i2-1", "i2-2"], "classification", {"pixels": rng.uniform(0, 255, (3, 28, 28)).astype(np.float32)}, {}, True,
                 [[0.6, 0.4], [nan, 0.1], [0.5, 0.5]], odd_classes, user='u"1', consent=False),
        answered(["t-0", "t-1"], "classification", np.array([[1.5, nan], [-0.0, 1e-7]], np.float32),
                 {"features": ['x "1"', "100%"], "categories": []}, False, [[0.1, 0.9], [0.9, 0.1]], ["no", "yes"]),
        answered(["c-0"], "regression", {"features": np.array([[3.0]], np.float32), "categories": np.array([["Ly\"on"]], object)},
                 {"features": ["age"], "categories": ["city"]}, False, [inf]),
        answered(["r-0", "r-1"], "ranking", {"user": np.array([[7.0], [8.0]], np.float32), "item": np.array([[1.0], [2.0]], np.float32)},
                 {}, False, [[0.25], [nan]]),
        answered(["p-0"], "regression", np.array([[1.0, 2.0]], np.float32), {"features": [], "categories": []}, False, [[4.0]]),
    ]
    fast = prediction_csv(batch)
    assert fast.count == 10 and len(fast) == 10
    assert fast.text == predictions_csv(prediction_rows_many(batch)).text


def test_packed_requests_build_the_same_rows_after_the_trip_to_the_helper() -> None:
    """What the writer sends the row builder process: runs of alike requests packed into a few
    arrays, pickled, unpacked there. The CSV must be the unpacked requests' byte for byte."""
    import pickle

    from feedback_loop.serving.records import Packed, pack, packed_prediction_csv, prediction_csv

    rng = np.random.default_rng(5)
    now = datetime.now(timezone.utc)
    # A server's requests share its model's classes and column names (the objects themselves).
    classes, no_classes, columns, no_columns = ["cat", "dog"], [], {"features": ["age", "income"], "categories": ["city"]}, {}

    def image(i: int, shape: tuple = (1, 28, 28, 1), version: str = "v1", user: str | None = None) -> Answered:
        return Answered(now, [f"i{i}-{j}" for j in range(shape[0])], "m", version, "classification",
                        rng.uniform(0, 255, shape).astype(np.float32), no_columns, True,
                        rng.dirichlet([1, 1], shape[0]).astype(np.float32), classes, 1.0 + i, user, i % 2 == 0)

    def tabular(i: int) -> Answered:
        return Answered(now, [f"t{i}-0", f"t{i}-1"], "m", "v1", "regression",
                        {"features": rng.normal(size=(2, 2)).astype(np.float32), "categories": np.array([["Lyon"], ['Pa"ris']], object)},
                        columns, False, rng.normal(size=(2, 1)).astype(np.float32), no_classes, 3.0, "u", True)

    batch = [image(0), image(1, user="a"), image(2, shape=(3, 28, 28, 1)),  # one run: the rows per request may differ
             image(3, version="v2"),  # another version: a run of its own
             image(4, shape=(1, 14, 14, 1)), image(5, shape=(1, 14, 14, 1)),  # another image size
             tabular(6), tabular(7),
             Answered(now, ["l-0"], "m", "v1", "classification", [[1.0, 2.0]], no_columns, False,
                      np.array([[0.3, 0.7]], np.float32), classes, 1.0, None, True)]  # a list input: left as it is
    packed = pack(batch)
    assert [type(item).__name__ for item in packed] == ["Packed", "Answered", "Packed", "Packed", "Answered"]
    assert [len(item.ids) for item in packed if isinstance(item, Packed)] == [3, 2, 2]
    there = pickle.loads(pickle.dumps(packed))
    assert packed_prediction_csv(there).text == prediction_csv(batch).text
    assert packed_prediction_csv(there).count == sum(len(a.ids) for a in batch) == 13


# --- HTTP: KServe's FastAPI app with ours installed --------------------------------------------------


@pytest.fixture
def client(database_url: str) -> Any:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from kserve.errors import InvalidInput

    app = FastAPI()
    capture = Capture(CaptureConfig(dsn=database_url)).start()
    http.install(app, capture, max_body_bytes=4096)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        raise InvalidInput("bad input: " + (await request.body()).decode())

    @app.post("/boom")
    async def boom() -> dict:
        raise RuntimeError("z" * 5000)  # no handler takes it
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.capture = capture
        yield test_client
    capture.stop()


def test_feedback_endpoint_validates_and_queues(client: Any, database_url: str) -> None:
    answer = client.post(http.FEEDBACK_PATH, json={"prediction_id": "p-1", "is_correct": False, "corrected_label": "dog"})
    assert answer.status_code == 202 and answer.json() == {"prediction_id": "p-1", "accepted": True}
    wait_for(lambda: client.capture.written[FEEDBACK] == 1)
    assert fetch(database_url, "SELECT prediction_id, is_correct, corrected_label FROM feedback") == [("p-1", False, "dog")]
    for body, expected in [
        ({"is_correct": True}, "prediction_id must be"),
        ({"prediction_id": "p", "is_correct": "yes"}, "is_correct must be true or false"),
        ({"prediction_id": "p", "is_correct": True, "rating": 5}, "unknown fields rating"),
        ({"prediction_id": "p", "is_correct": True, "comment": "x" * 2100}, "comment must be text of at most 2000"),
    ]:
        answer = client.post(http.FEEDBACK_PATH, json=body)
        assert answer.status_code == 400 and expected in answer.json()["error"], answer.json()
    assert client.post(http.FEEDBACK_PATH, content=b"{not json").status_code == 400


def test_feedback_answers_in_bulk_are_taken_all_or_none(client: Any, database_url: str) -> None:
    answers = [{"prediction_id": f"bulk-{i}", "is_correct": i % 3 != 0} for i in range(60)]
    answer = client.post(http.FEEDBACK_PATH, json=answers)
    assert answer.status_code == 202 and answer.json() == {"accepted": 60}
    # One bad answer: none of its request is taken, and the error says which.
    bad = [{"prediction_id": "none-0", "is_correct": True}, {"prediction_id": "none-1", "is_correct": "yes"}]
    answer = client.post(http.FEEDBACK_PATH, json=bad)
    assert answer.status_code == 400 and answer.json()["error"].startswith("answer 1: is_correct must be true or false")
    assert "an array of 1 to 1000 answers, not 0" in client.post(http.FEEDBACK_PATH, json=[]).json()["error"]
    with pytest.raises(http.BadFeedback, match="not 1001"):
        http.parse_feedback(json.dumps([answers[0]] * 1001).encode())
    wait_for(lambda: client.capture.written[FEEDBACK] == 60)
    assert fetch(database_url, "SELECT count(*), count(*) FILTER (WHERE is_correct) FROM feedback WHERE prediction_id LIKE 'bulk-%'") == [(60, 40)]
    assert fetch(database_url, "SELECT count(*) FROM feedback WHERE prediction_id LIKE 'none-%'") == [(0,)]


def test_more_answers_than_the_capture_queue_holds_is_413_not_a_retry_later(database_url: str) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    capture = Capture(CaptureConfig(dsn=database_url, queue_rows=5)).start()
    http.install(app, capture, max_body_bytes=1 << 20)
    try:
        with TestClient(app) as test_client:
            answer = test_client.post(http.FEEDBACK_PATH, json=[{"prediction_id": f"q-{i}", "is_correct": True} for i in range(6)])
    finally:
        capture.stop()
    assert answer.status_code == 413 and "more than this server's capture queue holds (5)" in answer.json()["error"]
    assert capture.offered[FEEDBACK] == 0


def test_bodies_over_the_limit_get_413_declared_or_streamed(client: Any) -> None:
    big = json.dumps({"instances": [[0.5] * 1000]}).encode()
    answer = client.post("/echo", content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "over this server's limit of 4096" in answer.json()["error"]

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"x" * 1000

    answer = client.post("/echo", content=chunks())
    assert answer.status_code == 413


def test_errors_are_cut_short_in_the_answer_and_the_log(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        answer = client.post("/echo", content=b"y" * 1900)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert len(error) < http.ERROR_CHARS + 60 and error.endswith("more characters)")
    logged = [r.getMessage() for r in caplog.records if "/echo" in r.getMessage()]
    assert logged and all(len(m) < http.ERROR_CHARS + 120 for m in logged)
    assert not any(r.exc_info for r in caplog.records), "a client's error is logged without a traceback"


def test_an_unexpected_error_is_answered_500_in_one_cut_line_and_never_leaves_the_app(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Starlette's last handler re-raises what no handler took, for uvicorn to log whole: its
    text, however long, and a traceback. Ours answers it; a strict client raises what leaves the app."""
    from fastapi.testclient import TestClient

    with caplog.at_level(logging.WARNING):
        answer = TestClient(client.app).post("/boom")
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error.startswith("zzz") and len(error) < http.ERROR_CHARS + 60
    logged = [r.getMessage() for r in caplog.records if "/boom" in r.getMessage()]
    assert len(logged) == 1 and len(logged[0].splitlines()[0]) < http.ERROR_CHARS + 120
    assert 'raise RuntimeError("z" * 5000)' in logged[0], "the frames of a server error are logged"


def test_both_entry_points_build_rows_where_the_flag_says(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--capture-rows-in server|helper` on `feedback-loop serve` and on the serve image's entry
    point; the helper process by default. (The server itself is replaced: only the flags are read.)"""
    from click.testing import CliRunner

    from feedback_loop import cli
    from feedback_loop.serving import __main__ as image_entry
    from feedback_loop.serving import model as serving_model
    from feedback_loop.serving import server

    seen: list[CaptureConfig] = []
    monkeypatch.setattr(server, "serve", lambda *args, capture, **kwargs: seen.append(capture))
    monkeypatch.setattr(image_entry, "serve", lambda *args, capture, **kwargs: seen.append(capture))
    monkeypatch.setattr(serving_model, "require_complete", lambda path: None)
    monkeypatch.setattr(image_entry, "require_complete", lambda path: None)
    monkeypatch.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/feedback")
    for flags in ([], ["--capture-rows-in", "server"], ["--capture-rows-in", "helper"]):
        result = CliRunner().invoke(cli.main, ["serve", str(tmp_path), *flags])
        assert result.exit_code == 0, result.output
        image_entry.main([str(tmp_path), *flags])
    assert [c.build_process for c in seen] == [True, True, False, False, True, True]
    result = CliRunner().invoke(cli.main, ["serve", str(tmp_path), "--capture-rows-in", "elsewhere"])
    assert result.exit_code == 2 and "'elsewhere' is not one of 'server', 'helper'" in result.output
