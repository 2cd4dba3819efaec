"""The Dagster code location: assets, checks, jobs, schedules, sensors and resources."""

import dagster as dg

from hardening_pipeline.defs.assets import (
    database_schema,
    database_schema_job,
    observe_application_tables,
)
from hardening_pipeline.defs.backup import (
    backup_retention,
    nightly_backup,
    nightly_backup_job,
    nightly_backup_schedule,
)
from hardening_pipeline.defs.catalog import catalog_assets
from hardening_pipeline.defs.checks import canary_checks, canary_job, canary_schedule
from hardening_pipeline.defs.evidence import evidence_bundle, evidence_job
from hardening_pipeline.defs.freshness import (
    backup_freshness_after_backup,
    backup_freshness_job,
    backup_freshness_schedule,
    backup_is_fresh,
)
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.defs.restore import (
    restore_drill_job,
    restore_drill_report,
    restore_drill_schedule,
)
from hardening_pipeline.defs.seals import audit_seal, audit_seal_job, audit_seal_sensor
from hardening_pipeline.defs.sensors import (
    failed_runs_alerted,
    pending_check_evaluation,
    slack_failure_alerts,
    slack_on_run_failure,
)
from hardening_pipeline.defs.status import (
    hardening_status_report,
    status_check_job,
    status_check_schedule,
)
from hardening_pipeline.settings import load_dagster_catalog_settings

# Every asset names its owners (HARDENING_DAGSTER_OWNERS) and links to the file and line that
# defines it (the UI's "code references"; to the repository when HARDENING_GIT_URL is set). A
# bad value stops the code location from loading with one sentence naming the variable.
_assets = catalog_assets(
    [
        observe_application_tables,
        database_schema,
        hardening_status_report,
        nightly_backup,
        backup_retention,
        restore_drill_report,
        evidence_bundle,
        audit_seal,
        slack_failure_alerts,
    ],
    load_dagster_catalog_settings(),
    # The failure sensor records this external asset's check through this function.
    code_of={slack_failure_alerts.key: pending_check_evaluation},
)

defs = dg.Definitions(
    assets=_assets,
    asset_checks=[canary_checks, backup_is_fresh, failed_runs_alerted],
    jobs=[
        database_schema_job,
        canary_job,
        status_check_job,
        nightly_backup_job,
        restore_drill_job,
        evidence_job,
        backup_freshness_job,
        audit_seal_job,
    ],
    schedules=[
        canary_schedule,
        status_check_schedule,
        nightly_backup_schedule,
        restore_drill_schedule,
        backup_freshness_schedule,
    ],
    sensors=[slack_on_run_failure, backup_freshness_after_backup, audit_seal_sensor],
    resources={
        "app_db": AppDatabaseResource(),
        "slack": SlackAlertsResource(),
        "backup_store": BackupStoreResource(),
        "encryption_keys": EncryptionKeysResource(),
    },
)
