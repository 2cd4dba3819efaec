"""One run that captures everything an auditor asked for, in one folder.

In order: migrations, status check, backup, retention (dry run), restore drill, canaries, a raw
service-role write tried in a rolled-back transaction (item B: the database, not a scan of this
package, shows what it refuses), and the status check again. Every stage writes a ``.log`` a person
reads and a ``.json`` a machine reads into ``evidence/<timestamp>/``; ``file-tree.txt`` lists the
files the hardening consists of; ``SUMMARY.md`` gives one green/red line per task-list item (A to
G) with a pointer to its proof. A stage that fails does not stop the others (an auditor wants the
whole picture), but any red makes the run red. The stages call the other job functions
(``backup_job``, ``retention_job``, ``drill_job``, ``canary_job``, ``status_job``) without a Slack
notifier: an evidence run proves, it does not page anyone.

The embedded default database is seeded with a small demo dataset when it is empty, so a first
run has something to prove; a configured database is never seeded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.locks import check_backup_locks
from hardening_pipeline.backup.nightly import BackupResult
from hardening_pipeline.backup.store import BackupStore, FileStore
from hardening_pipeline.canaries.runner import CanaryResult
from hardening_pipeline.db.connection import connect, resolve_database_url
from hardening_pipeline.db.migrations import MigrationRun, apply_migrations, migration_status
from hardening_pipeline.db.service_role_mode import ServiceRoleProof, prove_service_role_rule
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.hardening.report import report_markdown
from hardening_pipeline.jobs.backup import backup_job
from hardening_pipeline.jobs.canaries import canary_job
from hardening_pipeline.jobs.drill import drill_job
from hardening_pipeline.jobs.retention import RetentionJobResult, retention_job
from hardening_pipeline.jobs.status import status_job
from hardening_pipeline.jobs.wiring import open_configured_store, open_keyring
from hardening_pipeline.reports import green_or_red, report_stamp
from hardening_pipeline.restore.binding import configured_source
from hardening_pipeline.restore.report import drill_markdown
from hardening_pipeline.seed import seed_demo_data
from hardening_pipeline.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What the hardening consists of, for file-tree.txt (paths only, relative to the project).
FILE_TREE_GLOBS = (
    "sql/migrations/*.sql",
    "sql/canaries/*.sql",
    "hardening_pipeline/**/*.py",
    "tests/**/*.py",
    "bench/*.py",
    "docs/*.md",
    ".github/workflows/*.yml",
    ".ci/run",
    "scripts/hardening/reports/.gitkeep",
    "pyproject.toml",
    "workspace.yaml",
    "dagster.yaml",
    "deploy/**/*.yaml",
    "docker-compose.yml",
    "Dockerfile",
    ".env.example",
    "README.md",
)
DEMO_TENANTS = 3
DEMO_MESSAGES_PER_UNIT = 20


@dataclass
class StageOutcome:
    name: str
    passed: bool
    seconds: float
    summary: str
    files: list[str] = field(default_factory=list)


@dataclass
class EvidenceResult:
    folder: Path
    stages: list[StageOutcome]
    summary_lines: list[tuple[str, str, bool, str]]  # (item, title, green, proof)
    upload: str
    local_key_created: Path | None = None

    @property
    def passed(self) -> bool:
        return all(green for _, _, green, _ in self.summary_lines) and all(
            s.passed for s in self.stages
        )

    @property
    def subject(self) -> str:
        return "the evidence run is red"

    @property
    def failure(self) -> str | None:
        if self.passed:
            return None
        red = [f"{item} ({title})" for item, title, green, _ in self.summary_lines if not green]
        red = red or [f"stage {s.name}" for s in self.stages if not s.passed]
        return (
            f"{'; '.join(red)}; {Path(self.folder).resolve() / 'SUMMARY.md'} says what each needs."
        )


# Installed from a wheel there is no checkout: the tree is what the wheel shipped.
INSTALLED_FILE_TREE_GLOBS = (
    "hardening_pipeline/**/*.py",
    "hardening_pipeline/sql/migrations/*.sql",
    "hardening_pipeline/sql/canaries/*.sql",
)


def project_file_tree(root: Path = PROJECT_ROOT) -> list[str]:
    """Paths relative to ``root``: the checkout's files, or the installed package's own files
    when ``root`` is not a checkout (no ``pyproject.toml``, e.g. ``site-packages``)."""
    is_checkout = (root / "pyproject.toml").is_file()
    paths: set[str] = set()
    for pattern in FILE_TREE_GLOBS if is_checkout else INSTALLED_FILE_TREE_GLOBS:
        for path in root.glob(pattern):
            if path.is_file() and "__pycache__" not in path.parts:
                paths.add(path.relative_to(root).as_posix())
    return sorted(paths)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


class _Bundle:
    """Writes the evidence files and keeps the stage list."""

    def __init__(self, folder: Path, on_stage: Callable[[str, str, float], None] | None) -> None:
        self.folder = folder
        self.stages: list[StageOutcome] = []
        self.on_stage = on_stage

    def write(self, name: str, text: str) -> str:
        (self.folder / name).write_text(text.rstrip() + "\n", encoding="utf-8")
        return name

    def write_json(self, name: str, data: Any) -> str:
        text = json.dumps(data, indent=2, sort_keys=True, default=_json_default)
        return self.write(name, text)

    def run(self, name: str, fn: Callable[[], StageOutcome]) -> StageOutcome:
        if self.on_stage:
            self.on_stage(name, "started", 0.0)
        started = time.perf_counter()
        try:
            outcome = fn()
        except HardeningError as exc:
            outcome = StageOutcome(name, False, 0.0, f"failed: {exc}")
            outcome.files.append(self.write(f"{name}.log", f"{name} failed: {exc}"))
        except Exception as exc:  # an auditor's bundle records a crash rather than vanishing
            outcome = StageOutcome(name, False, 0.0, f"crashed: {type(exc).__name__}: {exc}")
            outcome.files.append(
                self.write(f"{name}.log", f"{name} crashed:\n{traceback.format_exc()}")
            )
        outcome.seconds = time.perf_counter() - started
        self.stages.append(outcome)
        if self.on_stage:
            self.on_stage(name, "passed" if outcome.passed else "failed", outcome.seconds)
        return outcome


def _migrations_log(run: MigrationRun, url: str) -> str:
    lines = [f"applied this run: {', '.join(run.applied) or 'nothing (up to date)'}", ""]
    for s in migration_status(url):
        when = s.applied.applied_at.isoformat(timespec="seconds") if s.applied else ""
        who = s.applied.applied_by if s.applied else ""
        lines.append(f"{s.state:8} {s.filename:32} {when}  {who}")
    return "\n".join(lines)


def _status_stage(bundle: _Bundle, url: str, name: str, settings: Settings) -> StageOutcome:
    job = status_job(url, reports_dir=settings.reports_dir, notifier=None)
    report, saved = job.report, job.files
    files = [
        bundle.write(f"{name}.md", report_markdown(report)),
        bundle.write_json(f"{name}.json", report.as_dict()),
    ]
    red = ", ".join(line.name for line in report.red)
    summary = (
        f"{len(report.lines)} checks green (report {saved.markdown})"
        if report.passed
        else f"red: {red}"
    )
    return StageOutcome(name, report.passed, 0.0, summary, files)


def _backup_summary(result: BackupResult, upload: str) -> dict[str, Any]:
    m = result.manifest
    return {
        "backup_id": m.backup_id,
        "snapshot_taken_at": m.created_at.isoformat(),
        "location": result.location,
        "upload": upload,
        "dry_run": result.dry_run,
        "key_id": m.key_id,
        "schema": asdict(m.schema),
        "objects": [
            {
                "name": o.name,
                "tenant_id": o.tenant_id,
                "rows": {t.name: t.row_count for t in o.tables},
                "plaintext_bytes": o.plaintext_bytes,
                "ciphertext_bytes": o.ciphertext_bytes,
                "sha256": o.sha256,
            }
            for o in m.objects
        ],
        "rows": result.rows,
        "seconds": round(result.seconds, 3),
    }


def _retention_summary(job: RetentionJobResult) -> dict[str, Any]:
    rows = job.rows
    deleted = [row for row in rows if not row.kept]
    return {
        "dry_run": job.dry_run,
        "decisions": rows,
        "keep": [row.backup_id for row in rows if row.kept],
        # An incomplete folder has no verified time.
        "would_delete": [row.backup_id for row in deleted if row.taken_at is not None],
        "incomplete_would_delete": [row.backup_id for row in deleted if row.taken_at is None],
    }


def _canary_log(results: list[CanaryResult]) -> str:
    lines = []
    for r in results:
        state = "ok  " if r.passed else "FAIL"
        lines.append(f"{state} {r.name:28} count={r.count:<6} {r.title}")
        for f in r.findings[:5]:
            lines.append(f"       tenant={f.tenant_id} {f.subject}: {f.count} ({f.detail})")
        if r.error:
            lines.append(f"       error: {r.error}")
    return "\n".join(lines)


@dataclass
class _EvidenceRun:
    """What the stages share: where to look and write, and what earlier stages found."""

    settings: Settings
    url: str
    keyring: Keyring
    store: BackupStore
    upload: str
    bundle: _Bundle
    backup: BackupResult | None = None
    service_role: ServiceRoleProof | None = None


def _migrations_stage(run: _EvidenceRun) -> StageOutcome:
    """Apply pending migrations; seed the embedded database when it is empty."""
    applied = apply_migrations(run.url, applied_by="hardening evidence")
    seeded = ""
    if run.settings.uses_embedded_database:
        with connect(run.url) as conn:
            empty = conn.execute("SELECT count(*) AS n FROM tenants").fetchone()["n"] == 0
        if empty:
            seed = seed_demo_data(
                run.url, tenants=DEMO_TENANTS, messages_per_unit=DEMO_MESSAGES_PER_UNIT
            )
            seeded = f"; embedded database was empty, seeded {seed.rows} demo rows"
    files = [run.bundle.write("migrations.log", _migrations_log(applied, run.url) + seeded)]
    return StageOutcome(
        "migrations",
        True,
        0.0,
        f"{len(applied.all_files)} migrations applied{seeded}",
        files,
    )


def _backup_stage(run: _EvidenceRun) -> StageOutcome:
    """Take a backup into the run's store (the configured one, or a scratch folder)."""
    job = backup_job(
        run.url,
        run.store,
        run.keyring,
        schemas=run.settings.backup_schemas,
        pg_dump_path=run.settings.pg_dump_path,
        runbook_base_url=run.settings.runbook_url,
    )
    result = job.backup
    run.backup = result
    data = _backup_summary(result, run.upload)
    log = [
        f"backup {result.backup_id}: {len(result.manifest.objects)} objects, "
        f"{result.rows:,} rows, {result.plaintext_bytes:,} bytes exported, "
        f"{result.ciphertext_bytes:,} bytes encrypted, {result.seconds:.2f}s",
        f"location: {result.location}",
        f"upload: {run.upload}",
        f"manifest: {result.manifest_key} (authenticated, written last)",
    ]
    summary = f"backup {result.backup_id} ({run.upload})"
    if not job.passed:
        log.append(f"{job.subject}: {job.failure}")
        summary = f"{job.subject}: {job.failure}"
    files = [
        run.bundle.write("backup.log", "\n".join(log)),
        run.bundle.write_json("backup.json", data),
    ]
    return StageOutcome("backup", job.passed, 0.0, summary, files)


