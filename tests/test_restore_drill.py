"""The restore drill end to end, and every way a backup can be unrestorable.

Round trip: seed -> backup to the B2-strict S3 server -> drill (throwaway Postgres, migrations,
COPY, invariants, drill checks) -> report and Slack. Then the same with a flipped byte, a
truncated object, a missing object, a tampered manifest, a wrong key, a newer schema and an
empty store: each must fail with a clear reason, and each failure must reach Slack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hardening_pipeline.alerts.slack import SlackNotifier
from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import MANIFEST_NAME
from hardening_pipeline.backup.manifest_signing import load_manifest, sign_manifest
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import BackupStore, FileStore
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.restore.drill_checks import DRILL_CHECKS
from hardening_pipeline.restore.report import drill_alert, write_drill_report
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import admin_connect

ROOT = Path(__file__).resolve().parents[1]
KEY = bytes(range(32))


@pytest.fixture
def store(s3_server, s3_bucket) -> BackupStore:
    return s3_server.store(s3_bucket)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(KEY)


@pytest.fixture
def backed_up(db_url, store, keyring):
    seed_demo_data(db_url, tenants=3, messages_per_unit=4, random_seed=11)
    return run_backup(db_url, store, keyring)


def drill_and_alert(store, keyring, tmp_path, slack_receiver, **kwargs):
    result = run_restore_drill(store, keyring, **kwargs)
    report = write_drill_report(result, tmp_path / "reports")
    delivered = SlackNotifier(slack_receiver.url).send(drill_alert(result, report, None))
    assert delivered.delivered
    return result, report


def rewrite_object(store: BackupStore, key: str, transform) -> None:
    data = b"".join(store.get(key))
    store.put(key, [transform(data)])


def object_key(backed_up, index: int = 0) -> str:
    folder = backed_up.manifest.folder("")
    return folder + backed_up.manifest.objects[index].name


def test_round_trip_passes_and_reports(backed_up, store, keyring, tmp_path, slack_receiver):
    result, report = drill_and_alert(store, keyring, tmp_path, slack_receiver)
    assert result.passed, (result.failure, result.invariants, result.tests_output)
    assert result.backup_id == backed_up.backup_id
    assert result.rows_restored == backed_up.rows
    assert (result.tests_passed, result.tests_failed) == (len(DRILL_CHECKS), 0)
    assert result.tests_output.endswith(f"{len(DRILL_CHECKS)} passed, 0 failed")
    assert set(result.stages) >= {"find", "schema", "restore", "verify", "checks", "tests"}
    assert result.rpo_seconds is not None and result.rpo_seconds >= 0
    data = json.loads(report.json.read_text())
    assert data["passed"] is True and data["backup_id"] == backed_up.backup_id
    assert "Restore drill PASSED" in report.markdown.read_text()
    posted = slack_receiver.requests[-1]
    assert "Restore drill passed" in posted["text"]


def test_restoring_adds_no_audit_rows(backed_up, store, keyring, db_url, pg_server_url):
    """The drill compares the restored audit_events digest with the backup's; prove it bites."""
    with admin_connect(db_url) as conn:
        audit_rows = conn.execute("SELECT count(*) AS n FROM audit_events").fetchone()["n"]
    recorded = sum(
        t.row_count
        for o in backed_up.manifest.objects
        for t in o.tables
        if t.name == "audit_events"
    )
    assert recorded == audit_rows  # in the tenants' objects and the shared one together
    result = run_restore_drill(store, keyring, run_tests=True)
    digest = [i for i in result.invariants if "digests" in i.name][0]
    assert digest.passed, digest.detail


