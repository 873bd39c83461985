"""Feedback extraction against a real PostgreSQL: schema, exclusions, privacy, statistics, retention."""

from __future__ import annotations

import hmac
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from kfp import dsl
from psycopg2.extras import Json, execute_values

from feedback_loop.cli import main
from feedback_loop.decide.component import decide_retrain
from feedback_loop.errors import DatabaseUnreachable
from feedback_loop.feedback import core, store
from feedback_loop.feedback.component import extract_feedback, purge_feedback
from feedback_loop.feedback.pseudonyms import Pseudonymizer
from feedback_loop.feedback.stats import FeedbackStats, Options

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
KEY = "test-hmac-key-0123456789"


def insert(conn, predictions: list[tuple], feedback: list[tuple] = ()) -> None:
    """predictions: (id, created_at, features, label, confidence, consent[, latency_ms, user_id])."""
    rows = []
    for row in predictions:
        pid, at, features, label, conf, consent, *rest = row
        latency, user = (rest + [None, None])[:2]
        rows.append((pid, at, "m", "v1", Json(features), label, conf, consent, latency, user))
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO predictions (id, created_at, model_name, model_version, features, predicted_label, confidence,"
            " consent, latency_ms, user_id) VALUES %s",
            rows,
        )
        if feedback:
            execute_values(cur, "INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label, comment) VALUES %s", list(feedback))


def extract(conn, tmp_path: Path, options: Options = Options(), key: str | None = KEY, parallel: int = 1, **window) -> FeedbackStats:
    """Extracts from `conn`'s database: `conn.dsn` is its DSN (the test server has no password to mask)."""
    w = core.Window.of("m", window.pop("days_back", 30), window.pop("since", ""), now=NOW)
    return core.extract(conn.dsn, w, tmp_path / "feedback.parquet", options, pseudonymizer=Pseudonymizer(key), parallel=parallel)


def test_migrations_are_idempotent(conn) -> None:
    assert store.migrate(conn) == store.migrate(conn) == len(store.MIGRATIONS) == 3
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM schema_version")
        assert cur.fetchone()[0] == len(store.MIGRATIONS)
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        assert {"predictions", "feedback", "retrain_runs", "deployments"} <= {r[0] for r in cur.fetchall()}
        cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        assert {"feedback_created_at", "feedback_prediction_latest", "predictions_no_consent", "predictions_created_at"} <= {r[0] for r in cur.fetchall()}


def test_a_version_1_database_is_upgraded_in_place(conn) -> None:
    with conn, conn.cursor() as cur:
        cur.execute("DROP TABLE predictions, feedback, retrain_runs, deployments, schema_version")
        cur.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        cur.execute(store.MIGRATIONS[0])
        cur.execute("INSERT INTO schema_version (version) VALUES (1)")
        cur.execute("INSERT INTO predictions (id, model_name, model_version, predicted_label) VALUES ('kept', 'm', 'v1', 'cat')")
    assert store.migrate(conn) == 3
    with conn.cursor() as cur:
        cur.execute("SELECT id, predicted_value FROM predictions")
        assert cur.fetchall() == [("kept", None)]


