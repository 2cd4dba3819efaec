"""Assets: what the hardening produces, as the Dagster UI shows it.

No ``from __future__ import annotations`` here: Dagster inspects the context annotation.
"""

import warnings

import dagster as dg

from hardening_pipeline.db.migrations import apply_migrations, migration_status
from hardening_pipeline.db.table_stats import live_row_estimates
from hardening_pipeline.defs.resources import AppDatabaseResource

APPLICATION_TABLES = {
    "tenants": "One row per customer organisation; every other table hangs off it.",
    "developments": "A customer's building developments (tenant-scoped).",
    "units": "Units inside a development (tenant-scoped).",
    "messages": "Messages filed against a unit (tenant-scoped; must agree with its unit).",
    "onboarding_attempts": "Each attempt to onboard a tenant, with status and error.",
    "audit_events": "Append-only record of every write to a tenant-scoped table.",
}

application_tables = [
    dg.AssetSpec(
        key=dg.AssetKey(["app", name]),
        description=text,
        group_name="application_tables",
        kinds={"postgres"},
    )
    for name, text in APPLICATION_TABLES.items()
]


def _observe_application_tables(context: dg.AssetExecutionContext):
    # "Observe" on one table's page selects that table only: answer for the selected ones.
    selected = [
        name
        for name in APPLICATION_TABLES
        if dg.AssetKey(["app", name]) in context.selected_asset_keys
    ]
    estimates = live_row_estimates(context.resources.app_db.url(), selected)
    for name in selected:
        metadata = {}
        if name in estimates:
            metadata["live_rows_estimate"] = dg.MetadataValue.int(estimates[name])
        yield dg.ObserveResult(asset_key=dg.AssetKey(["app", name]), metadata=metadata)


# Observable rather than plain external: the canary run records an observation of each table
# (its live-row estimate, plotted over time), so the catalog shows the table as observed with
# its canary checks' state instead of "Never materialized". The decorator is marked beta; its
# warning would otherwise print on every `dagster` command.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    observe_application_tables = dg.multi_observable_source_asset(
        specs=application_tables,
        name="observe_application_tables",
        can_subset=True,
        description="Reads each application table's live-row estimate from Postgres's statistics.",
        required_resource_keys={"app_db"},
    )(_observe_application_tables)


@dg.asset(
    group_name="hardening",
    kinds={"postgres"},
    description=(
        "Applies sql/migrations to the application database: audit log, message foreign keys, "
        "RLS lockdown. Fails (and changes nothing) when a migration's pre-flight finds legacy "
        "rows that break the new rules or when an applied migration file was edited; the error "
        "names the rows or the file."
    ),
)
def database_schema(
    context: dg.AssetExecutionContext, app_db: AppDatabaseResource
) -> dg.MaterializeResult:
    url = app_db.url()
    run = apply_migrations(url, applied_by=f"dagster run {context.run.run_id}")
    states = migration_status(url)
    lines = ["| migration | state | applied at | applied by |", "|---|---|---|---|"]
    for s in states:
        applied_at = s.applied.applied_at.isoformat(timespec="seconds") if s.applied else ""
        applied_by = s.applied.applied_by if s.applied else ""
        lines.append(f"| {s.filename} | {s.state} | {applied_at} | {applied_by} |")
    return dg.MaterializeResult(
        metadata={
            "applied_this_run": dg.MetadataValue.json(run.applied),
            "migrations": dg.MetadataValue.md("\n".join(lines)),
            "migration_count": dg.MetadataValue.int(len(states)),
            "latest_migration": dg.MetadataValue.text(states[-1].filename if states else ""),
        }
    )


database_schema_job = dg.define_asset_job(
    "database_schema_job",
    selection=[database_schema],
    description=(
        "Apply pending sql/migrations (run on demand after an upgrade of the kit; "
        "`hardening migrate --plan` shows what would change first)."
    ),
)
