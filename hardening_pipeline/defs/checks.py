"""Canaries as asset checks on the application tables, so their state shows on each table.

All the deciding and alerting happens in ``hardening_pipeline.jobs.canaries`` (what ``hardening
canaries`` runs; Slack alerts are deduplicated there); this turns its results into
``AssetCheckResult``s. Integrity
canaries are blocking ERROR checks; volume canaries are WARN.

No ``from __future__ import annotations`` here: Dagster inspects the context annotation.
"""

import dagster as dg

from hardening_pipeline.canaries import CANARIES, CanaryResult
from hardening_pipeline.canaries.alerts import investigation_query
from hardening_pipeline.defs.assets import application_tables
from hardening_pipeline.defs.failures import failure, mark_alerted, runbook_metadata
from hardening_pipeline.defs.resources import AppDatabaseResource, SlackAlertsResource
from hardening_pipeline.jobs import canaries as canary_use_case

CANARY_CHECK_SPECS = [
    dg.AssetCheckSpec(
        name=spec.name,
        asset=dg.AssetKey(["app", spec.table]),
        description=f"Canary: fails when {spec.what_it_means} (sql/canaries/{spec.name}.sql).",
        blocking=spec.severity == "error",
    )
    for spec in CANARIES.values()
]


def check_result(result: CanaryResult, runbook_base_url: str | None = None) -> dg.AssetCheckResult:
    """One canary result as a Dagster check result with the facts an operator needs."""
    return dg.AssetCheckResult(
        check_name=result.name,
        asset_key=dg.AssetKey(["app", result.table]),
        passed=result.passed,
        severity=(
            dg.AssetCheckSeverity.ERROR
            if result.severity == "error"
            else dg.AssetCheckSeverity.WARN
        ),
        description=result.summary(),
        metadata={
            "count": dg.MetadataValue.int(result.count),
            "tenants": dg.MetadataValue.json(result.tenants),
            "sample_ids": dg.MetadataValue.json(result.samples),
            "findings": dg.MetadataValue.json(
                [
                    {
                        "tenant_id": f.tenant_id,
                        "subject": f.subject,
                        "count": f.count,
                        "sample_ids": list(f.sample_ids),
                        "detail": f.detail,
                    }
                    for f in result.findings
                ]
            ),
            "query": dg.MetadataValue.md(f"```sql\n{investigation_query(result)}\n```"),
            "runbook": runbook_metadata(result.runbook_anchor, runbook_base_url),
            "seconds": dg.MetadataValue.float(round(result.seconds, 4)),
            # Only when the canary could not run: an empty row reads as a missing value.
            **({"error": dg.MetadataValue.text(result.error)} if result.error else {}),
        },
    )


@dg.multi_asset_check(
    specs=CANARY_CHECK_SPECS,
    name="canaries",
    description="Runs sql/canaries read-only and alerts Slack on new, grown or cleared findings.",
    # Each canary can run on its own, so a check's "Execute" button in the UI works (a check
    # that can only run with all the others is shown as needing its asset materialized).
    can_subset=True,
)
def canary_checks(
    context: dg.AssetCheckExecutionContext,
    app_db: AppDatabaseResource,
    slack: SlackAlertsResource,
):
    selected = [key.name for key in context.selected_asset_check_keys]
    job = canary_use_case.canary_job(
        app_db.url(),
        names=[name for name in CANARIES if name in selected],
        notifier=slack.notifier(),
        runbook_base_url=slack.runbook_base_url(),
    )
    for outcome in job.alerts:
        if outcome.undelivered:
            context.log.error(f"Slack alert for {outcome.key} was NOT delivered: {outcome.detail}")
        elif outcome.action in ("sent", "resolved"):
            context.log.info(f"Slack alert for {outcome.key}: {outcome.action}")
    for result in job.results:
        if not result.passed:
            context.log.warning(f"canary {result.name} failed: {result.summary()}")
        yield check_result(result, slack.runbook_base_url())
    if job.blocking:
        if job.alerts and not any(outcome.undelivered for outcome in job.alerts):
            # The canary alerts once per change on its own; the failed run adds nothing new.
            mark_alerted(context.instance, context.run.run_id)
        # Raised here, after every result is recorded, so the run fails with the canary's own
        # sentence instead of Dagster's generic DagsterAssetCheckFailedError. WARN canaries
        # alone do not fail the run.
        raise failure(job.subject, job.failure or "")


canary_job = dg.define_asset_job(
    "canary_job",
    # The tables are observed in the same run, so their pages show when they were last watched.
    selection=dg.AssetSelection.checks(canary_checks)
    | dg.AssetSelection.assets(*(spec.key for spec in application_tables)),
    description="Run every canary against the application database.",
)

canary_schedule = dg.ScheduleDefinition(
    name="canary_schedule",
    job=canary_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 15 minutes: integrity canaries block (ERROR), volume canaries warn.",
)
