"""One use-case function per job; the CLI and the Dagster layer only present its result.

The structure is read from the source with ``ast``: ``cli.py``, ``cli_commands/`` and ``defs/``
may not import the steps a job assembles (a second copy of a job would start there), and
``jobs/`` may not import Dagster. The behaviour is tried against real parts: Postgres, a file
store, the local Slack server, and the ``hardening`` command in a subprocess.
"""

from __future__ import annotations

import ast
import base64
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg

import hardening_pipeline
from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.retention import RetentionPolicy
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.jobs.backup import backup_job
from hardening_pipeline.jobs.canaries import canary_job
from hardening_pipeline.jobs.drill import drill_job
from hardening_pipeline.jobs.retention import retention_job
from hardening_pipeline.jobs.seal import seal_job
from hardening_pipeline.jobs.status import FreshnessRequest, status_job
from hardening_pipeline.jobs.wiring import slack_notifier
from hardening_pipeline.seed import seed_demo_data
from hardening_pipeline.settings import load_settings
from tests.support.cli import keyed_store_env, run_hardening
from tests.support.db import admin_connect
from tests.support.slack_receiver import SlackReceiver

PACKAGE_ROOT = Path(hardening_pipeline.__file__).parent
# The steps the job functions assemble. Importing one into a presentation layer is how a second
# copy of a job begins.
STEPS = {
    "run_backup",
    "apply_retention",
    "run_restore_drill",
    "write_drill_report",
    "drill_alert",
    "run_status_check",
    "write_report",
    "alert_status",
    "run_canaries",
    "alert_canaries",
    "seal_audit_log",
    "verify_audit_seals",
    "SlackNotifier",
    "open_store",
    "keyring_from_settings",
    "check_backup_freshness",
}


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(source: str) -> set[str]:
    """Every name and module a source imports, at any depth, except type-only imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return  # names for annotations only: they assemble nothing
        if isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def presentation_modules() -> list[Path]:
    return [
        PACKAGE_ROOT / "cli.py",
        *sorted((PACKAGE_ROOT / "cli_commands").glob("*.py")),
        *sorted((PACKAGE_ROOT / "defs").glob("*.py")),
    ]


def test_the_import_reader_sees_function_level_imports_and_skips_type_only_ones() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from hardening_pipeline.alerts.slack import SlackNotifier\n"
        "def status():\n    from hardening_pipeline.hardening.report import write_report\n"
    )
    names = imported_names(source)
    assert "write_report" in names and "SlackNotifier" not in names


def test_cli_and_defs_import_none_of_the_steps_a_job_assembles() -> None:
    modules = presentation_modules()
    assert len(modules) > 5  # the guard reads real files
    offenders = {
        path.relative_to(PACKAGE_ROOT).as_posix(): sorted(imported_names(path.read_text()) & STEPS)
        for path in modules
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, (
        f"{offenders} assemble a job themselves; call its function in hardening_pipeline/jobs/ "
        "and present the result"
    )


def test_jobs_import_no_dagster() -> None:
    paths = sorted((PACKAGE_ROOT / "jobs").glob("*.py"))
    assert {p.stem for p in paths} >= {"backup", "retention", "drill", "status", "canaries"}
    for path in paths:
        names = imported_names(path.read_text())
        assert not any(n == "dagster" or n.startswith("dagster.") for n in names), path
    # And nothing they pull in loads it either.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, importlib\n"
            + "".join(
                f"importlib.import_module('hardening_pipeline.jobs.{p.stem}')\n" for p in paths
            )
            + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout


# --- behaviour ---------------------------------------------------------------------------------


def plant_orphan(db_url: str) -> None:
    """An orphaned message, planted the way a replica-mode load or a console hotfix would."""
    with admin_connect(db_url) as admin, admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute("SELECT set_config('app.actor', 'test:replica', true)")
        admin.execute("DELETE FROM units WHERE id = (SELECT unit_id FROM messages LIMIT 1)")


def test_backup_job_keeps_the_backup_but_flags_rows_a_restore_cannot_load(
    db_url: str, tmp_path: Path, keyring: Keyring
) -> None:
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)
    store = FileStore(tmp_path / "store")
    clean = backup_job(db_url, store, keyring)
    assert clean.passed and clean.failure is None
    plant_orphan(db_url)
    job = backup_job(db_url, store, keyring)
    assert not job.passed
    assert [r.name for r in job.blocking] == ["orphaned_messages"]
    assert job.subject == f"backup {job.backup.backup_id} will not restore cleanly"
    assert job.failure and job.failure.startswith("canary orphaned_messages finds 2 found in 1")
    assert "runbook.md#canary-orphaned-messages" in job.failure
    stored = [b.backup_id for b in list_backups(store, keyring).valid]
    assert job.backup.backup_id in stored and clean.backup.backup_id in stored


def test_cli_backup_exits_1_with_the_jobs_sentence_and_keeps_the_backup(
    db_url: str, tmp_path: Path
) -> None:
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)
    plant_orphan(db_url)
    env = keyed_store_env(tmp_path)
    result = run_hardening("backup", url=db_url, env=env, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # The sentence the job builds (and the Dagster asset fails with), word for word.
    keyring = Keyring(base64.b64decode(env["BACKUP_ENCRYPTION_KEY"]))
    store = FileStore(tmp_path / "store")
    [stored] = list_backups(store, keyring).valid
    same = backup_job(db_url, FileStore(tmp_path / "other"), keyring)
    assert f"failed: backup {stored.backup_id} will not restore cleanly: {same.failure}" in (
        " ".join(result.stderr.split())
    )


def test_drill_job_writes_the_report_and_posts_once(
    tmp_path: Path, keyring: Keyring, slack_receiver: SlackReceiver
) -> None:
    store = FileStore(tmp_path / "empty-store")
    settings = load_settings()
    notifier = slack_notifier(settings, webhook_url=slack_receiver.url, max_retries=0)
    job = drill_job(store, keyring, reports_dir=tmp_path / "reports", notifier=notifier)
    assert not job.passed and job.result.failed_stage == "find"
    assert job.report.markdown.is_file() and job.report.json.is_file()
    assert json.loads(job.report.json.read_text())["passed"] is False
    assert job.delivery is not None and job.delivery.delivered
    assert len(slack_receiver.requests) == 1
    assert job.subject == "the restore drill failed at stage find"
    assert job.failure and str(job.report.markdown.resolve()) in job.failure
    assert ".;" not in job.failure, job.failure  # the cause's full stop, then the report
    # Without a notifier: the report still, the alert not.
    quiet = drill_job(store, keyring, reports_dir=tmp_path / "reports", notifier=None)
    assert quiet.delivery is None and quiet.report.markdown.is_file()
    assert quiet.report.markdown != job.report.markdown
    assert len(slack_receiver.requests) == 1


def test_status_job_adds_the_freshness_line_writes_and_alerts(
    db_url: str, tmp_path: Path, keyring: Keyring, slack_receiver: SlackReceiver
) -> None:
    store = FileStore(tmp_path / "store")
    notifier = slack_notifier(load_settings(), webhook_url=slack_receiver.url, max_retries=0)
    request = FreshnessRequest(store, keyring, timedelta(hours=26))
    red = status_job(db_url, reports_dir=tmp_path / "r", notifier=notifier, freshness=request)
    line = next(line for line in red.report.lines if line.name == "backup_freshness")
    assert not line.passed and "no verified backup" in line.detail
    assert line.fix.startswith("Find out why the nightly backup")
    assert line.title == "a verified backup exists from the last 26 hours"
    assert not red.passed and red.failure and "backup_freshness" in red.failure
    saved = json.loads(red.files.json.read_text())
    assert "backup_freshness" in json.dumps(saved)
    assert red.alert is not None and red.alert.action == "sent"
    assert len(slack_receiver.requests) == 1

    seed_demo_data(db_url, tenants=1, messages_per_unit=1)
    backup_job(db_url, store, keyring)
    green = status_job(db_url, reports_dir=tmp_path / "r", notifier=None, freshness=request)
    line = next(line for line in green.report.lines if line.name == "backup_freshness")
    assert line.passed and line.fix == ""
    assert green.alert is None and len(slack_receiver.requests) == 1
    plain = status_job(db_url, reports_dir=tmp_path / "r", notifier=None)
    assert "backup_freshness" not in [line.name for line in plain.report.lines]


def test_canary_job_names_the_first_blocking_canary_and_alerts_once(
    db_url: str, slack_receiver: SlackReceiver
) -> None:
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)
    notifier = slack_notifier(load_settings(), webhook_url=slack_receiver.url, max_retries=0)
    quiet = canary_job(db_url, notifier=notifier)
    assert quiet.passed and quiet.failure is None and slack_receiver.requests == []
    plant_orphan(db_url)
    job = canary_job(db_url, notifier=notifier)
    assert not job.passed and [r.name for r in job.blocking] == ["orphaned_messages"]
    assert job.subject == "canary orphaned_messages failed"
    assert job.failure and "runbook.md#canary-orphaned-messages" in job.failure
    assert [o.action for o in job.alerts if o.key == "canary:orphaned_messages"] == ["sent"]
    assert len(slack_receiver.requests) == 1
    silent = canary_job(db_url, names=["orphaned_messages"], notifier=None)
    assert silent.alerts == [] and [r.name for r in silent.results] == ["orphaned_messages"]


def test_retention_rows_are_what_every_presentation_renders(
    db_url: str, tmp_path: Path, keyring: Keyring
) -> None:
    from hardening_pipeline.defs.backup import retention_report

    seed_demo_data(db_url, tenants=1, messages_per_unit=1)
    store = FileStore(tmp_path / "store")
    older = backup_job(db_url, store, keyring).backup.backup_id
    newer = backup_job(db_url, store, keyring).backup.backup_id
    policy = RetentionPolicy(daily=1, weekly=0, monthly=0)
    job = retention_job(store, keyring, policy, dry_run=True)
    assert [(r.backup_id, r.decision) for r in job.rows] == [
        (newer, "keep"),
        (older, "would delete"),
    ]
    assert all(r.taken_at is not None for r in job.rows)
    markdown = retention_report(job)
    for row in job.rows:
        assert f"| {row.backup_id} | {row.decision} | {row.why} |" in markdown
    # A dry run deleted nothing; a real run deletes what the rows said.
    assert len(list_backups(store, keyring).valid) == 2
    real = retention_job(store, keyring, policy)
    assert [(r.backup_id, r.decision) for r in real.rows][1] == (older, "deleted")
    assert [b.backup_id for b in list_backups(store, keyring).valid] == [newer]


def test_seal_job_seals_verifies_and_says_how_to_fix_a_broken_chain(
    db_url: str, tmp_path: Path, keyring: Keyring
) -> None:
    seed_demo_data(db_url, tenants=1, messages_per_unit=1)
    store = FileStore(tmp_path / "store")
    first = seal_job(db_url, store=store, keyring=keyring, actor="test:seal")
    assert first.passed and first.run is not None and first.run.rows > 0
    check = seal_job(db_url, store=store, keyring=keyring, actor="test:seal", verify_only=True)
    assert check.run is None and check.passed
    with admin_connect(db_url, autocommit=True) as su:
        bad_id = su.execute("SELECT min(id) AS id FROM audit_events").fetchone()["id"]
        with su.transaction():
            su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            su.execute("UPDATE audit_events SET actor = 'x' WHERE id = %s", (bad_id,))
            su.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")
    broken = seal_job(
        db_url, store=store, keyring=keyring, actor="test:seal", verify_only=True, full=True
    )
    assert not broken.passed and broken.subject == "the audit seal chain is broken"
    assert broken.failure and f"first bad id {bad_id}" in broken.failure
    assert "docs/runbook.md#status-audit-seal-chain" in broken.failure


def test_a_red_job_result_is_one_sentence_for_the_cli(db_url: str, tmp_path: Path) -> None:
    # The CLI's status command presents the job's own failure sentence.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE messages DISABLE ROW LEVEL SECURITY")
    result = run_hardening(
        "status", "--no-alert", url=db_url, env={"HARDENING_REPORTS_DIR": str(tmp_path)}
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [report] = tmp_path.glob("status-*.md")
    said = " ".join(result.stderr.split())
    assert "failed: the hardening status is red: " in said and "rls" in said
    assert f"{report} gives each fix." in said
