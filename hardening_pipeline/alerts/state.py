"""Alert once per finding, again only when it changes or grows, and say when it clears.

Checks run every 15 minutes; re-posting the same finding each time trains people to mute the
channel. So each alert source (a canary, a status line) has a key, and ``hardening.alert_state``
(created by migration 005) remembers the fingerprint and size of the finding last alerted:

* failing, nothing remembered            -> send the alert
* failing, same fingerprint, not bigger  -> suppressed (until ``realert_after`` has passed)
* failing, other fingerprint, or bigger  -> send again
* passing, something remembered          -> send "resolved", then forget it
* passing, nothing remembered            -> nothing

The state lives in the database, not on a worker's disk: the CLI, cron and every Dagster run
worker share it without a volume, and updates are transactional. Each send happens under a
per-alert advisory lock, taken without waiting, with the state read again once it is held: two
concurrent runs cannot both send the same alert, and neither waits on the other's Slack calls.
A row is written (or removed) only after Slack accepted the message, so when Slack is down (or
no webhook is configured) the alert is logged as NOT DELIVERED and tried again on the next run
instead of being lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import psycopg

from hardening_pipeline.alerts.slack import Alert, SlackNotifier
from hardening_pipeline.db.connection import connect, table_exists

logger = logging.getLogger(__name__)

DEFAULT_REALERT_AFTER = timedelta(hours=24)
# First half of the two-part advisory lock key notify() takes per alert (the second half is
# hashtext(alert_key)), so its locks cannot collide with other users of advisory locks.
_NOTIFY_LOCK_CLASS = 0x0A1E575E

Action = Literal["sent", "resolved", "suppressed", "not_delivered", "nothing"]


@dataclass(frozen=True)
class TrackedFinding:
    """The current state of one alert source.

    ``alert`` is sent when failing; ``resolved_alert`` when it has just cleared. ``magnitude``
    is how big the finding is (a row count, a number of problems): a bigger one re-alerts.
    """

    key: str
    failing: bool
    fingerprint: str
    magnitude: int
    alert: Alert | None
    resolved_alert: Alert | None


@dataclass(frozen=True)
class AlertOutcome:
    """What happened to one tracked finding on this run."""

    key: str
    action: Action
    detail: str = ""

    @property
    def undelivered(self) -> bool:
        return self.action == "not_delivered"


def _decide(
    item: TrackedFinding, remembered: dict | None, now: datetime, realert_after: timedelta
) -> Alert | None:
    if not item.failing:
        return item.resolved_alert if remembered is not None else None
    if remembered is None:
        return item.alert
    same = remembered["fingerprint"] == item.fingerprint
    not_bigger = item.magnitude <= remembered["magnitude"]
    fresh = now - remembered["last_alerted_at"] < realert_after
    return None if (same and not_bigger and fresh) else item.alert


def _send_untracked(notifier: SlackNotifier, item: TrackedFinding) -> AlertOutcome:
    if not item.failing or item.alert is None:
        return AlertOutcome(item.key, "nothing")
    result = notifier.send(item.alert)
    if not result.delivered:
        return AlertOutcome(item.key, "not_delivered", result.detail)
    return AlertOutcome(item.key, "sent", "not recorded: no alert state table")


_REMEMBERED = (
    "SELECT alert_key, fingerprint, magnitude, last_alerted_at "
    "FROM hardening.alert_state WHERE alert_key = ANY(%s)"
)
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS held"
_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(%s))"


def _send_and_record(
    conn: psycopg.Connection,
    notifier: SlackNotifier,
    item: TrackedFinding,
    now: datetime,
    realert_after: timedelta,
) -> AlertOutcome:
    """Under the item's lock: decide again on the state as it is now, send, record."""
    previous = conn.execute(_REMEMBERED, ([item.key],)).fetchone()
    alert = _decide(item, previous, now, realert_after)
    if alert is None:  # another run sent or resolved it since the state was first read
        return AlertOutcome(item.key, "suppressed" if item.failing else "nothing")
    result = notifier.send(alert)
    if not result.delivered:
        return AlertOutcome(item.key, "not_delivered", result.detail)
    if item.failing:
        conn.execute(
            "INSERT INTO hardening.alert_state "
            "(alert_key, fingerprint, magnitude, summary) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (alert_key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
            "magnitude = EXCLUDED.magnitude, summary = EXCLUDED.summary, "
            "last_alerted_at = now()",
            (item.key, item.fingerprint, item.magnitude, alert.summary[:1000]),
        )
        return AlertOutcome(item.key, "sent")
    conn.execute("DELETE FROM hardening.alert_state WHERE alert_key = %s", (item.key,))
    return AlertOutcome(item.key, "resolved")


def notify(
    url: str,
    notifier: SlackNotifier,
    items: Sequence[TrackedFinding],
    *,
    realert_after: timedelta = DEFAULT_REALERT_AFTER,
) -> list[AlertOutcome]:
    """Send what needs sending for ``items`` and record what Slack accepted; never raises for Slack.

    Database errors do raise: without the state, the only safe options would be to spam or to
    stay silent, and the caller should fail loudly instead.
    """
    outcomes: list[AlertOutcome] = []
    with connect(url, autocommit=True) as conn:
        now = conn.execute("SELECT now() AS now").fetchone()["now"]
        if not table_exists(conn, "hardening.alert_state"):
            # Not migrated yet (005 pending): alert without dedup rather than not at all.
            logger.warning(
                "hardening.alert_state is missing (run hardening migrate); "
                "alerts are sent without dedup"
            )
            return [_send_untracked(notifier, item) for item in items]
        remembered = {
            r["alert_key"]: r for r in conn.execute(_REMEMBERED, ([i.key for i in items],))
        }
        for item in items:
            if _decide(item, remembered.get(item.key), now, realert_after) is None:
                outcomes.append(AlertOutcome(item.key, "suppressed" if item.failing else "nothing"))
                continue
            lock = (_NOTIFY_LOCK_CLASS, item.key)
            if not conn.execute(_TRY_LOCK, lock).fetchone()["held"]:
                outcomes.append(
                    AlertOutcome(item.key, "suppressed", "another run is sending this alert")
                )
                continue
            try:
                outcomes.append(_send_and_record(conn, notifier, item, now, realert_after))
            finally:
                conn.execute(_UNLOCK, lock)
    return outcomes
