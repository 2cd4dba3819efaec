"""The evidence bundle as a Dagster asset and job: one materialization, everything an auditor
asked for. The work is ``hardening_pipeline.jobs.evidence.run_evidence`` (what ``hardening
evidence`` runs). No ``from __future__ import annotations``: Dagster inspects the annotations.

The run exercises migrations, a backup, a drill and the status report, but it records a
materialization of its own asset only: those assets' pages keep the state their own jobs wrote
(backup id, rows, the checklist and its ``all_green`` check), and the bundle's summary says what
each stage did.
"""

from pathlib import Path

import dagster as dg

from hardening_pipeline.defs.failures import failure
from hardening_pipeline.defs.resources import AppDatabaseResource
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.jobs.evidence import run_evidence, summary_markdown


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
) -> dg.MaterializeResult:
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
    metadata = {
        "summary": dg.MetadataValue.md(summary_markdown(result)),
        "folder": dg.MetadataValue.path(str(Path(result.folder).resolve())),
        "all_green": dg.MetadataValue.bool(result.passed),
        "upload": dg.MetadataValue.text(result.upload),
    }
    if not result.passed:
        raise failure(result.subject, result.failure or "", metadata=metadata)
    return dg.MaterializeResult(metadata=metadata)


evidence_job = dg.define_asset_job(
    "evidence_job",
    selection=[evidence_bundle],
    description="Capture the full evidence bundle for auditors (run on demand).",
    tags={"hardening/exclusive": "backup"},
)
