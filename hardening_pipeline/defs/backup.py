"""Nightly encrypted backups and their retention, as Dagster assets, job and schedule.

The work itself is ``hardening_pipeline.jobs`` (the same functions ``hardening backup`` and
``hardening retention`` call); this module only hands them resources and turns their results
into metadata. No ``from __future__ import annotations``: Dagster inspects the annotations.
"""

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg

from hardening_pipeline.backup.nightly import BackupResult
from hardening_pipeline.backup.retention import RetentionPolicy
from hardening_pipeline.defs.assets import application_tables
from hardening_pipeline.defs.failures import failure, job_failure
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
)
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.jobs.backup import backup_job
from hardening_pipeline.jobs.retention import RetentionJobResult, retention_job

MIB = 1024 * 1024
EXCLUSIVE_TAG = "hardening/exclusive"
# Rows of the kept/deleted table in the retention metadata; the counts are always complete.
MAX_REPORT_ROWS = 200


class NightlyBackupConfig(dg.Config):
    """Launch-time options of the nightly backup."""

    dry_run: bool = False
    # Objects exported at once, each on its own connection to the same snapshot.
    workers: int = 1


class BackupRetentionConfig(dg.Config):
    """Launch-time options of retention; the defaults are the 30/12/12 policy."""

    dry_run: bool = False
    keep_daily: int = 30
    keep_weekly: int = 12
    keep_monthly: int = 12


def backup_metadata(result: BackupResult) -> dict[str, dg.MetadataValue]:
    """What an operator checks first: which backup, how big, how fast, and where it went."""
    throughput = result.plaintext_bytes / MIB / result.seconds if result.seconds else 0.0
    return {
        "backup_id": dg.MetadataValue.text(result.backup_id),
        "snapshot_at": dg.MetadataValue.timestamp(result.manifest.created_at),
        "objects": dg.MetadataValue.int(len(result.manifest.objects)),
        "tenants": dg.MetadataValue.int(
            sum(1 for o in result.manifest.objects if o.tenant_id is not None)
        ),
        "rows": dg.MetadataValue.int(result.rows),
        "plaintext_bytes": dg.MetadataValue.int(result.plaintext_bytes),
        "stored_bytes": dg.MetadataValue.int(result.ciphertext_bytes),
        # The same sizes in MiB, the unit the plots and the throughput are read in.
        "plaintext_mib": dg.MetadataValue.float(round(result.plaintext_bytes / MIB, 3)),
        "stored_mib": dg.MetadataValue.float(round(result.ciphertext_bytes / MIB, 3)),
        "duration_seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "throughput_mib_per_second": dg.MetadataValue.float(round(throughput, 2)),
        "location": dg.MetadataValue.text(result.location),
        "key_id": dg.MetadataValue.text(result.manifest.key_id),
        "dry_run": dg.MetadataValue.bool(result.dry_run),
    }


# Not partitioned: a backup always captures the database as it is at run time, so a daily
# partition could only ever be filled for "now" and the rest would stay red and unfillable.
# Whether the latest backup is recent enough is the backup_is_fresh check's job.
@dg.asset(
    # Lineage: what the backup reads, so the graph shows table -> backup -> drill.
    deps=[spec.key for spec in application_tables],
    group_name="backups",
    kinds={"postgres", "s3"},
    description=(
        "Encrypted backup of the application database taken at run time: one consistent "
        "snapshot, one AES-256-GCM object per tenant plus one for the non-tenant tables, "
        "manifest.json written last, in BACKUP_STORE_URL under `<YYYY>/<MM>/<DD>/<backup-id>/`. "
        "On failure nothing is published: without a manifest the partial folder is ignored by "
        "restores and removed by retention after a day. It fails when the encryption key is "
        "missing or malformed, when another backup is running, or when rows have no tenant "
        "(the error names the table). Transient S3 errors are retried request by request "
        "inside the run; a failed run is not relaunched: the next night's run, or a launch "
        "from this page, takes a new backup."
    ),
)
def nightly_backup(
    context: dg.AssetExecutionContext,
    config: NightlyBackupConfig,
    app_db: AppDatabaseResource,
    backup_store: BackupStoreResource,
    encryption_keys: EncryptionKeysResource,
) -> Iterator[dg.MaterializeResult]:
    try:
        # Key first, store second, database last: bad configuration stops before data is read.
        keyring = encryption_keys.keyring(app_db.settings())
        store = backup_store.open()
        job = backup_job(
            app_db.url(),
            store,
            keyring,
            dry_run=config.dry_run,
            workers=config.workers,
            on_object=lambda name, done, total: context.log.info(f"stored {name} ({done}/{total})"),
            schemas=app_db.settings().backup_schemas,
            pg_dump_path=app_db.settings().pg_dump_path,
            runbook_base_url=app_db.settings().runbook_url,
        )
    except HardeningError as exc:
        raise job_failure(exc, "nightly backup", runbook_anchor="backup-failed") from None
    result = job.backup
    context.log.info(
        f"backup {result.backup_id}: {result.rows} rows in {len(result.manifest.objects)} "
        f"objects to {result.location}" + (" (dry run: nothing stored)" if result.dry_run else "")
    )
    metadata = backup_metadata(result)
    metadata["integrity_canaries_failed"] = dg.MetadataValue.int(len(job.blocking))
    # Recorded first: the backup is kept even when its rows will not restore cleanly.
    yield dg.MaterializeResult(metadata=metadata)
    if not job.passed:
        raise failure(
            job.subject,
            job.failure or "",
            metadata={"backup_id": dg.MetadataValue.text(result.backup_id)},
            runbook_anchor="backup-failed",
        )


