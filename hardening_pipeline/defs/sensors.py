"""Slack alert for every failed run, delivered at least once and at most once per run.

Dagster's ``run_failure_sensor`` (and ``make_slack_on_run_failure_sensor`` on top of it)
advances its cursor even when the sensor raises, so an alert that Slack did not accept is lost
for good, and it alerts on runs the daemon is about to retry. This sensor keeps its own cursor
instead, in the sensor's JSON cursor, which Dagster stores only when a tick completes:

* ``watermark``: the update time of the last failed run that was looked at; each tick asks the
  run storage for failed runs updated after it (minus an overlap for late-committed updates),
  oldest first.
* ``handled``: run id -> when it was dealt with, for the overlap window and for runs whose
  update time moves later (a tag added after the failure): a run id in here is never alerted
  again. Entries are forgotten after a week.
* ``pending``: run id -> the alert Slack has not accepted yet (since when, how many attempts,
  the last answer). Each run waits on its own: an alert Slack refuses never holds back the
  alerts of other runs, and pending ones are tried again on every tick until delivered or a
  week old.

* ``incidents``: failures that repeat run after run are one incident
  (``hardening_pipeline.alerts.incidents``): the first failed run alerts, later ones with the
  same job, steps and sentence stay quiet except for a "still failing" reminder every
  ``REMIND_EVERY``, and the job's next successful run sends "resolved".

A run counts as dealt with only once Slack answered ``ok``, when it is tagged
``dagster/will_retry=true`` (its retry will alert if it fails too), when its job already
delivered its own alert for it (tagged ``hardening/alerted=true``: the drill and the canaries
alert on their own, so a second "run failed" message would repeat them), or when it belongs to
an incident that was alerted recently. Whenever the set of
pending alerts changes the tick reports the ``failed_runs_alerted`` check on the
``slack_failure_alerts`` asset, so an undelivered alert shows as a warning in the UI rather
than only in tick logs.
"""

import json
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster import DagsterEventType

from hardening_pipeline.alerts.incidents import Decision, Incident, Incidents, incident_key
from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.alerts.slack import NO_WEBHOOK_REASON, Alert
from hardening_pipeline.defs.failures import ALERTED_BY_JOB_TAG, runbook_metadata
from hardening_pipeline.defs.resources import SlackAlertsResource
from hardening_pipeline.settings import load_settings

log = logging.getLogger(__name__)

CURSOR_VERSION = 3
# On the very first tick, failures this recent are still alerted (a fresh deploy after an
# outage should not swallow the failure that caused it).
FIRST_TICK_LOOKBACK = timedelta(hours=24)
# Run updates are timestamped before they commit, so one can appear slightly "in the past".
OVERLAP = timedelta(minutes=10)
REMEMBER_HANDLED = timedelta(days=7)
# With run retries on, the failure event and the dagster/will_retry tag are written one after
# the other; a run seen in between waits this long for the tag before it is alerted anyway.
RETRY_DECISION_WAIT = timedelta(minutes=2)
MAX_ALERTS_PER_TICK = 20
# After this many undelivered alerts in a row Slack is taken to be down for this tick: the rest
# wait as pending instead of each waiting out its own timeout.
MAX_UNDELIVERED_IN_A_ROW = 3
SENSOR_NAME = "slack_on_run_failure"
ALERTS_ASSET_KEY = dg.AssetKey("slack_failure_alerts")
ALERTS_CHECK_NAME = "failed_runs_alerted"
# Dagster's system run tags, by their documented names (the constants live in a private module).
PARTITION_NAME_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"
MAX_ERROR_CHARS = 1500
# The runbook section for each job's failure, linked from its Slack alert.
JOB_RUNBOOK_ANCHORS = {
    "nightly_backup_job": "backup-failed",
    "backup_freshness_job": "backup-stale",
    "restore_drill_job": "restore-drill-failed",
    "audit_seal_job": "status-audit-seal-chain",
    "database_schema_job": "migration-blocked",
    "canary_job": "canaries",
}


@dataclass
class AlertCursor:
    """The sensor's memory between ticks; see the module docstring."""

    watermark: float
    handled: dict[str, float] = field(default_factory=dict)
    pending: dict[str, dict] = field(default_factory=dict)
    incidents: Incidents = field(default_factory=Incidents)

    @classmethod
    def load(cls, raw: str | None, now: datetime) -> "AlertCursor":
        if raw:
            try:
                data = json.loads(raw)
                if data.get("v") in (1, 2, CURSOR_VERSION):
                    return cls(
                        float(data["watermark"]),
                        dict(data["handled"]),
                        dict(data.get("pending") or {}),
                        Incidents(data.get("incidents") or {}),
                    )
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable failure-alert cursor %r; starting over", raw[:200])
        return cls((now - FIRST_TICK_LOOKBACK).timestamp())

    def dump(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "watermark": self.watermark,
                "handled": self.handled,
                "pending": self.pending,
                "incidents": self.incidents.dump(),
            },
            sort_keys=True,
        )


