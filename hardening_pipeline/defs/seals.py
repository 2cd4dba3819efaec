"""Audit seals as a Dagster asset: sealed every minute by a sensor, on demand by a job.

The work is ``hardening_pipeline.jobs.seal`` (the same function ``hardening seal`` calls): seal
what is new, then verify the whole chain against the store copies, the key and the anchor, which
the daily status report cannot do on its own (it reads only the database). Verification records
each full re-hash (``hardening.audit_seal_checks``), so later passes re-hash only seals whose rows
changed version, plus each seal once every ``RECHECK_AFTER``.

The unsealed window (what a superuser could rewrite unseen) must stay about a minute, but a run a
minute would be 1,440 runs a day burying every other run. So ``audit_seal_sensor`` seals inside
its own tick, every minute, and records the seals as materializations of ``audit_seal`` and the
chain's state as the ``seal_chain_intact`` check: no runs at all. A broken chain is one incident
(``hardening_pipeline.alerts.incidents``): one Slack message with the sentence and the first bad
id, a reminder while it lasts, "resolved" when the chain verifies again. Before the kit's schema
exists the sensor waits and says which job to launch. ``audit_seal_job`` seals on demand from
the Launchpad. No ``from __future__ import annotations``: Dagster inspects the annotations.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg

from hardening_pipeline.alerts.incidents import Decision, Incident, Incidents, incident_key
from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.alerts.slack import Alert
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.defs.failures import failure, job_failure, runbook_metadata
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.hardening.seals.horizon import seal_interval_seconds
from hardening_pipeline.jobs.seal import SealJobResult, seal_job, sealing_not_ready
from hardening_pipeline.jobs.wiring import seal_anchor_path

SEAL_ACTOR = "dagster:audit_seal"
SENSOR_NAME = "audit_seal_sensor"
SEAL_INTERVAL_SECONDS = seal_interval_seconds()
RUNBOOK_ANCHOR = "status-audit-seal-chain"
ASSET_KEY = dg.AssetKey("audit_seal")
CHECK_NAME = "seal_chain_intact"


def seal_metadata(job: SealJobResult, store: BackupStore) -> dict[str, dg.MetadataValue]:
    """What one sealing pass did; the newest seal's number and digest only when there is one."""
    run = job.run
    assert run is not None  # sealing was asked for
    metadata = {
        "summary": dg.MetadataValue.text(run.summary()),
        "new_seals": dg.MetadataValue.int(len(run.seals)),
        "rows_sealed": dg.MetadataValue.int(run.rows),
        "sealed_through_id": dg.MetadataValue.int(run.horizon.to_id),
        "held_back_by": dg.MetadataValue.json(list(run.horizon.held_back_by)),
        "store": dg.MetadataValue.text(store.describe()),
    }
    if run.latest is not None:
        metadata["latest_seq"] = dg.MetadataValue.int(run.latest.seq)
        metadata["latest_digest"] = dg.MetadataValue.text(run.latest.digest.hex())
    return metadata


def chain_description(job: SealJobResult) -> str:
    return job.verification.detail if job.passed else f"{job.subject}: {job.failure}"


def chain_metadata(job: SealJobResult, runbook_base_url: str | None) -> dict:
    verification = job.verification
    return {
        # An id, not a quantity: text, so it is never plotted as a metric.
        "first_bad_id": dg.MetadataValue.text(
            "none" if verification.first_bad_id is None else str(verification.first_bad_id)
        ),
        "seals": dg.MetadataValue.int(verification.seals),
        "rows_verified": dg.MetadataValue.int(verification.rows),
        "seals_rehashed": dg.MetadataValue.int(verification.rehashed_seals),
        "rows_rehashed": dg.MetadataValue.int(verification.rehashed_rows),
        "runbook": runbook_metadata(RUNBOOK_ANCHOR, runbook_base_url),
    }


