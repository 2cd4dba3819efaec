"""The hardening status report as an asset, with its job and daily schedule.

The status job is ``hardening_pipeline.jobs.status`` (the checks, the report files and the Slack
alert, as ``hardening status`` runs them); this asset records the checklist as metadata and
exposes an ``all_green`` check so a red report is red in the UI too.

No ``from __future__ import annotations`` here: Dagster inspects the context annotation.
"""

from collections.abc import Iterator

import dagster as dg

from hardening_pipeline.defs.failures import failure, mark_alerted, runbook_metadata
from hardening_pipeline.defs.resources import AppDatabaseResource, SlackAlertsResource
from hardening_pipeline.hardening.report import checklist_markdown
from hardening_pipeline.jobs.status import status_job
from hardening_pipeline.jobs.wiring import seal_anchor_path


@dg.asset(
    group_name="hardening",
    kinds={"postgres"},
    deps=[dg.AssetKey("database_schema")],
    check_specs=[
        dg.AssetCheckSpec(
            "all_green",
            asset="hardening_status_report",
            description="Every line of the hardening status checklist is green.",
        )
    ],
    description=(
        "Checks every hardening guarantee (migrations, keys, audit triggers, grants, RLS, "
        "splinter's RLS lints) and writes `status-<UTC>.md`/`.json` to HARDENING_REPORTS_DIR. "
        "When a line is red the all_green check fails with the first red line, its fix and "
        "runbook section, the run fails, and Slack gets the red lines with their fixes, once "
        "per change; each links to its section of docs/runbook.md."
    ),
)
def hardening_status_report(
    context: dg.AssetExecutionContext, app_db: AppDatabaseResource, slack: SlackAlertsResource
) -> Iterator[dg.MaterializeResult]:
    runbook_base_url = slack.runbook_base_url()
    job = status_job(
        app_db.url(),
        reports_dir=app_db.settings().reports_dir,
        notifier=slack.notifier(),
        runbook_base_url=runbook_base_url,
        seal_anchor=seal_anchor_path(app_db.settings(), app_db.url()),
    )
    report, files, outcome = job.report, job.files, job.alert
    if outcome is not None and outcome.undelivered:
        context.log.error(f"Slack status alert was NOT delivered: {outcome.detail}")
    red = [line.name for line in report.red]
    check_metadata: dict[str, dg.MetadataValue] = {"red": dg.MetadataValue.json(red)}
    if report.red:
        first = report.red[0]
        check_metadata["runbook"] = runbook_metadata(first.runbook_anchor, runbook_base_url)
        if first.fix:
            check_metadata["fix"] = dg.MetadataValue.md(f"```sql\n{first.fix}\n```")
    yield dg.MaterializeResult(
        metadata={
            "checklist": dg.MetadataValue.md(
                checklist_markdown(report, runbook_base_url=runbook_base_url)
            ),
            # Absolute: a path relative to the run's working folder means nothing in the UI.
            "report_path": dg.MetadataValue.path(str(files.markdown.resolve())),
            "report_json_path": dg.MetadataValue.path(str(files.json.resolve())),
            "red_count": dg.MetadataValue.int(len(red)),
            "red": dg.MetadataValue.json(red),
            "alert": dg.MetadataValue.text(outcome.action if outcome else "not sent"),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="all_green",
                passed=report.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                # What to do first, where the red shows: the check's own description.
                description="all green" if report.passed else job.first_red(runbook_base_url),
                metadata=check_metadata,
            )
        ],
    )
    if not report.passed:
        # A red report is a failed run, so the Runs list and the run page are red too. The
        # status alert already went to Slack (once per change); the failure sensor adds none.
        if outcome is not None and not outcome.undelivered:
            mark_alerted(context.instance, context.run.run_id)
        raise failure(job.subject, f"{job.failure} First: {job.first_red(runbook_base_url)}")


status_check_job = dg.define_asset_job(
    "status_check_job",
    selection=dg.AssetSelection.assets(hardening_status_report),
    description="Run the hardening status check and write its report.",
)

status_check_schedule = dg.ScheduleDefinition(
    name="status_check_schedule",
    job=status_check_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="06:00 UTC daily: the hardening checklist; Slack when a line turns red.",
)
