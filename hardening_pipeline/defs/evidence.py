"""The evidence bundle as a Dagster asset and job: one materialization, everything an auditor
asked for. The work is ``hardening_pipeline.jobs.evidence.run_evidence`` (what ``hardening
evidence`` runs). No ``from __future__ import annotations``: Dagster inspects the annotations.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from hardening_pipeline.defs.failures import failure
from hardening_pipeline.defs.resources import AppDatabaseResource
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.jobs.evidence import EvidenceResult, run_evidence, summary_markdown


class EvidenceConfig(dg.Config):
    """Where the bundle goes and whether the backup may be uploaded to the configured store."""

    out_root: str = "evidence"
    dry_run_upload: bool = False


@dg.asset(
    group_name="hardening",
    kinds={"postgres", "s3"},
    description=(
        "Runs, in order, migrations, the status check, a backup, retention (dry run), a restore "
        "drill, the canaries and the status check again, and writes `evidence/<timestamp>/` with "
        "a log and JSON per stage, file-tree.txt and SUMMARY.md: one green/red line for each "
        "guarantee an auditor asks about (database guarantees, the tenant write path, backups, "
        "the restore drill, canaries, the status checker, the captured files). The run fails "
        "when any line is red; the bundle is still written and says which line and why."
    ),
)
def evidence_bundle(
    context: dg.AssetExecutionContext, config: EvidenceConfig, app_db: AppDatabaseResource
) -> Iterator[dg.AssetMaterialization | dg.MaterializeResult]:
    try:
        result = run_evidence(
            app_db.settings(),
            out_root=Path(config.out_root),
            dry_run_upload=config.dry_run_upload,
            on_stage=lambda name, state, secs: context.log.info(
                f"evidence stage {name}: {state}" + (f" ({secs:.1f}s)" if secs else "")
            ),
        )
    except HardeningError as exc:
        raise failure("the evidence run could not start", str(exc)) from None
    yield from exercised_assets(result, uploaded=not config.dry_run_upload)
    metadata = {
        "summary": dg.MetadataValue.md(summary_markdown(result)),
        "folder": dg.MetadataValue.path(str(Path(result.folder).resolve())),
        "all_green": dg.MetadataValue.bool(result.passed),
        "upload": dg.MetadataValue.text(result.upload),
    }
    if not result.passed:
        raise failure(result.subject, result.failure or "", metadata=metadata)
    yield dg.MaterializeResult(metadata=metadata)


# Evidence stage -> the asset it produces for real, so each asset's page records the evidence
# run that exercised it (a backup it stored, the drill report and status report it wrote).
STAGE_ASSETS = {
    "migrations": "database_schema",
    "backup": "nightly_backup",
    "restore-drill": "restore_drill_report",
    "status-report": "hardening_status_report",
}


def exercised_assets(result: EvidenceResult, uploaded: bool) -> Iterator[dg.AssetMaterialization]:
    """Materializations of the assets the evidence run produced along the way."""
    for stage in result.stages:
        asset = STAGE_ASSETS.get(stage.name)
        if asset is None or (asset == "nightly_backup" and not (uploaded and stage.passed)):
            # A backup exists only when it was stored; a drill or status report exists either way.
            continue
        yield dg.AssetMaterialization(
            asset_key=asset,
            description=f"By the evidence run: {stage.summary}",
            metadata={
                "passed": dg.MetadataValue.bool(stage.passed),
                "summary": dg.MetadataValue.text(stage.summary),
                "seconds": dg.MetadataValue.float(round(stage.seconds, 2)),
                "evidence_folder": dg.MetadataValue.path(str(Path(result.folder).resolve())),
            },
        )


evidence_job = dg.define_asset_job(
    "evidence_job",
    selection=[evidence_bundle],
    description="Capture the full evidence bundle for auditors (run on demand).",
    tags={"hardening/exclusive": "backup"},
)
