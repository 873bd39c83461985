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


# The latest answer per prediction counts (a user may change a thumbs-down into a thumbs-up).
_QUERY = """
SELECT model_version, count(*) AS answered, count(*) FILTER (WHERE is_correct) AS positive
FROM (
    SELECT DISTINCT ON (p.id) p.model_version, f.is_correct
    FROM predictions p
    JOIN feedback f ON f.prediction_id = p.id
    WHERE p.model_name = %(model_name)s
      AND p.model_version = ANY(%(versions)s)
      AND p.created_at >= %(start)s AND p.created_at < %(end)s
      AND p.consent
    ORDER BY p.id, f.created_at DESC, f.id DESC
) latest
GROUP BY model_version
"""


def satisfaction_by_version(
    conn: psycopg2.extensions.connection, model_name: str, versions: Sequence[str], start: datetime, end: datetime
) -> dict[str, VersionFeedback]:
    """Feedback on the predictions each version made in [start, end); every asked version is in the answer."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    try:
        with conn.cursor() as cur:
            cur.execute(_QUERY, {"model_name": model_name, "versions": list(versions), "start": start, "end": end})
            rows = cur.fetchall()
        conn.rollback()  # read-only; leave no transaction open
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as err:
        conn.rollback()
        first = str(err).strip().splitlines()[0]
        raise FeedbackSchemaError(f"{first}: run the loop once (it migrates the schema) or check the predictions/feedback tables") from None
    found = {version: VersionFeedback(version, int(answered), int(positive)) for version, answered, positive in rows}
    return {version: found.get(version, VersionFeedback(version, 0, 0)) for version in versions}
