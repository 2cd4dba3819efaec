"""Audit seals every minute as a Dagster asset, with its job and schedule.

The work is ``hardening_pipeline.jobs.seal`` (the same function ``hardening seal`` calls): this
asset seals what is new, then verifies the whole chain against the store copies and the
key, which the daily status report cannot do on its own (it reads only the database). It
records each full re-hash (``hardening.audit_seal_checks``), so later runs re-hash only seals
whose rows changed version, plus each seal once every ``RECHECK_AFTER``; a rewritten unsealed
window (rewound sequence, reused or missing ids, back-dated rows) fails the seal itself. The check
is blocking with ERROR severity, so a broken chain fails the run and the run-failure sensor
alerts Slack. No ``from __future__ import annotations``: Dagster inspects the annotations.
"""

import dagster as dg

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.defs.failures import job_failure
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
)
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.jobs.seal import seal_job
from hardening_pipeline.jobs.wiring import seal_anchor_path

SEAL_ACTOR = "dagster:audit_seal"


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
) -> dg.MaterializeResult:
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
        raise job_failure(exc, "audit seal") from None
    run, verification = job.run, job.verification
    assert run is not None  # sealing was asked for
    context.log.info(run.summary())
    if run.horizon.held_back_by:
        context.log.warning(
            "open transaction(s) held the seal back: "
            + ", ".join(map(str, run.horizon.held_back_by))
            + (f" ({'; '.join(run.horizon.holders)})" if run.horizon.holders else "")
        )
    latest = run.latest
    return dg.MaterializeResult(
        metadata={
            "summary": dg.MetadataValue.text(run.summary()),
            "new_seals": dg.MetadataValue.int(len(run.seals)),
            "rows_sealed": dg.MetadataValue.int(run.rows),
            "sealed_through_id": dg.MetadataValue.int(run.horizon.to_id),
            "latest_seq": dg.MetadataValue.int(latest.seq if latest else 0),
            "latest_digest": dg.MetadataValue.text(latest.digest.hex() if latest else ""),
            "held_back_by": dg.MetadataValue.json(list(run.horizon.held_back_by)),
            "store": dg.MetadataValue.text(store.describe()),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="seal_chain_intact",
                passed=verification.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=verification.detail if job.passed else job.failure,
                metadata={
                    # An id, not a quantity: text, so it is never plotted as a metric.
                    "first_bad_id": dg.MetadataValue.text(
                        "none"
                        if verification.first_bad_id is None
                        else str(verification.first_bad_id)
                    ),
                    "seals": dg.MetadataValue.int(verification.seals),
                    "rows_verified": dg.MetadataValue.int(verification.rows),
                    "seals_rehashed": dg.MetadataValue.int(verification.rehashed_seals),
                    "rows_rehashed": dg.MetadataValue.int(verification.rehashed_rows),
                    "runbook": dg.MetadataValue.text(runbook_link("status-audit-seal-chain")),
                },
            )
        ],
    )


audit_seal_job = dg.define_asset_job(
    "audit_seal_job",
    selection=dg.AssetSelection.assets(audit_seal),
    description="Seal the new audit rows and verify the seal chain against the backup store.",
)

# Rows written since the last seal are the window in which a superuser's rewrite can go unseen
# (hardening_pipeline/hardening/seals/window.py), so the seal runs every minute. A run still in
# flight makes the next tick skip rather than queue behind it.
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.schedule(
    name="audit_seal_schedule",
    job=audit_seal_job,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every minute: seal the audit rows added since the last seal, so what a superuser could "
        "rewrite unseen is at most about a minute of rows."
    ),
)
def audit_seal_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    running = context.instance.get_runs_count(
        dg.RunsFilter(job_name=audit_seal_job.name, statuses=_IN_FLIGHT)
    )
    if running:
        return dg.SkipReason("the previous audit seal run is still in flight")
    return dg.RunRequest()