def _error_text(error: object) -> str:
    """The most specific message of a SerializableErrorInfo chain (the user's exception)."""
    messages = []
    while error is not None:
        message = (getattr(error, "message", "") or "").strip()
        if message:
            messages.append(message)
        error = getattr(error, "cause", None)
    return messages[-1] if messages else ""


def failure_details(instance: dg.DagsterInstance, run_id: str) -> tuple[list[str], list[str], str]:
    """Failed step keys, one error line per step, and the run-level failure message."""
    steps: list[str] = []
    errors: list[str] = []
    run_message = ""
    for entry in instance.all_logs(
        run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
    ):
        event = entry.dagster_event
        if event is None:
            continue
        data = event.event_specific_data
        if event.event_type == DagsterEventType.STEP_FAILURE:
            step = event.step_key or "?"
            user = getattr(data, "user_failure_data", None)
            text = (getattr(user, "description", None) or "") or _error_text(
                getattr(data, "error", None)
            )
            if step not in steps:
                steps.append(step)
            errors.append(f"{step}: {text}")
        else:
            run_message = _error_text(getattr(data, "error", None)) or entry.message or ""
    return steps, errors, run_message


def job_runbook(job_name: str) -> list[tuple[str, str]]:
    """The runbook link for a job's failure alert, where the runbook has a section for it."""
    anchor = JOB_RUNBOOK_ANCHORS.get(job_name)
    if anchor is None:
        return []
    return [("Runbook", runbook_link(anchor, load_settings().runbook_url))]


def build_failure_alert(
    instance: dg.DagsterInstance, run: dg.DagsterRun, webserver_url: str
) -> tuple[Alert, str]:
    """What failed, where, why, the runbook and the run's link; and the incident it belongs to."""
    steps, errors, run_message = failure_details(instance, run.run_id)
    error = errors[0].split(": ", 1)[-1] if errors else run_message
    fields = [("Job", run.job_name), ("Run", run.run_id)]
    fields.append(("Failed steps", ", ".join(steps) if steps else "none (the run itself failed)"))
    partition = run.tags.get(PARTITION_NAME_TAG)
    if partition:
        fields.append(("Partition", partition))
    details = [line[:MAX_ERROR_CHARS] for line in errors] or [run_message[:MAX_ERROR_CHARS]]
    alert = Alert(
        title=f"Dagster run failed: {run.job_name}",
        status="failure",
        summary=(
            f"Run {run.run_id[:8]} of {run.job_name} failed"
            + (f" in {', '.join(steps)}" if steps else "")
            + f": {error[:MAX_ERROR_CHARS] or 'no error message was recorded'}"
        ),
        fields=fields,
        details=details,
        links=[
            *job_runbook(run.job_name),
            ("Open the run in Dagster", f"{webserver_url}/runs/{run.run_id}"),
        ],
    )
    return alert, incident_key(run.job_name, steps, error)


def reminder_alert(alert: Alert, incident: Incident, job_name: str) -> Alert:
    """A run's failure alert as the "still failing" reminder of the incident it belongs to."""
    return replace(
        alert,
        title=f"Still failing: {job_name}",
        summary=(
            f"Failing since {incident.since_text} ({incident.failed_runs} failed runs); "
            f"the latest: {alert.summary}"
        ),
    )


def resolved_alert(incident: Incident, run: dg.DagsterRun, webserver_url: str) -> Alert:
    """The incident is over: its job succeeded again."""
    return Alert(
        title=f"Resolved: {incident.job}",
        status="resolved",
        summary=(
            f"{incident.job} succeeded again (run {run.run_id[:8]}) after failing since "
            f"{incident.since_text} ({incident.failed_runs} failed runs): {incident.summary}"
        )[:MAX_ERROR_CHARS],
        fields=[("Job", incident.job), ("Run", run.run_id)],
        links=[("Open the run in Dagster", f"{webserver_url}/runs/{run.run_id}")],
    )


def undelivered_sentence(detail: str) -> str:
    """Why Slack has not got an alert, as a sentence for the UI rather than a Python repr."""
    if detail == NO_WEBHOOK_REASON:
        return f"{detail}: set it to the channel's incoming webhook URL."
    if detail.startswith("Slack answered") or detail.startswith("no answer within"):
        return f"{detail}; the sensor tries again every tick."[:300]
    errno = re.search(r"\[Errno -?\d+\] ([^>\]]+)", detail)
    reason = errno.group(1).strip().lower() if errno else detail.split(": ", 1)[-1][:120]
    return (
        f"Slack could not be reached ({reason}); check SLACK_WEBHOOK_URL and the network to "
        "hooks.slack.com, the sensor tries again every tick."
    )


