"""The monthly restore drill as a Dagster asset, job and schedule.

The drill job is ``hardening_pipeline.jobs.drill`` (what ``hardening restore-drill`` runs: the
drill, its report and its Slack alert); this module hands it resources, records the result as
metadata, and turns a red drill into a failed run. No ``from __future__ import annotations``:
Dagster inspects them.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from hardening_pipeline.defs.backup import nightly_backup
from hardening_pipeline.defs.failures import failure, mark_alerted
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.errors import ConfigError, HardeningError
from hardening_pipeline.jobs.drill import drill_job
from hardening_pipeline.restore.binding import configured_source
from hardening_pipeline.restore.drill_result import DrillResult
from hardening_pipeline.restore.report import drill_markdown


class RestoreDrillConfig(dg.Config):
    """Launch-time options: drill a named backup, or restore into a Postgres you provide
    (instead of HARDENING_DRILL_TARGET_URL's, or a throwaway one when that is unset)."""

    backup_id: str | None = None
    target_dsn: str | None = None


@dg.asset(
    deps=[nightly_backup],
    group_name="backups",
    kinds={"postgres", "s3"},
    description=(
        "Monthly proof that the newest backup restores: verifies the manifest and every "
        "object's SHA-256 before decrypting, restores into a throwaway Postgres of the "
        "backup's major (or the separate Postgres named by HARDENING_DRILL_TARGET_URL), "
        "compares every table's row count and digest with the manifest, runs the canaries, "
        "the status check and the drill tests there, and reports RPO/RTO. The report lands "
        "next to the status reports and goes to Slack on success and failure. The run FAILS "
        "when anything could not be verified (no backup, a damaged or altered object, an "
        "unknown key, a newer schema, a red invariant or test): treat it as 'our backups may "
        "not restore' and "
        "follow docs/runbook.md#restore-drill-failed."
    ),
)
def restore_drill_report(
    context: dg.AssetExecutionContext,
    config: RestoreDrillConfig,
    app_db: AppDatabaseResource,
    backup_store: BackupStoreResource,
    encryption_keys: EncryptionKeysResource,
    slack: SlackAlertsResource,
) -> Iterator[dg.MaterializeResult]:
    settings = app_db.settings()
    try:
        keyring = encryption_keys.keyring(settings)
        store = backup_store.open()
    except HardeningError as exc:
        raise failure("the restore drill cannot start", str(exc)) from None
    try:
        job = drill_job(
            store,
            keyring,
            reports_dir=settings.reports_dir,
            notifier=slack.notifier(),
            runbook_base_url=slack.runbook_base_url(),
            backup_id=config.backup_id,
            target_dsn=settings.drill_target(config.target_dsn),
            source=configured_source(settings.database_url),
            on_stage=lambda name, state: context.log.info(f"drill stage {name}: {state}"),
        )
    except ConfigError as exc:
        # A wrong key or a drill target older than the backup: one sentence, no retry.
        raise failure("the restore drill cannot start", str(exc)) from None
    delivered = job.delivery is not None and job.delivery.delivered
    if not delivered:
        detail = job.delivery.detail if job.delivery else "no notifier"
        context.log.warning(f"the drill result was NOT delivered to Slack: {detail}")
    metadata = drill_metadata(job.result, job.report.markdown)
    metadata["slack_delivered"] = dg.MetadataValue.bool(delivered)
    # Recorded before failing, so the asset page shows RPO, the report and what went wrong for a
    # red drill too: the report exists either way, and it is what this asset is.
    yield dg.MaterializeResult(metadata=metadata)
    if not job.passed:
        if delivered:
            mark_alerted(context.instance, context.run.run_id)
        raise failure(job.subject, job.failure or "", metadata=metadata)


def drill_metadata(result: DrillResult, report_path: Path) -> dict[str, dg.MetadataValue]:
    """Numbers an operator follows over time, typed so the asset page plots them; a value that
    does not exist (no backup found, no completed restore) is left out rather than faked."""
    metadata: dict[str, dg.MetadataValue] = {
        "passed": dg.MetadataValue.bool(result.passed),
        "backup_id": dg.MetadataValue.text(result.backup_id or "none found"),
        "rows_restored": dg.MetadataValue.int(result.rows_restored),
        "drill_tests_passed": dg.MetadataValue.int(result.tests_passed),
        "drill_tests_failed": dg.MetadataValue.int(result.tests_failed),
        "report": dg.MetadataValue.md(drill_markdown(result)),
        "report_path": dg.MetadataValue.path(str(report_path.resolve())),
    }
    if result.rpo_seconds is not None:
        metadata["rpo_seconds"] = dg.MetadataValue.float(round(result.rpo_seconds, 1))
        metadata["rpo_hours"] = dg.MetadataValue.float(round(result.rpo_seconds / 3600, 2))
    if result.passed:
        # Time to recover is only a time to recover when the recovery worked.
        metadata["rto_seconds"] = dg.MetadataValue.float(round(result.rto_seconds, 1))
    else:
        metadata["seconds_until_failure"] = dg.MetadataValue.float(round(result.rto_seconds, 1))
    return metadata


restore_drill_job = dg.define_asset_job(
    "restore_drill_job",
    selection=[restore_drill_report],
    description="Restore the newest backup into a throwaway Postgres and verify it (monthly).",
    tags={"hardening/exclusive": "restore-drill"},
)

restore_drill_schedule = dg.ScheduleDefinition(
    name="restore_drill_schedule",
    job=restore_drill_job,
    cron_schedule="0 4 1 * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="04:00 UTC on the 1st of every month.",
)