def retention_report(job: RetentionJobResult) -> str:
    """Markdown table of every decision and the rule behind it, newest first.

    Three columns only: the backup id already starts with its UTC time, and with a fourth column
    the UI's narrow metadata dialog squeezed "why" to one word per line.
    """
    lines = ["| backup | decision | why |", "|---|---|---|"]
    lines += [f"| {row.backup_id} | {row.decision} | {row.why} |" for row in job.rows]
    if len(lines) > MAX_REPORT_ROWS + 2:
        hidden = len(lines) - MAX_REPORT_ROWS - 2
        lines = [*lines[: MAX_REPORT_ROWS + 2], f"\n… {hidden} more rows not shown."]
    return "\n".join(lines)


@dg.asset(
    deps=[nightly_backup],
    group_name="backups",
    kinds={"s3"},
    description=(
        "Applies the 30 daily / 12 weekly / 12 monthly retention (restic's forget rules) to the "
        "backup store after the nightly backup succeeded. Deletes whole backups, manifest first; "
        "removes manifest-less folders older than a day. On failure nothing is deleted: it fails "
        "when the store cannot be listed completely or when any manifest fails verification "
        "(altered, unknown key, dated in the future), and never deletes the newest backup."
    ),
)
def backup_retention(
    context: dg.AssetExecutionContext,
    config: BackupRetentionConfig,
    app_db: AppDatabaseResource,
    backup_store: BackupStoreResource,
    encryption_keys: EncryptionKeysResource,
) -> dg.MaterializeResult:
    try:
        policy = RetentionPolicy(
            daily=config.keep_daily, weekly=config.keep_weekly, monthly=config.keep_monthly
        )
        keyring = encryption_keys.keyring(app_db.settings())
        store = backup_store.open()
        job = retention_job(store, keyring, policy, dry_run=config.dry_run)
    except ValueError as exc:  # a negative keep count
        raise failure("retention is misconfigured", f"{exc}; fix the keep_* run config.") from None
    except HardeningError as exc:
        raise job_failure(exc, "retention", runbook_anchor="backup-retention-refused") from None
    outcome = job.outcome
    deleted = [r.backup_id for r in outcome.plan.delete]
    context.log.info(
        f"retention kept {len(outcome.plan.keep)}, {job.verb} {len(deleted)} backups and "
        f"{len(outcome.debris)} incomplete folders on {job.location}"
    )
    return dg.MaterializeResult(
        metadata={
            "kept": dg.MetadataValue.int(len(outcome.plan.keep)),
            "deleted": dg.MetadataValue.int(len(deleted)),
            "incomplete_removed": dg.MetadataValue.int(len(outcome.debris)),
            "stale_uploads_aborted": dg.MetadataValue.int(outcome.stale_uploads_aborted),
            "newest_backup": dg.MetadataValue.text(
                outcome.plan.keep[0].backup_id if outcome.plan.keep else ""
            ),
            "policy": dg.MetadataValue.text(
                f"daily {policy.daily} / weekly {policy.weekly} / monthly {policy.monthly}"
            ),
            "decisions": dg.MetadataValue.md(retention_report(job)),
            "location": dg.MetadataValue.text(job.location),
            "dry_run": dg.MetadataValue.bool(outcome.dry_run),
        }
    )


nightly_backup_job = dg.define_asset_job(
    "nightly_backup_job",
    # Without backup_is_fresh: a check planned in this run would read "Execution failed" the
    # moment the backup step fails, although an earlier verified backup may be minutes old.
    # backup_freshness_after_backup re-checks freshness after each successful run instead.
    selection=dg.AssetSelection.assets(nightly_backup, backup_retention).without_checks(),
    description="Back up the application database, then apply retention to the backup store.",
    # dagster.yaml limits runs with this tag to one at a time across the whole instance.
    tags={EXCLUSIVE_TAG: "backup"},
)


@dg.schedule(
    job=nightly_backup_job,
    name="nightly_backup_schedule",
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="02:00 UTC every night: back up the database as it is, then prune.",
)
def nightly_backup_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """One backup per night, keyed by the night's date."""
    scheduled = context.scheduled_execution_time or datetime.now(UTC)
    night = scheduled.astimezone(UTC).date().isoformat()
    # The run key makes a re-evaluated tick for the same night launch nothing new.
    return dg.RunRequest(run_key=f"nightly-backup-{night}", tags={"hardening/night": night})
