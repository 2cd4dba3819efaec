"""One Slack alert per incident, not one per failed run.

A job that keeps failing the same way (a tampered audit seal fails every seal run; a store that
is down fails every backup until it is back) is one incident. The on-call engineer needs to hear
about it once, to be reminded while it lasts, and to hear when it is over, not to get a message
per run. An incident is keyed by the job, its failed steps and its error sentence, so a
different failure of the same job is a new incident. It ends when a later run of the job
succeeds.

Plain Python over a JSON-able dict, so the failure sensor can keep it in its cursor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

# While an incident lasts, a failed run repeats the alert at most this often.
REMIND_EVERY = timedelta(hours=4)
# An incident with no failed run for this long is forgotten (its job was probably stopped).
FORGET_AFTER = timedelta(days=7)
# How much of the error sentence identifies the incident; the rest may carry counts or times.
KEY_ERROR_CHARS = 300


class Decision(Enum):
    """What a failed run of a known or new incident calls for."""

    ALERT = "alert"  # the first alert of a new incident
    REMIND = "remind"  # the incident goes on, and the last alert is REMIND_EVERY old
    QUIET = "quiet"  # the incident goes on, and its alert is recent (or still being delivered)


def incident_key(job: str, steps: Sequence[str], error: str) -> str:
    """A short stable id for "this job failing in these steps with this sentence"."""
    text = "\0".join([job, ",".join(sorted(steps)), error.strip()[:KEY_ERROR_CHARS]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Incident:
    key: str
    job: str
    summary: str
    since: float  # when its first failed run was seen (epoch seconds)
    last_failed_at: float
    failed_runs: int = 1
    # When Slack last accepted an alert for it; None while the first alert is undelivered.
    alerted_at: float | None = None

    @property
    def since_text(self) -> str:
        """When it started, as alerts print it."""
        return datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M UTC")


class Incidents:
    """The open incidents, loaded from and dumped back to the sensor's cursor."""

    def __init__(self, raw: dict | None = None) -> None:
        self._open: dict[str, Incident] = {}
        for key, data in (raw or {}).items():
            try:
                self._open[key] = Incident(**data)
            except TypeError:
                continue  # an entry from another version: forgetting it costs one repeat alert

    def dump(self) -> dict[str, dict]:
        return {key: asdict(incident) for key, incident in self._open.items()}

    def __iter__(self) -> Iterator[Incident]:
        return iter(list(self._open.values()))

    def get(self, key: str) -> Incident | None:
        return self._open.get(key)

    def on_failed_run(self, key: str, job: str, summary: str, failed_at: float) -> Decision:
        """Count a failed run against its incident and say whether to alert."""
        incident = self._open.get(key)
        if incident is None:
            self._open[key] = Incident(key, job, summary, since=failed_at, last_failed_at=failed_at)
            return Decision.ALERT
        incident.failed_runs += 1
        incident.last_failed_at = max(incident.last_failed_at, failed_at)
        if incident.alerted_at is None:
            return Decision.QUIET  # its first alert is pending and will be retried on its own
        if failed_at - incident.alerted_at >= REMIND_EVERY.total_seconds():
            return Decision.REMIND
        return Decision.QUIET

    def alerted(self, key: str, at: float) -> None:
        """Slack accepted an alert (first or reminder) for this incident."""
        incident = self._open.get(key)
        if incident is not None:
            incident.alerted_at = at

    def close(self, key: str) -> None:
        self._open.pop(key, None)

    def forget_stale(self, now: float) -> list[Incident]:
        """Drop incidents whose job has not failed for FORGET_AFTER; returns them."""
        stale = [
            i for i in self._open.values() if now - i.last_failed_at > FORGET_AFTER.total_seconds()
        ]
        for incident in stale:
            self._open.pop(incident.key)
        return stale
