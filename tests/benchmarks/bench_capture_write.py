"""Capture's write into PostgreSQL: COPY straight into `predictions` (what the writer does)
against COPY through a staging table with ON CONFLICT DO NOTHING (what it does only for a
batch that repeats an id), and the server's time-ordered prediction ids against random ones
(uuid4, what it gave before), in PostgreSQL's CPU per row: the database shares the machine
with the model server, so its CPU per captured row is what capture costs there.

Batches of 512 rows as the serve benchmark's batch-32 image requests make them, the ways
taking turns (in order, then reversed) on one connection to an embedded PostgreSQL; uuid4 ids
go to a table of their own, alike in columns and indexes (mixed into one primary key, each
kind would shape the other's pages); CPU summed over every PostgreSQL process (the backend,
the WAL writer, ...). The last line is one JSON object.

    ./build.sh bench capture_write [--batches 80]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: serving_helpers

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from psycopg2 import sql  # noqa: E402

from serving_helpers import StoppablePostgres  # noqa: E402

from feedback_loop.feedback import capture, queries  # noqa: E402
from feedback_loop.feedback.store import Tables  # noqa: E402
from feedback_loop.serving.model import time_ordered_id  # noqa: E402
from feedback_loop.serving.records import Answered, prediction_csv  # noqa: E402

UUID4_TABLE = "predictions_uuid4_ids"
CLASSES: list[str] = ["cat", "dog"]
COLUMNS: dict[str, list[str]] = {}


def batch(rng: np.random.Generator, new_id: Callable[[], str], requests: int = 16, rows: int = 32) -> capture.CsvRows:
    now = datetime.now(timezone.utc)
    return prediction_csv([
        Answered(now, [f"{new_id()}-{i}" for i in range(rows)], "bench", "v1", "classification",
                 rng.uniform(0, 1, (rows, 28, 28, 1)).astype(np.float32), COLUMNS, True,
                 rng.dirichlet([1, 1], rows).astype(np.float32), CLASSES, 4.2, None, True)
        for _ in range(requests)])


def random_ids(conn: object, csv: capture.CsvRows) -> None:
    capture.write_predictions(conn, csv, Tables(predictions=UUID4_TABLE))


def staged(conn: object, csv: capture.CsvRows) -> None:
    table = sql.Identifier("predictions")
    with conn, conn.cursor() as cur:
        cur.execute(queries.compose("stage_predictions", predictions=table))
        cur.copy_expert(queries.compose("copy_predictions", table=sql.Identifier("capture_predictions")), io.StringIO(csv.text))
        cur.execute(queries.compose("move_predictions", predictions=table))


def postgres_cpu_s() -> float:
    return sum(sum(p.cpu_times()[:2]) for p in psutil.process_iter() if "postgres" in p.name())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=80, help="batches written each way")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    db = StoppablePostgres()
    conn = capture.connect(db.dsn)
    with conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} (LIKE predictions INCLUDING ALL)").format(sql.Identifier(UUID4_TABLE)))
    ways = [("direct", capture.write_predictions, time_ordered_id), ("staged", staged, time_ordered_id),
            ("direct_uuid4_ids", random_ids, lambda: uuid.uuid4().hex)]
    spent, rows = {name: 0.0 for name, *_ in ways}, {name: 0 for name, *_ in ways}
    try:
        for turn in range(args.batches):
            for name, write, new_id in ways if turn % 2 == 0 else ways[::-1]:
                csv = batch(rng, new_id)
                before = postgres_cpu_s()
                write(conn, csv)
                spent[name] += postgres_cpu_s() - before
                rows[name] += csv.count
    finally:
        conn.close()
        db.close()
    per_row = {name: round(spent[name] / rows[name] * 1e6, 2) for name in spent}
    print(json.dumps({"benchmark": "capture_write", "rows_each_way": rows["direct"],
                      "postgres_cpu_us_per_row": per_row, "staged_over_direct": round(spent["staged"] / spent["direct"], 2),
                      "uuid4_ids_over_time_ordered": round(spent["direct_uuid4_ids"] / spent["direct"], 2)}))


if __name__ == "__main__":
    main()
