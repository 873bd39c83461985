"""The feedback store's SQL files: the migrations' numbering, read without a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback_loop.feedback import queries, store


def test_migrations_are_numbered_files_and_a_gap_is_refused(tmp_path: Path, monkeypatch) -> None:
    names = [path.name for path in sorted((Path(queries.__file__).parent / "sql" / "migrations").glob("*.sql"))]
    assert names[:3] == ["0001_initial_schema.sql", "0002_regressor_answers_and_indexes.sql", "0003_feedback_latest_index.sql"]
    assert len(names) == len(store.MIGRATIONS) and "CREATE TABLE predictions" in store.MIGRATIONS[0]
    # A gap would shift every later version: refused, never applied.
    (tmp_path / "migrations").mkdir()
    for name in ("0001_a.sql", "0003_c.sql"):
        (tmp_path / "migrations" / name).write_text("SELECT 1")
    monkeypatch.setattr(queries, "_folder", lambda *parts: tmp_path.joinpath(*parts))
    with pytest.raises(RuntimeError, match="0001_a.sql', '0003_c.sql'"):
        queries.migrations.__wrapped__()