def pending_check_evaluation(cursor: AlertCursor, now: datetime) -> dg.AssetCheckEvaluation:
    """The ``failed_runs_alerted`` check: a warning while any failed run's alert is pending."""
    pending = cursor.pending
    oldest = min((entry["since"] for entry in pending.values()), default=None)
    if pending:
        description = (
            f"{len(pending)} failed run(s) have no Slack alert yet (Slack did not accept it); "
            "check SLACK_WEBHOOK_URL and Slack's status, the sensor tries again every tick."
        )
    else:
        description = "Every failed run has been alerted in Slack."
    return dg.AssetCheckEvaluation(
        asset_key=ALERTS_ASSET_KEY,
        check_name=ALERTS_CHECK_NAME,
        passed=not pending,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata={
            "pending_alerts": dg.MetadataValue.int(len(pending)),
            "oldest_pending_seconds": dg.MetadataValue.float(
                round(now.timestamp() - oldest, 1) if oldest is not None else 0.0
            ),
            "pending_runs": dg.MetadataValue.json(
                {run_id: entry.get("error", "") for run_id, entry in sorted(pending.items())}
            ),
            "runbook": runbook_metadata("failure-alerts-pending", load_settings().runbook_url),
        },
    )


slack_failure_alerts = dg.AssetSpec(
    ALERTS_ASSET_KEY,
    group_name="alerts",
    kinds={"slack"},
    description=(
        "The Slack alerts the slack_on_run_failure sensor sends for failed runs. Its "
        "failed_runs_alerted check warns while an alert is waiting for Slack to accept it; the "
        "sensor reports it whenever that changes."
    ),
)


