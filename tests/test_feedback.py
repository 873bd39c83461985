"""Feedback extraction against a real PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kfp import dsl
from psycopg2.extras import Json, execute_values

from feedback_loop.errors import DatabaseUnreachable
from feedback_loop.feedback import core, store
from feedback_loop.feedback.component import extract_feedback

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def insert(conn, predictions: list[tuple], feedback: list[tuple] = ()) -> None:
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO predictions (id, created_at, model_name, model_version, features, predicted_label, confidence, consent)"
            " VALUES %s",
            [(pid, at, "m", "v1", Json(features), label, conf, consent) for pid, at, features, label, conf, consent in predictions],
        )
        if feedback:
            execute_values(cur, "INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label, comment) VALUES %s", list(feedback))


def test_migrations_are_idempotent(conn) -> None:
    assert store.migrate(conn) == store.migrate(conn) == len(store.MIGRATIONS)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM schema_version")
        assert cur.fetchone()[0] == len(store.MIGRATIONS)
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        assert {"predictions", "feedback", "retrain_runs", "deployments"} <= {r[0] for r in cur.fetchall()}


def test_extract_joins_latest_feedback_and_filters(conn, tmp_path: Path) -> None:
    day = timedelta(days=1)
    insert(
        conn,
        [
            ("a", NOW - 2 * day, {"brightness": 0.5, "camera": "cam-a"}, "cat", 0.9, True),
            ("b", NOW - 3 * day, {"brightness": 0.7, "camera": "cam-c"}, "dog", 0.6, True),
            ("c", NOW - 4 * day, {"brightness": 0.1, "camera": "cam-c"}, "cat", 0.8, True),
            ("no-consent", NOW - day, {"brightness": 0.2}, "cat", 0.9, False),
            ("bad-confidence", NOW - day, {"brightness": 0.2}, "cat", 1.7, True),
            ("too-old", NOW - 40 * day, {"brightness": 0.3}, "dog", 0.9, True),
        ],
        [
            ("a", NOW - day, True, None, None),
            ("b", NOW - 2 * day, True, None, None),
            ("b", NOW - day, False, "cat", "wrong"),  # the latest answer wins
            ("ghost", NOW - day, False, "dog", None),  # feedback for an unknown prediction
        ],
    )
    out = tmp_path / "feedback.parquet"
    stats = core.extract(conn, core.Window.of("m", days_back=30, now=NOW), out)

    table = pq.read_table(out).to_pandas().set_index("id")
    assert sorted(table.index) == ["a", "b", "c"]
    assert table.loc["a", "label"] == "cat" and table.loc["b", "label"] == "cat"  # b corrected to cat
    assert table.loc["b", "comment"] == "wrong" and not table.loc["b", "is_correct"]
    assert table.loc["c", "label"] is None and table.loc["c", "is_correct"] is None
    assert table.loc["b", "camera"] == "cam-c" and table.loc["a", "brightness"] == pytest.approx(0.5)
    assert str(table["created_at"].dt.tz) == "UTC"
    assert (stats.rows, stats.feedback_count, stats.negative_count, stats.labelled_count) == (3, 2, 1, 2)
    assert stats.satisfaction_rate == pytest.approx(0.5)
    assert not list(tmp_path.glob(".*")), "no temporary file is left beside the output"


def test_since_leaves_out_rows_already_trained_on(conn, tmp_path: Path) -> None:
    insert(conn, [("old", NOW - timedelta(days=5), {}, "cat", 0.9, True), ("new", NOW - timedelta(days=1), {}, "cat", 0.9, True)])
    since = (NOW - timedelta(days=3)).isoformat()
    stats = core.extract(conn, core.Window.of("m", 30, since=since, now=NOW), tmp_path / "f.parquet")
    assert stats.rows == 1
    assert pq.read_table(tmp_path / "f.parquet")["id"].to_pylist() == ["new"]


def test_empty_window_is_a_valid_empty_dataset(conn, tmp_path: Path) -> None:
    stats = core.extract(conn, core.Window.of("m", 30, now=NOW), tmp_path / "empty.parquet")
    assert (stats.rows, stats.feedback_count, stats.satisfaction_rate) == (0, 0, 0.0)
    table = pq.read_table(tmp_path / "empty.parquet")
    assert table.num_rows == 0 and {"id", "created_at", "label"} <= set(table.column_names)


def test_unreachable_database_is_one_clear_line_without_the_secret() -> None:
    dsn = "postgresql://loop:s3cret-pass@127.0.0.1:9/feedback"
    with pytest.raises(DatabaseUnreachable) as caught:
        store.connect(dsn)
    message = str(caught.value)
    assert "\n" not in message and "s3cret-pass" not in message and "unreachable" in message
    with pytest.raises(DatabaseUnreachable, match="DATABASE_URL is not set"):
        store.connect(None)


def test_extract_feedback_wrapper_with_artifacts_on_disk(conn, database_url: str, tmp_path: Path, monkeypatch) -> None:
    insert(conn, [("a", datetime.now(timezone.utc) - timedelta(hours=1), {"x": 1.0}, "cat", 0.9, True)], [("a", datetime.now(timezone.utc), False, "dog", None)])
    monkeypatch.setenv("DATABASE_URL", database_url)
    feedback, stats = dsl.Dataset(uri=str(tmp_path / "feedback")), dsl.Metrics(uri=str(tmp_path / "stats"))
    result = extract_feedback.python_func(feedback=feedback, stats=stats, model_name="m", days_back=7)
    assert (result.rows, result.feedback_count, result.negative_count, result.satisfaction_rate) == (1, 1, 1, 0.0)
    assert pq.read_table(feedback.path)["label"].to_pylist() == ["dog"]
    assert stats.metadata["negative_count"] == 1.0
    assert database_url not in json.dumps(stats.metadata)


def test_extract_feedback_interface() -> None:
    spec = extract_feedback.component_spec
    assert set(spec.outputs) == {"feedback", "stats", "rows", "feedback_count", "negative_count", "satisfaction_rate"}
    assert spec.outputs["feedback"].type == "system.Dataset@0.0.1"
    assert "database" not in " ".join(spec.inputs).lower(), "the DSN arrives as an env var, never as a parameter"