def _retention_stage(run: _EvidenceRun) -> StageOutcome:
    """Plan retention (a dry run) and, on a locked store, say how long backups stay immutable."""
    job = retention_job(run.store, run.keyring, dry_run=True)
    data = _retention_summary(job)
    log = [f"{row.decision} {row.backup_id}: {row.why}" for row in job.rows]
    log.append("dry run: nothing was deleted")
    summary = f"dry run: {job.summary()}"
    # On a locked store: how long the backups are immutable, or why they are not.
    locks = check_backup_locks(run.store, run.keyring)
    if locks is not None:
        data["locks"] = {"passed": locks.passed, "detail": locks.detail}
        log.append(f"{'ok' if locks.passed else 'FAIL'} backup locks: {locks.detail}")
        summary += f"; {locks.detail}"
    files = [
        run.bundle.write("retention.log", "\n".join(log)),
        run.bundle.write_json("retention.json", data),
    ]
    return StageOutcome(
        "retention",
        locks is None or locks.passed,
        0.0,
        summary,
        files,
    )


def _drill_stage(run: _EvidenceRun) -> StageOutcome:
    """Restore the newest backup into a throwaway Postgres and verify it."""
    job = drill_job(
        run.store,
        run.keyring,
        reports_dir=run.settings.reports_dir,
        notifier=None,
        target_dsn=run.settings.drill_target(),
        source=configured_source(run.url),
    )
    result = job.result
    files = [
        run.bundle.write("restore-drill.log", drill_markdown(result)),
        run.bundle.write_json("restore-drill.json", result.to_json()),
    ]
    summary = (
        f"backup {result.backup_id} restored and verified, RTO {result.rto_seconds:.1f}s"
        if result.passed
        else f"{job.subject}: {job.failure}"
    )
    return StageOutcome("restore-drill", result.passed, 0.0, summary, files)


