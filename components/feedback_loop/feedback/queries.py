"""The feedback store's SQL, kept in `sql/*.sql` beside this module (package data).

Statements are read as text; table names and optional parts are filled into their `{name}`
placeholders with `psycopg2.sql` (identifiers quoted, never formatted in). Values are bound
parameters (`%(name)s`), except in the extraction's queries: those run inside a COPY, which
takes no parameters, so their values are quoted `sql.Literal`s. Schema migrations are
`sql/migrations/NNNN_<what>.sql`, numbered from 1 without gaps: a file's number is the
schema version it brings the database to.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

from psycopg2 import sql

_MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def _folder(*parts: str) -> Traversable:
    return resources.files(__package__).joinpath("sql", *parts)


@cache
def text(name: str) -> str:
    """The statement in `sql/<name>.sql`."""
    return _folder(f"{name}.sql").read_text(encoding="utf-8")


def compose(name: str, **parts: sql.Composable) -> sql.Composed:
    """The statement in `sql/<name>.sql` with its `{placeholders}` filled safely."""
    return sql.SQL(text(name)).format(**parts)


@cache
def migrations() -> tuple[str, ...]:
    """The migrations' SQL, in order: the i-th (from 0) brings the schema to version i + 1."""
    files = sorted((entry for entry in _folder("migrations").iterdir() if entry.name.endswith(".sql")), key=lambda entry: entry.name)
    found = [_MIGRATION_NAME.fullmatch(entry.name) for entry in files]
    # A misnamed file, a gap or a twin would shift every later version: databases would skip
    # or repeat a step. Refused before anything runs.
    if None in found or [int(f.group(1)) for f in found] != list(range(1, len(files) + 1)):
        names = [entry.name for entry in files]
        raise RuntimeError(f"schema migrations must be named 0001_<what>.sql, 0002_<what>.sql, ... once each, found {names}")
    return tuple(entry.read_text(encoding="utf-8") for entry in files)
