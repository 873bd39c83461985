"""Tell people what a run did: no retrain and why; retrained, blessed or not; what the rollout did.

The exit handler runs after everything else, whatever happened, and cannot read the
outputs of tasks inside the handler's body (nor of tasks skipped by a gate). It reads
the run's outcome from what the stages record in the feedback database instead, which
works the same on a cluster and under `kfp.local`:

- `retrain_runs`: the decision row of this run (its `run_name`), with its reasons;
- `deployments`: the rollout moves of this run's `advance_rollout` (advanced, promoted,
  rolled_back), which happen after the previous run's decision and before this one's,
  and the start of a new rollout by `deploy_canary` (deployed, canary_started), which
  happens after this run's decision. The recurring run allows one run at a time, so
  these windows do not overlap.

The message is Slack-compatible JSON (`text`, plus `blocks`), sent to the webhook in
`NOTIFY_WEBHOOK_URL`. Notifying never fails the run: every error is logged (without the
URL, which is a secret) and swallowed.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

ROLLOUT_MOVES = ("advanced", "promoted", "rolled_back")
DEPLOY_STARTS = ("deployed", "canary_started")
ERROR_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    """What one run did, as far as the database and the run's final status tell.

    Attributes:
        model_name: The served model.
        run_name: The run's name (what `decide_retrain` recorded).
        state: The run's final state (SUCCEEDED, FAILED, CANCELED, ...).
        error: The run's error message; "" when none.
        decided: Whether the run got as far as the retrain decision.
        retrain: The decision; None when not decided.
        reasons: Why (each rule that fired, or why none did).
        stats: The figures the decision saw (feedback count, satisfaction, drift).
        rollout: This run's rollout moves: dicts of version, action, traffic_percent, reason.
        deployment: The rollout this run started (version, action, traffic_percent, reason); None when none.
        note: Why details are missing (e.g. the database was unreachable); "" when complete.
        dry_run: The run was a dry run: it trains and evaluates, and never publishes or deploys.
    """

    model_name: str
    run_name: str
    state: str
    error: str = ""
    decided: bool = False
    retrain: bool | None = None
    reasons: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    rollout: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] | None = None
    note: str = ""
    dry_run: bool = False

    @property
    def succeeded(self) -> bool:
        return self.state.upper() == "SUCCEEDED"


def gather(conn: Any, model_name: str, run_name: str, state: str, error: str = "") -> Outcome:
    """Reads this run's decision and rollout moves from `retrain_runs` and `deployments`."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, started_at, retrain, reasons, stats FROM retrain_runs"
            " WHERE model_name = %s AND run_name = %s ORDER BY id DESC LIMIT 1",
            (model_name, run_name),
        )
        decision = cur.fetchone()
        # The decision before this run's (or the latest one, when this run did not decide).
        if decision:
            cur.execute(
                "SELECT started_at FROM retrain_runs WHERE model_name = %s AND id < %s ORDER BY id DESC LIMIT 1",
                (model_name, decision[0]),
            )
        else:
            cur.execute("SELECT started_at FROM retrain_runs WHERE model_name = %s ORDER BY id DESC LIMIT 1", (model_name,))
        previous = cur.fetchone()
        lower = previous[0] if previous else datetime.min
        upper = decision[1] if decision else None
        cur.execute(
            "SELECT version, action, traffic_percent, reason FROM deployments WHERE model_name = %s"
            " AND at > %s AND (%s::timestamptz IS NULL OR at <= %s) AND action = ANY(%s) ORDER BY at, id",
            (model_name, lower, upper, upper, list(ROLLOUT_MOVES)),
        )
        rollout = [_row(cur, r) for r in cur.fetchall()]
        deployment = None
        if decision:
            # Up to the next run's decision, when this notification comes late.
            cur.execute(
                "SELECT started_at FROM retrain_runs WHERE model_name = %s AND id > %s ORDER BY id LIMIT 1",
                (model_name, decision[0]),
            )
            following = cur.fetchone()
            until = following[0] if following else None
            cur.execute(
                "SELECT version, action, traffic_percent, reason FROM deployments WHERE model_name = %s"
                " AND at > %s AND (%s::timestamptz IS NULL OR at < %s) AND action = ANY(%s) ORDER BY at, id LIMIT 1",
                (model_name, decision[1], until, until, list(DEPLOY_STARTS)),
            )
            found = cur.fetchone()
            deployment = _row(cur, found) if found else None
    conn.rollback()  # read-only: end the transaction psycopg2 opened
    return Outcome(
        model_name=model_name,
        run_name=run_name,
        state=state,
        error=_short(error),
        decided=decision is not None,
        retrain=bool(decision[2]) if decision else None,
        reasons=list(decision[3]) if decision else [],
        stats=dict(decision[4]) if decision else {},
        rollout=rollout,
        deployment=deployment,
    )