@dg.asset_check(
    asset=ALERTS_ASSET_KEY,
    name=ALERTS_CHECK_NAME,
    description="Every failed run has reached Slack (read from the failure sensor's state).",
)
def failed_runs_alerted(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    cursor_text = None
    for state in context.instance.all_instigator_state():
        if state.instigator_name == SENSOR_NAME and state.instigator_data is not None:
            cursor_text = getattr(state.instigator_data, "cursor", None)
    now = datetime.now(UTC)
    evaluation = pending_check_evaluation(AlertCursor.load(cursor_text, now), now)
    return dg.AssetCheckResult(
        passed=evaluation.passed,
        severity=evaluation.severity,
        description=evaluation.description,
        metadata=evaluation.metadata,
    )


@dg.sensor(
    name=SENSOR_NAME,
    description=(
        "Posts one Slack alert per failed run (job, failed steps, error, link). A run is "
        "marked alerted only after Slack accepted the message; until then its alert is kept "
        "pending, on its own, and the slack_failure_alerts asset's check warns. Runs tagged "
        "dagster/will_retry=true are skipped."
    ),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def slack_on_run_failure(
    context: dg.SensorEvaluationContext, slack: SlackAlertsResource
) -> dg.SensorResult:
    """One tick: alert new failed runs, then retry pending alerts; each run on its own."""
    now = datetime.now(UTC)
    first_tick = context.cursor is None
    cursor = AlertCursor.load(context.cursor, now)
    pending_before = set(cursor.pending)
    instance = context.instance
    webserver_url = load_settings().webserver_url
    notifier = slack.notifier()
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE],
            updated_after=datetime.fromtimestamp(cursor.watermark, UTC) - OVERLAP,
        ),
        order_by="update_timestamp",
        ascending=True,
        # Enough to get past every run already handled or pending inside the overlap window.
        limit=len(cursor.handled) + len(cursor.pending) + MAX_ALERTS_PER_TICK,
    )
    sent: list[str] = []
    skipped: list[str] = []
    quiet: list[str] = []
    undelivered: list[str] = []
    resolved: list[str] = []
    in_a_row = 0
    stopped = ""
    incidents = cursor.incidents

    def slack_refused_before() -> bool:
        return in_a_row >= MAX_UNDELIVERED_IN_A_ROW or len(sent) + len(undelivered) >= (
            MAX_ALERTS_PER_TICK
        )

    def deliver(alert: Alert) -> tuple[bool, str]:
        nonlocal in_a_row
        result = notifier.send(alert)
        in_a_row = 0 if result.delivered else in_a_row + 1
        return result.delivered, str(result.detail)

    def attempt(run: dg.DagsterRun, entry: dict, alert: Alert, key: str) -> None:
        """Send one pending alert; ``entry`` is its record in ``cursor.pending``."""
        if slack_refused_before():
            entry["error"] = entry["error"] or "not tried yet: Slack refused the alerts before it"
            return
        delivered, detail = deliver(alert)
        if delivered:
            sent.append(run.run_id)
            cursor.pending.pop(run.run_id, None)
            cursor.handled[run.run_id] = now.timestamp()
            incidents.alerted(key, now.timestamp())
        else:
            undelivered.append(run.run_id)
            entry["attempts"] = int(entry.get("attempts", 0)) + 1
            entry["error"] = undelivered_sentence(detail)

    for record in records:
        run = record.dagster_run
        if run.run_id not in cursor.handled and run.run_id not in cursor.pending:
            will_retry = run.tags.get(WILL_RETRY_TAG)
            failed_at = record.update_timestamp.timestamp()
            if will_retry == "true":
                skipped.append(run.run_id)
                cursor.handled[run.run_id] = now.timestamp()
            elif (
                will_retry is None
                and instance.run_retries_enabled
                and now - record.update_timestamp < RETRY_DECISION_WAIT
            ):
                stopped = f"run {run.run_id} is waiting for its retry decision"
                break
            elif run.tags.get(ALERTED_BY_JOB_TAG) == "true":
                quiet.append(run.run_id)
                cursor.handled[run.run_id] = now.timestamp()
            else:
                alert, key = build_failure_alert(instance, run, webserver_url)
                decision = incidents.on_failed_run(key, run.job_name, alert.summary, failed_at)
                if decision is Decision.QUIET:
                    quiet.append(run.run_id)
                    cursor.handled[run.run_id] = now.timestamp()
                else:
                    remind = decision is Decision.REMIND
                    incident = incidents.get(key)
                    if remind and incident is not None:
                        alert = reminder_alert(alert, incident, run.job_name)
                    entry = {
                        "since": now.timestamp(),
                        "failed_at": failed_at,
                        "attempts": 0,
                        "error": "",
                        "incident": key,
                        "remind": remind,
                    }
                    cursor.pending[run.run_id] = entry
                    attempt(run, entry, alert, key)
        cursor.watermark = max(cursor.watermark, record.update_timestamp.timestamp())
    # Alerts left over from earlier ticks, oldest first, after the new ones: a run whose alert
    # Slack keeps refusing must not hold back alerts for runs that failed since.
    for run_id in sorted(
        (r for r in list(cursor.pending) if r not in sent and r not in undelivered),
        key=lambda r: cursor.pending[r].get("failed_at", cursor.pending[r]["since"]),
    ):
        run = instance.get_run_by_id(run_id)
        if run is None:
            cursor.pending.pop(run_id)
            continue
        entry = cursor.pending[run_id]
        alert, key = build_failure_alert(instance, run, webserver_url)
        incident = incidents.get(entry.get("incident", key))
        if entry.get("remind") and incident is not None:
            alert = reminder_alert(alert, incident, run.job_name)
        attempt(run, entry, alert, entry.get("incident", key))
    # An incident is over when its job succeeds after its last failure; "resolved" waits until
    # its failure alert has reached Slack, so the two never arrive the wrong way round.
    for incident in incidents:
        if incident.alerted_at is None:
            continue
        (success, *_) = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=incident.job,
                statuses=[dg.DagsterRunStatus.SUCCESS],
                updated_after=datetime.fromtimestamp(incident.last_failed_at, UTC),
            ),
            order_by="update_timestamp",
            ascending=False,
            limit=1,
        ) or [None]
        if success is None or slack_refused_before():
            continue
        delivered, _ = deliver(resolved_alert(incident, success.dagster_run, webserver_url))
        if delivered:
            resolved.append(incident.job)
            incidents.close(incident.key)
    incidents.forget_stale(now.timestamp())
    forget_before = (now - REMEMBER_HANDLED).timestamp()
    cursor.handled = {k: v for k, v in cursor.handled.items() if v >= forget_before}
    for run_id, entry in list(cursor.pending.items()):
        if entry["since"] < forget_before:
            context.log.error(f"giving up on the Slack alert for failed run {run_id}: {entry}")
            cursor.pending.pop(run_id)
    context.update_cursor(cursor.dump())
    parts = [f"alerted {len(sent)} failed run(s)"]
    if quiet:
        parts.append(
            f"{len(quiet)} more failed run(s) of incidents already alerted (or alerted by their "
            "own job)"
        )
    if resolved:
        parts.append(f"resolved: {', '.join(resolved)}")
    if skipped:
        parts.append(f"skipped {len(skipped)} that will be retried")
    if cursor.pending:
        parts.append(
            f"{len(cursor.pending)} alert(s) NOT delivered yet, kept pending and tried again "
            "next tick (see the failed_runs_alerted check)"
        )
        context.log.warning(parts[-1])
    if stopped:
        parts.append(f"stopped: {stopped}; will look again next tick")
    events = []
    # While alerts are pending, every tick reports, so the oldest pending age stays current.
    if first_tick or cursor.pending or set(cursor.pending) != pending_before:
        events.append(pending_check_evaluation(cursor, now))
    return dg.SensorResult(skip_reason="; ".join(parts), asset_events=events)
