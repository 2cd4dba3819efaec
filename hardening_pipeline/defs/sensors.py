"""Slack alert for every failed run, delivered at least once and at most once per run.

Dagster's ``run_failure_sensor`` (and ``make_slack_on_run_failure_sensor`` on top of it)
advances its cursor even when the sensor raises, so an alert that Slack did not accept is lost
for good, and it alerts on runs the daemon is about to retry. This sensor keeps its own cursor
instead, in the sensor's JSON cursor, which Dagster stores only when a tick completes:

* ``watermark``: the update time of the last failed run that was dealt with; each tick asks the
  run storage for failed runs updated after it (minus an overlap for late-committed updates),
  oldest first.
* ``handled``: run id -> when it was dealt with, for the overlap window and for runs whose
  update time moves later (a tag added after the failure): a run id in here is never alerted
  again. Entries are forgotten after a week.

A run counts as dealt with only once Slack answered ``ok``, or when it is tagged
``dagster/will_retry=true`` (its retry will alert if it fails too). At the first alert Slack
does not accept the tick stops and keeps the watermark before that run, so the next tick sends
it again; nothing after it is skipped either.
"""

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster import DagsterEventType

from hardening_pipeline.alerts.slack import Alert
from hardening_pipeline.defs.resources import SlackAlertsResource
from hardening_pipeline.settings import load_settings

log = logging.getLogger(__name__)

CURSOR_VERSION = 1
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
# Dagster's system run tags, by their documented names (the constants live in a private module).
PARTITION_NAME_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"
MAX_ERROR_CHARS = 1500


@dataclass
class AlertCursor:
    """The sensor's memory between ticks; see the module docstring."""

    watermark: float
    handled: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, raw: str | None, now: datetime) -> "AlertCursor":
        if raw:
            try:
                data = json.loads(raw)
                if data.get("v") == CURSOR_VERSION:
                    return cls(float(data["watermark"]), dict(data["handled"]))
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable failure-alert cursor %r; starting over", raw[:200])
        return cls((now - FIRST_TICK_LOOKBACK).timestamp())

    def dump(self) -> str:
        return json.dumps(
            {"v": CURSOR_VERSION, "watermark": self.watermark, "handled": self.handled},
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


def build_failure_alert(
    instance: dg.DagsterInstance, run: dg.DagsterRun, webserver_url: str
) -> Alert:
    """What failed, where, why, and the link to the run in the Dagster UI."""
    steps, errors, run_message = failure_details(instance, run.run_id)
    error = errors[0].split(": ", 1)[-1] if errors else run_message
    fields = [("Job", run.job_name), ("Run", run.run_id)]
    fields.append(("Failed steps", ", ".join(steps) if steps else "none (the run itself failed)"))
    partition = run.tags.get(PARTITION_NAME_TAG)
    if partition:
        fields.append(("Partition", partition))
    details = [line[:MAX_ERROR_CHARS] for line in errors] or [run_message[:MAX_ERROR_CHARS]]
    return Alert(
        title=f"Dagster run failed: {run.job_name}",
        status="failure",
        summary=(
            f"Run {run.run_id[:8]} of {run.job_name} failed"
            + (f" in {', '.join(steps)}" if steps else "")
            + f": {error[:MAX_ERROR_CHARS] or 'no error message was recorded'}"
        ),
        fields=fields,
        details=details,
        links=[("Open the run in Dagster", f"{webserver_url}/runs/{run.run_id}")],
    )


@dg.sensor(
    name="slack_on_run_failure",
    description=(
        "Posts one Slack alert per failed run (job, failed steps, error, link). A run is "
        "marked alerted only after Slack accepted the message, so alerts survive a Slack "
        "outage; runs tagged dagster/will_retry=true are skipped."
    ),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def slack_on_run_failure(
    context: dg.SensorEvaluationContext, slack: SlackAlertsResource
) -> dg.SkipReason:
    """One tick: alert the failed runs not yet alerted, oldest first, stopping at Slack errors."""
    now = datetime.now(UTC)
    cursor = AlertCursor.load(context.cursor, now)
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
        # Enough to get past every run already handled inside the overlap window.
        limit=len(cursor.handled) + MAX_ALERTS_PER_TICK,
    )
    sent: list[str] = []
    skipped: list[str] = []
    stopped = ""
    for record in records:
        run = record.dagster_run
        updated = record.update_timestamp.timestamp()
        if run.run_id not in cursor.handled:
            will_retry = run.tags.get(WILL_RETRY_TAG)
            if will_retry == "true":
                skipped.append(run.run_id)
            elif (
                will_retry is None
                and instance.run_retries_enabled
                and now - record.update_timestamp < RETRY_DECISION_WAIT
            ):
                stopped = f"run {run.run_id} is waiting for its retry decision"
                break
            elif len(sent) >= MAX_ALERTS_PER_TICK:
                stopped = "alert limit for one tick reached"
                break
            else:
                result = notifier.send(build_failure_alert(instance, run, webserver_url))
                if not result.delivered:
                    stopped = (
                        f"Slack did not accept the alert for run {run.run_id}: {result.detail}"
                    )
                    break
                sent.append(run.run_id)
            cursor.handled[run.run_id] = now.timestamp()
        cursor.watermark = max(cursor.watermark, updated)
    forget_before = (now - REMEMBER_HANDLED).timestamp()
    cursor.handled = {k: v for k, v in cursor.handled.items() if v >= forget_before}
    context.update_cursor(cursor.dump())
    if stopped:
        context.log.warning(f"{stopped}; it will be tried again on the next tick")
    parts = [f"alerted {len(sent)} failed run(s)"]
    if skipped:
        parts.append(f"skipped {len(skipped)} that will be retried")
    if stopped:
        parts.append(f"stopped: {stopped}; will try again next tick")
    return dg.SkipReason("; ".join(parts))