def _canaries_stage(run: _EvidenceRun) -> StageOutcome:
    """Run every canary, without alerting."""
    job = canary_job(run.url, notifier=None, runbook_base_url=run.settings.runbook_url)
    results = job.results
    files = [
        run.bundle.write("canaries.log", _canary_log(results)),
        run.bundle.write_json("canaries.json", [asdict(r) for r in results]),
    ]
    summary = (
        "all canaries quiet" if job.passed else f"firing: {', '.join(r.name for r in job.red)}"
    )
    return StageOutcome("canaries", job.passed, 0.0, summary, files)


def _service_role_rule_stage(run: _EvidenceRun) -> StageOutcome:
    """Prove, in the database, that raw service_role writes without an actor are refused."""
    with connect(run.url) as conn:
        proof: ServiceRoleProof = prove_service_role_rule(conn)
    run.service_role = proof
    files = [
        run.bundle.write("service-role-rule.log", proof.describe()),
        run.bundle.write_json("service-role-rule.json", asdict(proof)),
    ]
    return StageOutcome("service-role-rule", proof.passed, 0.0, proof.describe(), files)


def run_evidence(
    settings: Settings,
    *,
    out_root: Path = Path("evidence"),
    dry_run_upload: bool = False,
    on_stage: Callable[[str, str, float], None] | None = None,
) -> EvidenceResult:
    """Run every stage and write the bundle; returns the result (``passed`` decides exit 1)."""
    folder = out_root / report_stamp()
    folder.mkdir(parents=True, exist_ok=False)
    bundle = _Bundle(folder, on_stage)
    url = resolve_database_url(settings)
    keyring: Keyring = open_keyring(settings)
    configured_store = open_configured_store(settings)
    scratch = Path(tempfile.mkdtemp(prefix="hp-evidence-"))
    store: BackupStore = FileStore(scratch / "store") if dry_run_upload else configured_store
    upload = (
        f"dry run: the backup was written to a temporary local folder for the drill, not to "
        f"{configured_store.describe()}"
        if dry_run_upload
        else f"real upload to {configured_store.describe()}"
    )
    run = _EvidenceRun(settings, url, keyring, store, upload, bundle)
    try:
        bundle.run("migrations", lambda: _migrations_stage(run))
        first = bundle.run(
            "status-initial", lambda: _status_stage(bundle, url, "status-initial", settings)
        )
        bundle.run("backup", lambda: _backup_stage(run))
        bundle.run("retention", lambda: _retention_stage(run))
        bundle.run("restore-drill", lambda: _drill_stage(run))
        bundle.run("canaries", lambda: _canaries_stage(run))
        bundle.run("service-role-rule", lambda: _service_role_rule_stage(run))
        final = bundle.run(
            "status-report", lambda: _status_stage(bundle, url, "status-report", settings)
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    tree = project_file_tree()
    bundle.write("file-tree.txt", "\n".join(tree))
    summary = _summary_lines(run, first, final, tree)
    result = EvidenceResult(
        folder,
        bundle.stages,
        summary,
        upload,
        local_key_created=keyring.local_key_path if keyring.local_key_created else None,
    )
    bundle.write("SUMMARY.md", summary_markdown(result))
    return result


def _stage(bundle: _Bundle, name: str) -> StageOutcome | None:
    return next((s for s in bundle.stages if s.name == name), None)


def _summary_lines(
    run: _EvidenceRun,
    first: StageOutcome,
    final: StageOutcome,
    tree: list[str],
) -> list[tuple[str, str, bool, str]]:
    bundle = run.bundle

    def ok(name: str) -> bool:
        stage = _stage(bundle, name)
        return bool(stage and stage.passed)

    backup_ok = ok("backup") and run.backup is not None
    required = [
        "sql/migrations/002_audit_events.sql",
        "hardening_pipeline/db/tenant_scoped_client.py",
        "hardening_pipeline/backup/nightly.py",
        "hardening_pipeline/restore/drill.py",
        "hardening_pipeline/hardening/status/model.py",
    ]
    # An installed wheel carries sql/ inside the package.
    files_present = all(r in tree or f"hardening_pipeline/{r}" in tree for r in required)
    return [
        (
            "A",
            "Database guarantees: append-only audit log, message keys, RLS on every tenant table",
            ok("migrations") and final.passed,
            "status-report.md (migrations, foreign keys, triggers, RLS lines)",
        ),
        (
            "B",
            "Raw service_role writes without the wrapper's actor are refused (enforce mode)",
            ok("service-role-rule"),
            "service-role-rule.log: "
            + (run.service_role.describe() if run.service_role else "not tried"),
        ),
        (
            "C",
            "Encrypted backup with checksums and manifest; retention 30/12/12",
            backup_ok and ok("retention"),
            "backup.log, backup.json, retention.log",
        ),
        (
            "D",
            "Restore drill: latest backup restored and verified",
            ok("restore-drill"),
            "restore-drill.log, restore-drill.json",
        ),
        (
            "E",
            "Canaries: orphans, misalignment, delete volume, failed onboarding",
            ok("canaries"),
            "canaries.log, canaries.json",
        ),
        (
            "F",
            "Hardening status checker: green/red checklist and timestamped report",
            first.passed and final.passed,
            "status-initial.md, status-report.md",
        ),
        (
            "G",
            "File tree and evidence captured",
            files_present and all(s.files for s in bundle.stages),
            "file-tree.txt and this folder",
        ),
    ]


def summary_markdown(result: EvidenceResult) -> str:
    verdict = "ALL GREEN" if result.passed else "RED"
    lines = [
        f"# Hardening evidence: {verdict}",
        "",
        f"Captured {datetime.now(UTC).isoformat(timespec='seconds')} in `{result.folder}`.",
        f"Backup upload: {result.upload}.",
        "",
        "| item | what the task list asked for | result | proof |",
        "|---|---|---|---|",
    ]
    for item, title, green, proof in result.summary_lines:
        lines.append(f"| {item} | {title} | {green_or_red(green)} | {proof} |")
    lines += ["", "## Stages", "", "| stage | result | seconds | summary |", "|---|---|---|---|"]
    for s in result.stages:
        mark = green_or_red(s.passed)
        lines.append(f"| {s.name} | {mark} | {s.seconds:.2f} | {s.summary} |")
    return "\n".join(lines)
