"""Backup freshness as an hourly, blocking asset check on ``nightly_backup``.

A failed blocking ERROR check fails its run, so the run-failure sensor posts it to Slack. This
covers a nightly run that silently never happened; the hourly GitHub workflow covers the case
where Dagster itself is down. The check and its text are ``hardening_pipeline.jobs.status``'s
``backup_freshness``, the same line ``hardening status --backup-freshness`` prints. No ``from
__future__ import annotations`` here.
"""

from datetime import timedelta

import dagster as dg

from hardening_pipeline.backup.freshness import DEFAULT_MAX_AGE
from hardening_pipeline.defs.backup import nightly_backup, nightly_backup_job
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
)
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.jobs.status import FreshnessRequest, backup_freshness


@dg.asset_check(
    asset=nightly_backup,
    name="backup_is_fresh",
    blocking=True,
    description=(
        "A backup with a verified manifest exists from the last 26 hours. Red means the "
        "nightly backup has not succeeded for over a day: see "
        "docs/runbook.md#status-backup-freshness."
    ),
)
def backup_is_fresh(
    app_db: AppDatabaseResource,
    backup_store: BackupStoreResource,
    encryption_keys: EncryptionKeysResource,
) -> dg.AssetCheckResult:
    try:
        keyring = encryption_keys.keyring(app_db.settings())
        store = backup_store.open()
    except HardeningError as exc:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"cannot check backup freshness: {exc}",
        )
    checked = backup_freshness(FreshnessRequest(store, keyring, DEFAULT_MAX_AGE))
    fresh, line = checked.freshness, checked.line
    metadata = {
        "newest_backup_id": dg.MetadataValue.text(fresh.newest_backup_id or "none found"),
        "store": dg.MetadataValue.text(store.describe()),
    }
    if fresh.age is not None:  # no backup at all has no age; a -1 would be plotted as one
        metadata["age_hours"] = dg.MetadataValue.float(round(fresh.age / timedelta(hours=1), 2))
    return dg.AssetCheckResult(
        passed=fresh.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=line.detail if line.passed else f"{line.detail}. {line.fix}",
        metadata=metadata,
    )


backup_freshness_job = dg.define_asset_job(
    "backup_freshness_job",
    selection=dg.AssetSelection.checks(backup_is_fresh),
    description="Hourly: is there a verified backup from the last 26 hours?",
)

backup_freshness_schedule = dg.ScheduleDefinition(
    name="backup_freshness_schedule",
    job=backup_freshness_job,
    cron_schedule="30 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every hour at :30 UTC.",
)


@dg.run_status_sensor(
    name="backup_freshness_after_backup",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[nightly_backup_job],
    request_job=backup_freshness_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After each successful nightly backup run: re-check backup_is_fresh, so a red "
        "freshness check turns green as soon as a new verified backup is stored. A failed "
        "backup run leaves the check as it was; the run failure alerts on its own."
    ),
)
def backup_freshness_after_backup(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    # One request per finished backup run: a re-evaluated tick launches nothing new.
    return dg.RunRequest(run_key=f"freshness-after-{context.dagster_run.run_id}")