@dg.asset(
    group_name="hardening",
    kinds={"postgres"},
    deps=[dg.AssetKey("database_schema"), dg.AssetKey(["app", "audit_events"])],
    check_specs=[
        dg.AssetCheckSpec(
            "seal_chain_intact",
            asset="audit_seal",
            blocking=True,
            description=(
                "Every sealed audit row still hashes to its seal, and every seal matches its "
                "MAC'd copy in the backup store."
            ),
        )
    ],
    description=(
        "Hashes the audit_events rows added since the last seal (up to the newest id no open "
        "transaction can still write below) into a "
        "digest chained to the previous seal; stores it in hardening.audit_seals and as "
        "`seals/<seq>.json` in the backup store, then verifies the whole chain. If a sealed row "
        "was changed, deleted or back-dated, the blocking seal_chain_intact check fails with "
        "the first bad id and the run fails (Slack alert); see docs/runbook.md."
    ),
)
def audit_seal(
    context: dg.AssetExecutionContext,
    app_db: AppDatabaseResource,
    backup_store: BackupStoreResource,
    encryption_keys: EncryptionKeysResource,
) -> Iterator[dg.MaterializeResult]:
    try:
        settings = app_db.settings()
        keyring = encryption_keys.keyring(settings)
        store = backup_store.open()
        job = seal_job(
            app_db.url(),
            store=store,
            keyring=keyring,
            actor=SEAL_ACTOR,
            anchor_path=seal_anchor_path(settings, app_db.url()),
        )
    except HardeningError as exc:
        # A missing key or an unreachable store: one sentence, as the other jobs give, not
        # Dagster's wrapped error with the store client's traceback.
        raise job_failure(exc, "audit seal", runbook_anchor=RUNBOOK_ANCHOR) from None
    run = job.run
    assert run is not None  # sealing was asked for
    context.log.info(run.summary())
    if run.horizon.held_back_by:
        context.log.warning(
            "open transaction(s) held the seal back: "
            + ", ".join(map(str, run.horizon.held_back_by))
            + (f" ({'; '.join(run.horizon.holders)})" if run.horizon.holders else "")
        )
    runbook_base_url = settings.runbook_url
    yield dg.MaterializeResult(
        metadata=seal_metadata(job, store),
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_NAME,
                passed=job.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=chain_description(job),
                metadata=chain_metadata(job, runbook_base_url),
            )
        ],
    )
    if not job.passed:
        # Raised after the check result is recorded, so the run fails with the sentence and the
        # first bad id rather than Dagster's DagsterAssetCheckFailedError.
        raise failure(job.subject, job.failure or "", runbook_anchor=RUNBOOK_ANCHOR)


audit_seal_job = dg.define_asset_job(
    "audit_seal_job",
    selection=dg.AssetSelection.assets(audit_seal),
    description="Seal the new audit rows and verify the seal chain against the backup store.",
)


@dataclass
class SealSensorState:
    """The sensor's memory between ticks: the chain's last state and its open incidents."""

    passed: bool | None = None
    incidents: Incidents = field(default_factory=Incidents)

    @classmethod
    def load(cls, raw: str | None) -> "SealSensorState":
        try:
            data = json.loads(raw) if raw else {}
            return cls(data.get("passed"), Incidents(data.get("incidents") or {}))
        except (ValueError, AttributeError):
            return cls()  # an unreadable cursor costs one repeated alert at most

    def dump(self) -> str:
        return json.dumps({"passed": self.passed, "incidents": self.incidents.dump()})


def seal_alert(
    sentence: str, job: SealJobResult | None, runbook_base_url: str | None, ongoing: Incident | None
) -> Alert:
    """The incident's message: the sentence first, the first bad id, the runbook."""
    fields = [("Runbook", runbook_link(RUNBOOK_ANCHOR, runbook_base_url))]
    if job is not None and job.verification.first_bad_id is not None:
        fields.insert(0, ("First bad id", str(job.verification.first_bad_id)))
    summary = sentence
    if ongoing is not None:
        summary = f"Still failing since {ongoing.since_text}: {sentence}"
    return Alert(
        title="Audit seal chain broken" if ongoing is None else "Audit seal: still failing",
        status="failure",
        summary=summary,
        fields=fields,
    )