def test_extract_joins_latest_feedback_and_filters(conn, tmp_path: Path) -> None:
    insert(
        conn,
        [
            ("a", NOW - 2 * DAY, {"brightness": 0.5, "camera": "cam-a"}, "cat", 0.9, True),
            ("b", NOW - 3 * DAY, {"brightness": 0.7, "camera": "cam-c"}, "dog", 0.6, True),
            ("c", NOW - 4 * DAY, {"brightness": 0.1, "camera": "cam-c"}, "cat", 0.8, True),
            ("too-old", NOW - 40 * DAY, {"brightness": 0.3}, "dog", 0.9, True),
        ],
        [
            ("a", NOW - DAY, True, None, None),
            ("b", NOW - 2 * DAY, True, None, None),
            ("b", NOW - DAY, False, "cat", "wrong"),  # the latest answer wins
        ],
    )
    stats = extract(conn, tmp_path)
    table = pq.read_table(tmp_path / "feedback.parquet").to_pandas().set_index("id")
    assert sorted(table.index) == ["a", "b", "c"]
    assert table.loc["a", "label"] == "cat" and table.loc["b", "label"] == "cat"  # b corrected to cat
    assert table.loc["b", "comment"] == "wrong" and not table.loc["b", "is_correct"]
    assert table.loc["c", "label"] is None and table.loc["c", "is_correct"] is None
    assert table.loc["b", "camera"] == "cam-c" and table.loc["a", "brightness"] == pytest.approx(0.5)
    assert str(table["created_at"].dt.tz) == "UTC"
    assert not {"excluded", "feedback_excluded", "answers"} & set(table.columns), "audit columns stay out of the dataset"
    assert (stats.rows, stats.feedback_count, stats.negative_count, stats.labelled_count) == (3, 2, 1, 2)
    assert stats.satisfaction_rate == pytest.approx(0.5)
    assert stats.excluded["duplicate_feedback"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["feedback.parquet"], "no temporary file is left beside the output"


def test_every_exclusion_reason_is_counted(conn, tmp_path: Path) -> None:
    """A corpus of bad rows, each unusable for exactly one reason, beside two good ones."""
    insert(
        conn,
        [
            ("good-1", NOW - 2 * DAY, {"x": 1.0}, "cat", 0.9, True),
            ("good-2", NOW - 2 * DAY, {"x": 2.0}, "dog", 0.0, True),
            ("no-consent-1", NOW - DAY, {"x": 3.0}, "cat", 0.9, False),
            ("no-consent-2", NOW - DAY, {"x": 3.0}, "dog", 0.9, False),
            ("conf-high", NOW - DAY, {"x": 4.0}, "cat", 1.7, True),
            ("conf-low", NOW - DAY, {"x": 4.0}, "cat", -0.1, True),
            ("conf-nan", NOW - DAY, {"x": 4.0}, "cat", float("nan"), True),
            ("latency-nan", NOW - DAY, {"x": 4.0}, "cat", 0.5, True, float("nan")),
            ("latency-inf", NOW - DAY, {"x": 4.0}, "cat", 0.5, True, float("-inf")),
            ("null-answer", NOW - DAY, {"x": 5.0}, None, 0.5, True),
            ("blank-answer", NOW - DAY, {"x": 5.0}, "  ", 0.5, True),
            ("unknown-answer", NOW - DAY, {"x": 6.0}, "hamster", 0.5, True),
            ("from-the-future", NOW + 2 * DAY, {"x": 7.0}, "cat", 0.5, True),
            ("wrong-no-fix", NOW - 3 * DAY, {"x": 8.0}, "cat", 0.5, True),
            ("wrong-bad-fix", NOW - 3 * DAY, {"x": 8.0}, "cat", 0.5, True),
            ("answered-thrice", NOW - 3 * DAY, {"x": 9.0}, "dog", 0.5, True),
        ],
        [
            ("good-1", NOW - DAY, True, None, "fine"),
            ("good-2", NOW - DAY, False, "cat", "blurry picture"),
            ("ghost", NOW - DAY, False, "dog", None),  # no such prediction
            ("ghost", NOW - 2 * DAY, True, None, None),
            ("wrong-no-fix", NOW - 2 * DAY, False, None, "wrong"),  # a "wrong" without the right answer
            ("wrong-bad-fix", NOW - 2 * DAY, False, "parrot", None),
            ("answered-thrice", NOW - 3 * DAY, True, None, None),
            ("answered-thrice", NOW - 2 * DAY, True, None, None),
            ("answered-thrice", NOW - DAY, False, "cat", None),
            ("good-1", NOW + 3 * DAY, False, "dog", None),  # feedback from the future: the earlier answer stands
        ],
    )
    stats = extract(conn, tmp_path, Options(known_labels=("cat", "dog")))
    assert stats.excluded == {
        "no_consent": 2,
        "future_timestamp": 2,  # one prediction, one feedback
        "confidence_out_of_range": 3,
        "non_finite_latency": 2,
        "null_label": 2,  # null and blank answers
        "unknown_label": 1,  # a predicted hamster
        "unknown_prediction": 2,
        "duplicate_feedback": 2,
    }
    # A "wrong" without a usable correction is a negative answer; it only gives no training label.
    assert stats.unlabelled == {"no_correction": 1, "unknown_correction": 1}
    table = pq.read_table(tmp_path / "feedback.parquet").to_pandas().set_index("id")
    assert sorted(table.index) == ["answered-thrice", "good-1", "good-2", "wrong-bad-fix", "wrong-no-fix"]
    # The predictions whose correction is unusable stay, unlabelled but answered "wrong".
    assert table.loc[["wrong-no-fix", "wrong-bad-fix"], "label"].isna().all()
    assert not table.loc[["wrong-no-fix", "wrong-bad-fix"], "is_correct"].any()
    assert table.loc[["wrong-no-fix", "wrong-bad-fix"], "corrected_label"].isna().all()
    assert table.loc["good-1", "is_correct"] and table.loc["answered-thrice", "label"] == "cat"
    # Both count as negatives, in satisfaction and in keyword hits ("wrong" is a keyword).
    assert (stats.rows, stats.feedback_count, stats.negative_count, stats.labelled_count, stats.keyword_hits) == (5, 5, 4, 3, 2)
    assert stats.satisfaction_rate == pytest.approx(1 / 5) and stats.error_rate == pytest.approx(4 / 5)
    metrics = stats.metrics()
    assert metrics["excluded_confidence_out_of_range"] == 3.0 and all(isinstance(v, float) for v in metrics.values())
    assert metrics["unlabelled_no_correction"] == 1.0 and "excluded_no_correction" not in metrics


def test_without_known_labels_any_non_blank_label_is_accepted(conn, tmp_path: Path) -> None:
    insert(conn, [("h", NOW - DAY, {}, "hamster", 0.5, True)], [("h", NOW - DAY / 2, False, "parrot", None)])
    stats = extract(conn, tmp_path)
    assert stats.excluded["unknown_label"] == 0 and stats.labelled_count == 1


def test_user_ids_leave_the_database_only_as_an_hmac(conn, tmp_path: Path) -> None:
    insert(conn, [("a", NOW - DAY, {}, "cat", 0.9, True, 10.0, "alice@example.com"), ("b", NOW - DAY, {}, "cat", 0.9, True, 10.0, "bob")])
    extract(conn, tmp_path)
    out = tmp_path / "feedback.parquet"
    users = dict(zip(*[pq.read_table(out)[c].to_pylist() for c in ("id", "user_id")]))
    assert users["a"] == hmac.new(KEY.encode(), b"alice@example.com", "sha256").hexdigest()
    assert users["a"] != users["b"] and len(users["b"]) == 64
    raw = out.read_bytes()
    assert b"alice@example.com" not in raw and b"bob" not in raw and KEY.encode() not in raw

    other = tmp_path / "other"
    other.mkdir()
    core.extract(conn.dsn, core.Window.of("m", 30, now=NOW), other / "f.parquet", pseudonymizer=Pseudonymizer("another-key"))
    assert pq.read_table(other / "f.parquet")["user_id"].to_pylist()[0] != users["a"], "the key matters"

    # Without a key, ids are dropped, never exported in clear.
    core.extract(conn.dsn, core.Window.of("m", 30, now=NOW), other / "nokey.parquet", pseudonymizer=Pseudonymizer(None))
    assert pq.read_table(other / "nokey.parquet")["user_id"].null_count == 2


def test_the_core_takes_the_key_as_an_input_never_from_the_environment(conn, tmp_path: Path, monkeypatch, caplog) -> None:
    insert(conn, [("a", NOW - DAY, {}, "cat", 0.9, True, 10.0, "alice")])
    monkeypatch.setenv("FEEDBACK_HMAC_KEY", KEY)
    with caplog.at_level(logging.WARNING, logger="feedback_loop.feedback.core"):
        core.extract(conn.dsn, core.Window.of("m", 30, now=NOW), tmp_path / "f.parquet")
    assert pq.read_table(tmp_path / "f.parquet")["user_id"].to_pylist() == [None]
    assert "user ids are left out" in caplog.text


def test_pseudonymizer_cache_stays_bounded_and_correct() -> None:
    import pyarrow as pa

    pseudo = Pseudonymizer(KEY, cache_size=10)
    for start in range(0, 100, 25):
        ids = [f"user-{i % 37}" for i in range(start, start + 25)]
        out = pseudo.apply(pa.array(ids)).to_pylist()
        assert out == [pseudo.digest(u) for u in ids]
        assert len(pseudo._known) <= 25


def test_statistics_the_decision_needs(conn, tmp_path: Path) -> None:
    # 200 predictions over the last 20 days, one every 2.4 hours; latency 10 ms, the last 50 at 20 ms.
    predictions, feedback = [], []
    for i in range(200):
        at = NOW - 20 * DAY + i * (20 * DAY / 200) + timedelta(seconds=1)
        pid = f"p{i:03d}"
        predictions.append((pid, at, {"x": float(i)}, "cat", 0.8, True, 20.0 if i >= 150 else 10.0, f"u{i % 7}"))
        # Every prediction answered; wrong every 4th; the last 100 answered wrong every 2nd.
        wrong = (i % 2 == 0) if i >= 100 else (i % 4 == 0)
        comment = "Blurry, WRONG animal" if wrong and i % 3 == 0 else None
        feedback.append((pid, at + timedelta(minutes=5), not wrong, "dog" if wrong else None, comment))
    insert(conn, predictions, feedback)
    since = (NOW - 10 * DAY).isoformat()  # trained on everything up to 10 days ago
    stats = extract(conn, tmp_path, Options(training_rows=400), since=since)

    recent = [f for p, f in zip(predictions, feedback) if p[1] > NOW - 10 * DAY]
    assert stats.rows == stats.feedback_count == len(recent) == 100
    assert stats.negative_count == sum(1 for f in recent if not f[2]) == 50
    assert stats.recent_feedback_count == 100 and stats.recent_satisfaction_rate == pytest.approx(0.5)
    last_week = [f for p, f in zip(predictions, feedback) if p[1] > NOW - 7 * DAY]
    assert stats.error_rate_feedback == len(last_week)
    assert stats.error_rate == pytest.approx(sum(1 for f in last_week if not f[2]) / len(last_week))
    assert stats.recent_latency_ms == pytest.approx(20.0) and stats.baseline_latency_ms == pytest.approx(10.0)
    assert stats.latency_ratio == pytest.approx(2.0)
    assert stats.keyword_hits == sum(1 for f in recent if f[4])  # case-insensitive
    assert stats.new_rows == 100 and stats.training_rows == 400 and stats.new_data_share == pytest.approx(0.25)
    assert stats.days_since_training == pytest.approx(10.0)

    # A fixed baseline, another error window, and no keywords.
    fixed = extract(conn, tmp_path, Options(latency_baseline_ms=40.0, error_rate_days=1, keywords=()), since=since)
    assert fixed.latency_ratio == pytest.approx(0.5) and fixed.keyword_hits == 0
    assert fixed.error_rate_feedback == sum(1 for p in predictions if p[1] > NOW - DAY)


def test_metrics_round_trip_through_kfp_metadata(conn, tmp_path: Path) -> None:
    insert(conn, [("a", NOW - DAY, {}, "cat", 0.9, True, 12.0)], [("a", NOW - DAY / 2, False, "dog", "wrong")])
    stats = extract(conn, tmp_path)
    back = FeedbackStats.from_metrics(json.loads(json.dumps(stats.metrics())))
    assert back.metrics() == stats.metrics()


def test_parallel_slices_give_the_same_extract_in_one_snapshot(conn, database_url: str, tmp_path: Path) -> None:
    rows = [(f"p{i:04d}", NOW - 20 * DAY + i * timedelta(hours=1), {"x": float(i), "camera": f"cam-{i % 3}"}, "cat" if i % 2 else "dog",
             (i % 10) / 10, i % 50 != 0, float(i % 7), f"u{i % 11}") for i in range(480)]
    answers = [(f"p{i:04d}", NOW - 20 * DAY + i * timedelta(hours=1, minutes=5), i % 3 != 0, None if i % 3 else "cat", "wrong" if i % 6 == 0 else None)
               for i in range(0, 480, 2)]
    insert(conn, rows, answers + [("p0002", NOW - DAY, False, "cat", "blurry")])
    serial = extract(conn, tmp_path)
    window = core.Window.of("m", 30, now=NOW)
    parallel = core.extract(database_url, window, tmp_path / "parallel.parquet", parallel=4, pseudonymizer=Pseudonymizer(KEY))
    assert parallel == serial
    # The same rows, in another order: slices arrive as they come.
    by_id = [pq.read_table(tmp_path / name).sort_by("id") for name in ("parallel.parquet", "feedback.parquet")]
    assert by_id[0].equals(by_id[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback.parquet", "parallel.parquet"]
    with conn.cursor() as cur:  # every stream's connection is closed
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert cur.fetchone()[0] == 0


def test_since_leaves_out_rows_already_trained_on(conn, tmp_path: Path) -> None:
    insert(conn, [("old", NOW - 5 * DAY, {}, "cat", 0.9, True), ("new", NOW - DAY, {}, "cat", 0.9, True)])
    stats = extract(conn, tmp_path, since=(NOW - 3 * DAY).isoformat())
    assert stats.rows == 1
    assert pq.read_table(tmp_path / "feedback.parquet")["id"].to_pylist() == ["new"]


def test_empty_window_is_a_valid_empty_dataset(conn, tmp_path: Path) -> None:
    stats = extract(conn, tmp_path)
    assert (stats.rows, stats.feedback_count, stats.satisfaction_rate, stats.latency_ratio) == (0, 0, 0.0, 0.0)
    table = pq.read_table(tmp_path / "feedback.parquet")
    assert table.num_rows == 0 and {"id", "created_at", "label", "user_id"} <= set(table.column_names)


def test_a_failed_extraction_leaves_the_previous_file_and_no_partial_one(conn, tmp_path: Path) -> None:
    insert(conn, [(f"p{i}", NOW - 20 * DAY + timedelta(minutes=25 * i), {"x": 1.0}, "cat", 0.5, True) for i in range(1000)])
    # The server fails in the middle of the stream: a view over the table divides by zero at row p900.
    with conn, conn.cursor() as cur:
        cur.execute("CREATE VIEW failing AS SELECT id, created_at, model_name, model_version, features, input_uri, predicted_label,"
                    " predicted_value, CASE WHEN id = 'p900' THEN 1 / 0 ELSE confidence END AS confidence, latency_ms, user_id, consent"
                    " FROM predictions")
    out = tmp_path / "feedback.parquet"
    out.write_bytes(b"the previous extract")
    window = core.Window.of("m", 30, now=NOW)
    with pytest.raises(Exception, match="division by zero"):
        core.extract(conn.dsn, window, out, tables=store.Tables(predictions="failing"), pseudonymizer=Pseudonymizer(KEY))
    assert out.read_bytes() == b"the previous extract"
    assert [p.name for p in tmp_path.iterdir()] == ["feedback.parquet"]

    # Here after one slice was written: the other slices' streams are stopped, nothing is left behind.
    class FailingOnTheSecondBatch(Pseudonymizer):
        calls = 0

        def apply(self, column):
            FailingOnTheSecondBatch.calls += 1
            if self.calls == 2:
                raise RuntimeError("disk full")
            return super().apply(column)

    with pytest.raises(RuntimeError, match="disk full"):
        core.extract(conn.dsn, window, out, parallel=4, pseudonymizer=FailingOnTheSecondBatch(KEY))
    assert out.read_bytes() == b"the previous extract"
    assert [p.name for p in tmp_path.iterdir()] == ["feedback.parquet"]
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert cur.fetchone()[0] == 0


def test_table_names_are_quoted_identifiers(conn, tmp_path: Path) -> None:
    with conn, conn.cursor() as cur:
        cur.execute('CREATE TABLE "App Predictions" (LIKE predictions INCLUDING ALL)')
        cur.execute('CREATE TABLE "app feedback; drop table predictions" (LIKE feedback INCLUDING ALL)')
        cur.execute("""INSERT INTO "App Predictions" (id, created_at, model_name, model_version, predicted_label, confidence)"""
                    " VALUES ('x', %s, 'm', 'v1', 'cat', 0.5)", (NOW - DAY,))
    tables = store.Tables(predictions="App Predictions", feedback="app feedback; drop table predictions")
    stats = core.extract(conn.dsn, core.Window.of("m", 30, now=NOW), tmp_path / "f.parquet", tables=tables, pseudonymizer=Pseudonymizer(KEY))
    assert stats.rows == 1
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('predictions') IS NOT NULL")
        assert cur.fetchone()[0]


def test_unreachable_database_is_one_clear_line_without_the_secret() -> None:
    dsn = "postgresql://loop:s3cret-pass@127.0.0.1:9/feedback"
    with pytest.raises(DatabaseUnreachable) as caught:
        store.connect(dsn)
    message = str(caught.value)
    assert "\n" not in message and "s3cret-pass" not in message and "unreachable" in message
    with pytest.raises(DatabaseUnreachable, match="DATABASE_URL is not set"):
        store.connect(None)


def test_purge_deletes_only_what_is_older_than_the_retention(conn) -> None:
    insert(
        conn,
        [("old", NOW - 200 * DAY, {}, "cat", 0.9, True), ("recent", NOW - 10 * DAY, {}, "cat", 0.9, True)],
        [("old", NOW - 100 * DAY, True, None, None), ("recent", NOW - 190 * DAY, True, None, None), ("recent", NOW - DAY, True, None, None)],
    )
    assert store.purge(conn, 180, now=NOW, dry_run=True) == {"feedback": 2, "predictions": 1}
    assert store.purge(conn, 180, now=NOW) == {"feedback": 2, "predictions": 1}
    with conn.cursor() as cur:
        cur.execute("SELECT prediction_id, created_at FROM feedback")
        assert cur.fetchall() == [("recent", NOW - DAY)]
        cur.execute("SELECT id FROM predictions")
        assert cur.fetchall() == [("recent",)]
    assert store.purge(conn, 180, now=NOW) == {"feedback": 0, "predictions": 0}


def test_purge_and_history_commands(conn, database_url: str, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    now = datetime.now(timezone.utc)
    insert(conn, [("ancient", now - 400 * DAY, {}, "cat", 0.9, True), ("fresh", now - DAY, {}, "cat", 0.9, True)])
    runner = CliRunner()
    result = runner.invoke(main, ["purge", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would delete 1 predictions" in result.output
    result = runner.invoke(main, ["purge", "--retention-days", "2"])
    assert result.exit_code == 0 and "deleted 1 predictions" in result.output
    monkeypatch.setenv("RETRAIN_RETENTION_DAYS", "0")
    result = runner.invoke(main, ["purge"])
    assert result.exit_code == 2 and "retention_days" in result.output
    monkeypatch.delenv("RETRAIN_RETENTION_DAYS")

    monkeypatch.setenv("RETRAIN_MODEL_NAME", "m")
    assert "no decision recorded yet" in runner.invoke(main, ["history"]).output
    store.record_run(conn, model_name="m", run_name="run-7", retrain=True, reasons=["input_drift: drift detected"],
                     stats={"feedback_count": 12, "negative_count": 3, "is_drift": True})
    table = runner.invoke(main, ["history"]).output
    assert "run-7" in table and "retrain" in table and "input_drift: drift detected" in table and "12" in table
    rows = json.loads(runner.invoke(main, ["history", "--json"]).output)
    assert rows[0]["run_name"] == "run-7" and rows[0]["stats"]["negative_count"] == 3


def test_extract_feedback_wrapper_with_artifacts_on_disk(conn, database_url: str, tmp_path: Path, monkeypatch) -> None:
    now = datetime.now(timezone.utc)
    insert(conn, [("a", now - timedelta(hours=1), {"x": 1.0}, "cat", 0.9, True, None, "u1")], [("a", now, False, "dog", "blurry")])
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FEEDBACK_HMAC_KEY", KEY)
    feedback, stats = dsl.Dataset(uri=str(tmp_path / "feedback")), dsl.Metrics(uri=str(tmp_path / "stats"))
    result = extract_feedback.python_func(feedback=feedback, stats=stats, model_name="m", days_back=7, known_labels=["cat", "dog"])
    assert (result.rows, result.feedback_count, result.negative_count, result.satisfaction_rate) == (1, 1, 1, 0.0)
    assert pq.read_table(feedback.path)["label"].to_pylist() == ["dog"]
    assert pq.read_table(feedback.path)["user_id"].to_pylist() == [hmac.new(KEY.encode(), b"u1", "sha256").hexdigest()]
    monkeypatch.delenv("FEEDBACK_HMAC_KEY")  # the Secret without its key: ids are left out
    keyless = dsl.Dataset(uri=str(tmp_path / "keyless"))
    extract_feedback.python_func(feedback=keyless, stats=dsl.Metrics(uri=str(tmp_path / "s2")), model_name="m", days_back=7)
    assert pq.read_table(keyless.path)["user_id"].to_pylist() == [None]
    assert stats.metadata["negative_count"] == 1.0 and stats.metadata["keyword_hits"] == 1.0
    assert stats.metadata["excluded_unknown_prediction"] == 0.0


def test_secrets_never_reach_logs_artifacts_or_errors(postgres_server: str, database_url: str, tmp_path: Path, monkeypatch, capfd) -> None:
    """The DSN (with a password) and the HMAC key, through extraction, decision and a failure."""
    from psycopg2.extensions import make_dsn, parse_dsn

    from conftest import admin

    password = "pw-Zq81-never-shown"
    admin(postgres_server, f"DROP ROLE IF EXISTS loop_secret_test; CREATE ROLE loop_secret_test LOGIN SUPERUSER PASSWORD '{password}'")
    dsn = make_dsn(**{**parse_dsn(database_url), "user": "loop_secret_test", "password": password})
    key = "hmac-key-Xy77-never-shown"
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("FEEDBACK_HMAC_KEY", key)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        conn = store.connect(dsn)
        now = datetime.now(timezone.utc)
        insert(conn, [(f"p{i}", now - timedelta(hours=i + 1), {"x": float(i)}, "cat", 0.7, True, 9.0, f"user-{i}") for i in range(120)],
               [(f"p{i}", now - timedelta(hours=i), i % 3 == 0, None if i % 3 == 0 else "dog", "wrong") for i in range(120)])
        out = tmp_path / "run"
        feedback, stats = dsl.Dataset(uri=str(out / "feedback")), dsl.Metrics(uri=str(out / "stats"))
        extract_feedback.python_func(feedback=feedback, stats=stats, model_name="m", days_back=7)
        decision = dsl.Markdown(uri=str(out / "decision.md"))
        decide_retrain.python_func(stats=stats, feedback=feedback, drift_metrics=dsl.Metrics(uri=str(out / "drift")),
                                   decision=decision, holdout_from=str(out / "holdout_from"), model_name="m", is_drift=False, run_name="r")
        (out / "stats.json").write_text(json.dumps(stats.metadata))
        (out / "decision.json").write_text(json.dumps(decision.metadata))
        # A failure on the way (the stream's query fails on the server): the error carries neither secret.
        with conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE feedback RENAME COLUMN comment TO remark")
        with pytest.raises(Exception) as failure:
            extract_feedback.python_func(feedback=dsl.Dataset(uri=str(out / "f2")), stats=dsl.Metrics(uri=str(out / "s2")), model_name="m")
        conn.close()
        with pytest.raises(DatabaseUnreachable) as unreachable:
            store.connect(make_dsn(**{**parse_dsn(dsn), "host": "127.0.0.1", "port": "9"}))
    finally:
        logging.getLogger().removeHandler(handler)
        admin(postgres_server, "DROP ROLE IF EXISTS loop_secret_test")
    captured = capfd.readouterr()
    texts = records + [captured.out, captured.err, str(failure.value), str(unreachable.value)]
    blobs = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert blobs and any(b"user_id" in b for b in blobs)
    for secret in (password, key, dsn):
        assert not any(secret in text for text in texts), secret
        assert not any(secret.encode() in blob for blob in blobs), secret
    assert not any(b"user-1" in blob for blob in blobs), "raw user ids stay in the database"


def test_purge_feedback_wrapper_deletes_only_what_is_past_retention(conn, database_url: str, tmp_path: Path, monkeypatch) -> None:
    now = datetime.now(timezone.utc)
    insert(
        conn,
        [("old", now - timedelta(days=200), {}, "cat", 0.9, True), ("recent", now - timedelta(days=2), {}, "cat", 0.9, True)],
        [("old", now - timedelta(days=199), True, None, None), ("recent", now - timedelta(days=1), False, "dog", None)],
    )
    monkeypatch.setenv("DATABASE_URL", database_url)
    record = dsl.Markdown(uri=str(tmp_path / "purge.md"))
    assert purge_feedback.python_func(record=record, retention_days=180) == 2
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM predictions")
        assert [r[0] for r in cur.fetchall()] == ["recent"]
        cur.execute("SELECT prediction_id FROM feedback")
        assert [r[0] for r in cur.fetchall()] == ["recent"]
    assert "1 predictions" in Path(record.path).read_text() and database_url not in Path(record.path).read_text()


def test_feature_columns_are_typed_from_the_values_whatever_batch_shows_them_first(conn, tmp_path: Path) -> None:
    # Four slices, four batches in no set order: numbers early, a text value and a new key late.
    rows = [(f"p{i:03d}", NOW - 20 * DAY + i * timedelta(hours=2), {"size": float(i), "mixed": i, "flag": i % 2 == 0}, "cat", 0.5, True)
            for i in range(200)]
    rows[190] = ("p190", NOW - 20 * DAY + 190 * timedelta(hours=2), {"size": 1.5, "mixed": "n/a", "late": "yes", "nested": {"a": [1]}}, "cat", 0.5, True)
    insert(conn, rows)
    stats = extract(conn, tmp_path, parallel=4)
    table = pq.read_table(tmp_path / "feedback.parquet").sort_by("id")
    assert stats.rows == table.num_rows == 200
    types = {name: str(table.schema.field(name).type) for name in ("size", "mixed", "flag", "late", "nested")}
    assert types == {"size": "double", "mixed": "string", "flag": "string", "late": "string", "nested": "string"}
    values = {name: table[name].to_pylist() for name in types}
    assert values["size"][3] == 3.0 and values["mixed"][3] == "3" and values["mixed"][190] == "n/a"
    assert values["flag"][:2] == ["true", "false"] and values["late"][190] == "yes" and values["late"][0] is None
    assert json.loads(values["nested"][190]) == {"a": [1]}