def _row(cur: Any, row: tuple) -> dict[str, Any]:
    return dict(zip((c.name for c in cur.description), row))


def _short(text: str) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def lines(outcome: Outcome) -> list[str]:
    """The outcome as short sentences, headline first."""
    mark = "✅" if outcome.succeeded else "❌"
    out = [f"{mark} {outcome.model_name}: run {outcome.run_name} {outcome.state.lower()}"]
    for move in outcome.rollout:
        verb = {"advanced": "canary advanced", "promoted": "promoted", "rolled_back": "ROLLED BACK"}[move["action"]]
        share = f" to {move['traffic_percent']} %" if move["action"] == "advanced" else ""
        out.append(f"rollout: {verb} {move['version']}{share} ({move['reason']})")
    if outcome.decided and not outcome.retrain:
        out.append("no retrain: " + "; ".join(outcome.reasons))
    elif outcome.decided:
        out.append("retrained: " + "; ".join(outcome.reasons))
        if outcome.deployment:
            d = outcome.deployment
            out.append(f"blessed: {d['action'].replace('_', ' ')} {d['version']} at {d['traffic_percent']} % ({d['reason']})")
        elif outcome.succeeded and outcome.dry_run:
            # Nothing is deployed in a dry run, blessed or not: saying "not blessed" would be a guess.
            out.append("dry run: the candidate was trained and evaluated (see evaluate_model's verdict); "
                       "nothing was published or deployed; production keeps serving")
        elif outcome.succeeded:
            out.append("not blessed: the candidate did not beat production; production keeps serving")
    elif outcome.succeeded:
        out.append("no retrain decision was recorded for this run")
    if not outcome.succeeded:
        out.append(f"error: {outcome.error or 'see the run in the Kubeflow UI'}")
    if outcome.note:
        out.append(f"({outcome.note})")
    return out


def slack_payload(outcome: Outcome) -> dict[str, Any]:
    """Slack-compatible JSON: `text` for any webhook, `blocks` for Slack's layout."""
    text = lines(outcome)
    return {
        "text": "\n".join(text),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text[0]}*"}},
            *([{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(f"• {t}" for t in text[1:])}}] if text[1:] else []),
        ],
    }


def post(url: str, payload: dict[str, Any], timeout: float = 10.0, attempts: int = 3) -> bool:
    """POSTs the JSON; retries server errors and timeouts. Never raises; never logs the URL."""
    body = json.dumps(payload).encode()
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (an operator-given https URL)
                log.info("notification sent (HTTP %s)", response.status)
                return True
        except urllib.error.HTTPError as err:
            problem, retry = f"the webhook answered HTTP {err.code}", err.code >= 500 or err.code == 429
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            problem, retry = f"the webhook is unreachable ({type(reason).__name__})", True
        except ValueError:
            problem, retry = "NOTIFY_WEBHOOK_URL is not a valid http(s) URL", False
        if not retry or attempt == attempts:
            log.warning("notification not sent: %s (the run is not affected)", problem)
            return False
        time.sleep(0.5 * 2 ** (attempt - 1))
    return False


def notify(
    model_name: str, run_name: str, state: str, error: str, dsn: str | None, url: str | None, dry_run: bool = False
) -> tuple[Outcome, bool]:
    """Gathers the outcome (as far as the database answers) and posts it when a URL is set.

    Returns:
        The outcome, and whether the webhook accepted the message.
    """
    outcome = Outcome(model_name, run_name, state, _short(error), note="")
    if not dsn:
        outcome = Outcome(model_name, run_name, state, _short(error), note="no DATABASE_URL: details unknown")
    else:
        try:
            from feedback_loop.feedback import store

            conn = store.connect(dsn)
            try:
                outcome = gather(conn, model_name, run_name, state, error)
            finally:
                conn.close()
        except Exception as err:  # noqa: BLE001 (a notification must never fail the run)
            log.warning("outcome details unavailable: %s", type(err).__name__)
            outcome = Outcome(model_name, run_name, state, _short(error), note="details unavailable: the feedback database did not answer")
    outcome = replace(outcome, dry_run=dry_run)
    for line in lines(outcome):
        log.info("%s", line)
    if not url:
        log.info("NOTIFY_WEBHOOK_URL is not set: the outcome is only logged")
        return outcome, False
    try:
        return outcome, post(url, slack_payload(outcome))
    except Exception as err:  # noqa: BLE001
        log.warning("notification not sent: %s (the run is not affected)", type(err).__name__)
        return outcome, False


def to_markdown(outcome: Outcome) -> str:
    text = lines(outcome)
    return "\n".join([f"# {text[0]}", "", *(f"- {t}" for t in text[1:]), ""])