def _alert_incident(
    state: SealSensorState,
    sentence: str,
    job: SealJobResult | None,
    slack: SlackAlertsResource,
    now: float,
) -> str:
    # The chain's sentence carries counts that move from tick to tick; what identifies a
    # tampering incident is its first bad id.
    identity = sentence
    if job is not None and job.verification.first_bad_id is not None:
        identity = f"first bad id {job.verification.first_bad_id}"
    key = incident_key(SENSOR_NAME, [], identity)
    decision = state.incidents.on_failed_run(key, SENSOR_NAME, sentence, now)
    incident = state.incidents.get(key)
    assert incident is not None
    if decision is Decision.QUIET and incident.alerted_at is not None:
        return "already alerted"
    ongoing = incident if decision is Decision.REMIND else None
    result = slack.notifier().send(seal_alert(sentence, job, slack.runbook_base_url(), ongoing))
    if not result.delivered:
        return f"alert NOT delivered ({result.detail}); tried again next tick"
    state.incidents.alerted(key, now)
    return "reminder sent" if ongoing else "alert sent"


def _resolve_incidents(state: SealSensorState, slack: SlackAlertsResource, detail: str) -> str:
    resolved = 0
    notifier = slack.notifier()
    for incident in state.incidents:
        if incident.alerted_at is None:
            # Broken and healed before Slack took the alert: still tell it, first.
            late = seal_alert(incident.summary, None, slack.runbook_base_url(), None)
            if not notifier.send(late).delivered:
                continue
        alert = Alert(
            title="Resolved: audit seal chain",
            status="resolved",
            summary=f"{detail} (was: {incident.summary})",
        )
        if notifier.send(alert).delivered:
            state.incidents.close(incident.key)
            resolved += 1
    return f"resolved {resolved} incident(s)" if resolved else ""


@dg.sensor(
    name=SENSOR_NAME,
    minimum_interval_seconds=SEAL_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every minute, inside the tick (no run): seal the audit rows added since the last "
        "seal, verify the chain, record new seals on audit_seal and the chain's state on "
        "seal_chain_intact. A broken chain alerts Slack once, with the first bad id, then a "
        "reminder every 4 hours and 'resolved' when it verifies again. Waits, without "
        "alerting, until database_schema_job has installed the kit."
    ),
)
def audit_seal_sensor(
    context: dg.SensorEvaluationContext,
    app_db: AppDatabaseResource,
    backup_store: BackupStoreResource,
    encryption_keys: EncryptionKeysResource,
    slack: SlackAlertsResource,
) -> dg.SensorResult:
    now = datetime.now(UTC).timestamp()
    state = SealSensorState.load(context.cursor)
    try:
        settings = app_db.settings()
        url = app_db.url()
        waiting = sealing_not_ready(url)
        if waiting:
            return dg.SensorResult(
                skip_reason=(
                    f"{waiting}: launch database_schema_job (what `hardening migrate` does); "
                    "sealing starts on the next tick after it"
                ),
                cursor=state.dump(),
            )
        keyring = encryption_keys.keyring(settings)
        store = backup_store.open()
        job = seal_job(
            url,
            store=store,
            keyring=keyring,
            actor=f"dagster:{SENSOR_NAME}",
            anchor_path=seal_anchor_path(settings, url),
        )
    except HardeningError as exc:
        # A missing key or an unreachable store stops sealing: an incident of its own.
        sentence = f"audit sealing failed: {exc}"
        said = _alert_incident(state, sentence, None, slack, now)
        return dg.SensorResult(skip_reason=f"{sentence} ({said})", cursor=state.dump())
    assert job.run is not None
    events: list = []
    if job.run.seals:
        events.append(
            dg.AssetMaterialization(asset_key=ASSET_KEY, metadata=seal_metadata(job, store))
        )
    if job.run.seals or state.passed is not job.passed:
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=ASSET_KEY,
                check_name=CHECK_NAME,
                passed=job.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=chain_description(job),
                metadata=chain_metadata(job, settings.runbook_url),
            )
        )
    state.passed = job.passed
    said = (
        _alert_incident(state, chain_description(job), job, slack, now)
        if not job.passed
        else _resolve_incidents(
            state, slack, f"the audit seal chain verifies again: {job.verification.detail}"
        )
    )
    context.log.info(job.run.summary())
    return dg.SensorResult(
        skip_reason="; ".join(
            part for part in (job.run.summary(), chain_description(job), said) if part
        ),
        asset_events=events,
        cursor=state.dump(),
    )