@pytest.mark.parametrize(
    "damage,needle",
    [
        ("flip", "does not match its manifest"),
        ("truncate", "cannot be trusted: object"),
        ("missing", "is missing"),
    ],
)
def test_damaged_object_fails_the_drill(
    backed_up, store, keyring, tmp_path, slack_receiver, damage, needle
):
    key = object_key(backed_up, 1)
    if damage == "flip":
        rewrite_object(store, key, lambda b: b[:100] + bytes([b[100] ^ 0x01]) + b[101:])
    elif damage == "truncate":
        rewrite_object(store, key, lambda b: b[: len(b) // 2])
    else:
        store.delete(key)
    result, report = drill_and_alert(store, keyring, tmp_path, slack_receiver)
    assert not result.passed
    assert needle in (result.failure or ""), result.failure
    assert result.rows_restored == 0  # nothing was loaded from a damaged backup
    assert "Restore drill FAILED" in slack_receiver.requests[-1]["text"]
    assert json.loads(report.json.read_text())["passed"] is False


def test_same_size_corruption_is_caught_before_decrypting(
    backed_up, store, keyring, tmp_path, slack_receiver
):
    key = object_key(backed_up, 0)
    rewrite_object(store, key, lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]))
    result, _ = drill_and_alert(store, keyring, tmp_path, slack_receiver)
    assert not result.passed and "SHA-256" in (result.failure or "")
    assert result.failed_stage == "restore" and result.rows_restored == 0


def test_tampered_manifest_means_no_backup(backed_up, store, keyring, tmp_path, slack_receiver):
    key = backed_up.manifest.folder("") + MANIFEST_NAME

    def bump_first_row_count(raw: bytes) -> bytes:
        import re

        return re.sub(
            rb'"row_count":(\d+)', lambda m: b'"row_count":%d' % (int(m[1]) + 1), raw, count=1
        )

    rewrite_object(store, key, bump_first_row_count)
    result, _ = drill_and_alert(store, keyring, tmp_path, slack_receiver)
    assert not result.passed and result.failed_stage == "find"
    assert "manifest authentication failed" in (result.failure or "")
    catalog = list_backups(store, keyring)
    assert [b.backup_id for b in catalog.invalid] == [backed_up.backup_id]


def test_wrong_key_fails_clearly(backed_up, store, tmp_path, slack_receiver):
    # A configuration error (exit 2 from the CLI), not a red drill: the backups are fine.
    from hardening_pipeline.backup.catalog import WrongKeyError

    with pytest.raises(WrongKeyError, match="BACKUP_ENCRYPTION_KEYS_PREVIOUS"):
        run_restore_drill(store, Keyring(bytes(32)))


def test_a_new_install_without_tenants_gets_a_green_drill(db_url, tmp_path):
    store = FileStore(tmp_path / "empty-store")
    run_backup(db_url, store, Keyring(KEY))
    result = run_restore_drill(store, Keyring(KEY))
    assert result.passed, (result.failure, result.invariants, result.tests_output)
    rls = next(i for i in result.invariants if i.name.startswith("RLS isolates"))
    assert "probe tenants" in rls.detail


def test_previous_key_still_restores(backed_up, store, tmp_path, slack_receiver):
    rotated = Keyring(bytes(32), [KEY])
    result, _ = drill_and_alert(store, rotated, tmp_path, slack_receiver)
    assert result.passed, result.failure


def test_backup_from_a_newer_schema_is_refused(backed_up, store, keyring, tmp_path, slack_receiver):
    from dataclasses import replace

    key = backed_up.manifest.folder("") + MANIFEST_NAME
    manifest = load_manifest(b"".join(store.get(key)), keyring)
    newer = replace(
        manifest,
        schema=replace(
            manifest.schema,
            applied_migrations=(*manifest.schema.applied_migrations, "999_from_the_future.sql"),
            last_migration="999_from_the_future.sql",
        ),
    )
    # Written as the newer kit would have written it, once: an overwrite is untrusted anyway.
    store.delete(key)
    store.put(key, [sign_manifest(newer, keyring)])
    result, _ = drill_and_alert(store, keyring, tmp_path, slack_receiver)
    assert not result.passed and result.failed_stage == "schema"
    assert "newer schema" in (result.failure or "")


def test_empty_store_is_a_failure_not_a_pass(store, keyring, tmp_path, slack_receiver):
    result, report = drill_and_alert(store, keyring, tmp_path, slack_receiver)
    assert not result.passed
    assert "holds no backup" in (result.failure or "")
    markdown = report.markdown.read_text()
    assert "# Restore drill FAILED" in markdown
    assert "**Failure** (stage `find`)" in markdown and "holds no backup" in markdown
    assert ("Runbook", "docs/runbook.md#restore-drill-failed") in drill_alert(result, report).fields
    published = drill_alert(result, report, "https://ops.example.org/runbook.html")
    section = "https://ops.example.org/runbook.html#restore-drill-failed"
    assert ("Runbook", section) in published.fields
    assert published.links == [("Runbook: restore drill failed", section)]


