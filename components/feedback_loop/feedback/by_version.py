"""Satisfaction per model version: the feedback store's answer to the rollout analysis.

The model server names the version in every answer; the serving app stores it with the
prediction (`predictions.model_version`). Here the latest feedback on each prediction made
in a time window is counted per version, consenting users only, so a canary and the stable
version can be compared on the same days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg2
import psycopg2.extensions

from feedback_loop.errors import FeedbackSchemaError
from feedback_loop.feedback import queries


@dataclass(frozen=True)
class VersionFeedback:
    """Answered predictions of one version and how many of the answers were positive."""

    version: str
    answered: int
    positive: int

    @property
    def negative(self) -> int:
        return self.answered - self.positive

    @property
    def satisfaction(self) -> float | None:
        return self.positive / self.answered if self.answered else None


def satisfaction_by_version(
    conn: psycopg2.extensions.connection, model_name: str, versions: Sequence[str], start: datetime, end: datetime
) -> dict[str, VersionFeedback]:
    """Feedback on the predictions each version made in [start, end); every asked version is in the answer."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    params = {"model_name": model_name, "versions": list(versions), "start": start, "end": end}
    try:
        with conn.cursor() as cur:
            cur.execute(queries.text("satisfaction_by_version"), params)
            rows = cur.fetchall()
        conn.rollback()  # read-only; leave no transaction open
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as err:
        conn.rollback()
        first = str(err).strip().splitlines()[0]
        raise FeedbackSchemaError(f"{first}: run the loop once (it migrates the schema) or check the predictions/feedback tables") from None
    found = {version: VersionFeedback(version, int(answered), int(positive)) for version, answered, positive in rows}
    return {version: found.get(version, VersionFeedback(version, 0, 0)) for version in versions}