def test_throwaway_database_is_removed_even_when_the_drill_fails(
    backed_up, store, keyring, monkeypatch
):
    import hardening_pipeline.db.local_server as local_server
    import hardening_pipeline.db.throwaway as throwaway
    import hardening_pipeline.restore.drill as drill

    # The folders this drill's throwaway server lives in, not every hp-pg-* in /tmp: other
    # processes on the machine make and remove their own.
    created: list[Path] = []
    mkdtemp = local_server.tempfile.mkdtemp

    def recorded_mkdtemp(*args, **kwargs):
        created.append(Path(mkdtemp(*args, **kwargs)))
        return str(created[-1])

    monkeypatch.setattr(local_server.tempfile, "mkdtemp", recorded_mkdtemp)
    # The local server is the one whose folder this can see; a container cleans up itself.
    monkeypatch.setattr(throwaway, "docker_available", lambda timeout=2.0: False)

    def broken(url, manifest, keys):
        raise drill.DrillFailure("simulated verification crash")

    monkeypatch.setattr(drill, "compare_with_manifest", broken)
    result = drill.run_restore_drill(store, keyring)
    assert not result.passed and "simulated" in (result.failure or "")
    assert created, "the drill did not start a throwaway server"
    assert not [folder for folder in created if folder.exists()]


def test_restore_drill_cli_exits_1_on_failure_and_0_on_success(
    backed_up, s3_server, s3_bucket, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARDENING_", "BACKUP_"))} | {
        "BACKUP_ENCRYPTION_KEY": __import__("base64").b64encode(KEY).decode(),
        "BACKUP_STORE_URL": f"s3://{s3_bucket}/backups",
        "BACKUP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "BACKUP_S3_REGION": s3_server.region,
        "HARDENING_REPORTS_DIR": str(tmp_path / "reports"),
        "HARDENING_DATABASE_URL": "postgresql://unused@127.0.0.1:1/x",
    }
    ok = subprocess.run(
        [sys.executable, "-m", "hardening_pipeline.cli", "restore-drill"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ALERT NOT DELIVERED" in ok.stderr  # no webhook configured: said, not hidden
    bad = subprocess.run(
        [sys.executable, "-m", "hardening_pipeline.cli", "restore-drill", "--backup-id", "nope"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert len(list((tmp_path / "reports").glob("restore-drill-*.json"))) == 2


def test_restore_one_tenant_into_another_database(backed_up, store, keyring, empty_db_url, db_url):
    from hardening_pipeline.db.migrations import apply_migrations
    from hardening_pipeline.errors import ConfigError
    from hardening_pipeline.restore.tenant import restore_tenant

    tenant = backed_up.manifest.objects[0].tenant_id
    apply_migrations(empty_db_url)
    result = restore_tenant(store, keyring, tenant_id=tenant, target_url=empty_db_url)
    with admin_connect(empty_db_url) as conn:
        tenants = conn.execute("SELECT id::text FROM tenants").fetchall()
        messages = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
        actors = conn.execute("SELECT DISTINCT actor FROM audit_events").fetchall()
    assert [t["id"] for t in tenants] == [tenant]
    # The tenant's audit history stays in the backup: the target audits the restore itself.
    expected = {
        t.name: t.row_count
        for t in backed_up.manifest.objects[0].tables
        if t.name != "audit_events"
    }
    assert messages == expected["messages"]
    assert result.inserted == sum(expected.values())
    assert actors == [{"actor": f"service_role:restore:{backed_up.backup_id}"}]
    with pytest.raises(ConfigError, match="already holds tenant"):
        restore_tenant(store, keyring, tenant_id=tenant, target_url=empty_db_url)
    # A deleted message comes back with --merge; nothing else is duplicated.
    with admin_connect(empty_db_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:oops', false)")
        conn.execute(
            "DELETE FROM messages WHERE id = (SELECT id FROM messages ORDER BY id LIMIT 1)"
        )
        conn.commit()
    merged = restore_tenant(store, keyring, tenant_id=tenant, target_url=empty_db_url, merge=True)
    assert merged.inserted == 1
