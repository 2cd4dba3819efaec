# The fixtures imported from test_tenant_keys are redefined as the parameters that use them.
# ruff: noqa: F811
"""An erasure that stops part-way, and an old row version a snapshot keeps alive.

``erase-tenant`` writes the store's ledger copy first, then the audit row and the database copy
in one transaction, then rewrites the table. A database that refuses after the store's write
leaves the key destroyed in one copy, off the record and without a certificate: a re-run
completes it, the ``tenant_key_ledger`` line is red until then, and a backup does not hide it.
A session whose snapshot is older than the write keeps the old row version (the key in it)
through ``VACUUM FULL``: the certificate says so, naming the session, instead of claiming it gone.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hardening_pipeline.backup import erasure
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.erasure import erase_tenant, plan_erasure
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import FileStore, S3Store
from hardening_pipeline.backup.tenant_key_copies import (
    ledger_status,
    read_db_ledger,
    read_store_ledger,
)
from hardening_pipeline.backup.tenant_keys import Ledger
from hardening_pipeline.errors import ConfigError, HardeningError
from hardening_pipeline.hardening.status import run_status_check
from tests.support.cli import keyed_store_env, run_hardening
from tests.support.db import admin_connect
from tests.support.supabase_db import (
    SupabaseServer,
    adopting_app,
)
from tests.test_tenant_keys import (  # noqa: F401  (fixtures)
    KEY,
    file_env,
    keyring,
    offboard,
    seeded,
    store,
    tenants_of,
)

# The database refuses the ledger write, as a full disk or a dropped connection would.
REFUSE_LEDGER_WRITES = """
CREATE FUNCTION public.refuse_ledger_write() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $f$;
CREATE TRIGGER refuse_ledger_write BEFORE INSERT OR UPDATE ON hardening.tenant_key_ledger
    FOR EACH ROW EXECUTE FUNCTION public.refuse_ledger_write();
"""
ACCEPT_LEDGER_WRITES = (
    "DROP TRIGGER refuse_ledger_write ON hardening.tenant_key_ledger; "
    "DROP FUNCTION public.refuse_ledger_write()"
)
ERASURE_ROWS = (
    "SELECT id, before FROM audit_events WHERE table_name = 'hardening.tenant_key_ledger' "
    "ORDER BY id"
)


def run_sql(url: str, statements: str) -> None:
    with admin_connect(url) as conn:
        conn.execute(statements)
        conn.commit()


def audit_of(url: str) -> list[dict]:
    with admin_connect(url) as conn:
        return conn.execute(ERASURE_ROWS).fetchall()


def store_ledger(store: FileStore | S3Store, keyring: Keyring) -> Ledger:
    found = read_store_ledger(store, keyring)
    assert found is not None
    return found[0]


def ledger_pages(url: str) -> str:
    """Every byte of the ledger table's file, as the server holds it now."""
    with admin_connect(url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        return conn.execute(
            "SELECT string_agg(encode(get_raw_page('hardening.tenant_key_ledger', n), 'escape'), "
            "'') AS raw FROM generate_series(0, pg_relation_size('hardening.tenant_key_ledger') "
            "/ current_setting('block_size')::int - 1) AS n"
        ).fetchone()["raw"]


def test_an_erasure_the_database_refused_is_completed_by_running_it_again(
    seeded: str, file_env: dict[str, str], tmp_path: Path
) -> None:
    assert run_hardening("backup", url=seeded, env=file_env).returncode == 0
    victim = tenants_of(seeded)[0]
    evidence = tmp_path / "evidence"
    erase = ("erase-tenant", victim, "--yes", "--evidence-dir", str(evidence))
    run_sql(seeded, REFUSE_LEDGER_WRITES)
    proc = run_hardening(*erase, url=seeded, env=file_env)
    # The key is gone from the store copy already: one sentence saying what is missing and how
    # to finish, exit 2, no traceback.
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert f"the erasure of tenant {victim}" in message and "is incomplete" in message
    assert "no audit row" in message and "No space left on device" in message
    assert f"run `hardening erase-tenant {victim}` to complete it" in message
    store = FileStore(tmp_path / "store")
    [erased] = store_ledger(store, Keyring(KEY)).erased
    assert erased.tenant_id == victim and audit_of(seeded) == []
    assert not (evidence / "erasures").exists()

    # While the database still refuses, a re-run says the same instead of "already erased".
    proc = run_hardening(*erase, url=seeded, env=file_env)
    assert proc.returncode == 2 and "is incomplete" in proc.stderr, proc.stderr
    assert "already erased" not in proc.stderr

    run_sql(seeded, ACCEPT_LEDGER_WRITES)
    proc = run_hardening(*erase, url=seeded, env=file_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"completed the erasure of tenant {victim}" in " ".join(proc.stdout.split())
    [path] = (evidence / "erasures").glob("*.json")
    certificate = json.loads(path.read_text())
    # The certificate carries the time the key was destroyed, not the time of the re-run.
    assert certificate["erased_at"] == erased.erased_at.isoformat()
    assert certificate["completed_at"] and certificate["old_row_versions_removed"]
    [row] = audit_of(seeded)
    assert certificate["audit_event_id"] == row["id"]
    assert row["before"]["erased_at"] == erased.erased_at.isoformat()
    assert row["before"]["key_id"] == erased.key_id and "recorded_late_at" in row["before"]
    with admin_connect(seeded) as conn:
        in_db = read_db_ledger(conn, Keyring(KEY))
    assert in_db is not None and in_db[0].erased_key(erased.key_id) is not None
    assert victim not in in_db[0].tenants

    # Complete now: a re-run says so, and records nothing twice.
    proc = run_hardening(*erase, url=seeded, env=file_env)
    assert proc.returncode == 2 and "already erased" in proc.stderr, proc.stderr
    # A certificate lost from the evidence is written again, with the same erasure time.
    for written in (evidence / "erasures").iterdir():
        written.unlink()
    proc = run_hardening(*erase, url=seeded, env=file_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [path] = (evidence / "erasures").glob("*.json")
    assert json.loads(path.read_text())["erased_at"] == erased.erased_at.isoformat()
    assert len(audit_of(seeded)) == 1


def test_an_erasure_stopped_after_the_store_write_is_red_until_completed(
    seeded: str, store: S3Store, keyring: Keyring, caplog: pytest.LogCaptureFixture
) -> None:
    """The state a crash between the two writes leaves: the next backup copies the erasure into
    the database, but nothing puts it on the audit log; the status line says so."""
    run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[1]
    run_sql(seeded, REFUSE_LEDGER_WRITES)
    with pytest.raises((HardeningError, psycopg.Error)):
        erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    run_sql(seeded, ACCEPT_LEDGER_WRITES)
    offboard(seeded, victim)
    with caplog.at_level(logging.WARNING, logger="hardening_pipeline"):
        run_backup(seeded, store, keyring)
    with admin_connect(seeded) as conn:
        in_db = read_db_ledger(conn, keyring)
    assert in_db is not None and victim not in in_db[0].tenants  # the backup caught it up

    report = run_status_check(seeded, store=store, keyring=keyring)
    [line] = [x for x in report.lines if x.name == "tenant_key_ledger"]
    assert not line.passed, line.detail
    assert f"erasure of tenant {victim}" in line.detail and "no audit row" in line.detail
    assert f"hardening erase-tenant {victim}" in line.fix
    assert f"erasure of tenant {victim}" in caplog.text and "no audit row" in caplog.text

    plan = plan_erasure(store, keyring, seeded, victim)
    assert plan.erased is not None and plan.missing == ("no audit row",)
    certificate = erase_tenant(store, keyring, seeded, plan)
    [erased] = store_ledger(store, keyring).erased
    assert certificate.erased_at == erased.erased_at.isoformat()
    assert certificate.audit_event_id is not None and certificate.old_row_versions_removed
    with admin_connect(seeded) as conn:
        assert ledger_status(conn, store, keyring)[0]


def test_a_snapshot_older_than_the_erasure_keeps_the_old_row_and_the_certificate_says_so(
    seeded: str,
    store: S3Store,
    keyring: Keyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[2]
    found = read_store_ledger(store, keyring)
    assert found is not None
    wrapped = base64.b64encode(found[0].tenants[victim].wrapped_key).decode()
    assert wrapped in ledger_pages(seeded)
    # A report that opened its transaction before the erasure, and still reads.
    holder = psycopg.connect(seeded, application_name="monthly-report")
    holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    holder.execute("SELECT count(*) FROM tenants").fetchone()
    monkeypatch.setattr(erasure, "OLD_VERSIONS_WAIT_SECONDS", 0.5, raising=False)
    try:
        certificate = erase_tenant(
            store, keyring, seeded, plan_erasure(store, keyring, seeded, victim)
        )
        # The proof: VACUUM FULL copied the old row version, key and all, into the new file.
        assert wrapped in ledger_pages(seeded)
        pid = holder.info.backend_pid
        assert "NOT yet physically removed" in certificate.database_copy
        assert f"pid {pid}" in certificate.database_copy
        assert (
            "monthly-report" in certificate.database_copy and "since" in certificate.database_copy
        )
        assert not certificate.old_row_versions_removed
        assert certificate.old_row_version_holders == [
            h for h in certificate.old_row_version_holders if f"pid {pid}" in h
        ]
        sentence = certificate.unfinished(tmp_path / "c.json")
        assert sentence is not None and f"pid {pid}" in sentence
        assert f"hardening erase-tenant {victim}" in sentence
        erasure.write_certificate(certificate, tmp_path)
        # A certificate that found the old version still there does not finish the erasure.
        plan = plan_erasure(store, keyring, seeded, victim, evidence_root=tmp_path)
        assert plan.erased is not None
        assert plan.missing == (f"no final certificate in {tmp_path / 'erasures'}",)
    finally:
        holder.close()
    certificate = erase_tenant(store, keyring, seeded, plan)
    assert certificate.old_row_versions_removed and certificate.unfinished(tmp_path) is None
    assert "none survives" in certificate.database_copy
    assert wrapped not in ledger_pages(seeded)
    erasure.write_certificate(certificate, tmp_path)
    with pytest.raises(ConfigError, match="already erased"):
        plan_erasure(store, keyring, seeded, victim, evidence_root=tmp_path)
    assert len(audit_of(seeded)) == 1


@pytest.fixture
def supabase_app(supabase_server: SupabaseServer) -> Iterator[str]:
    """The Supabase app, its blockers fixed and the kit migrated, reached as ``postgres``."""
    with adopting_app(supabase_server, migrate=True) as url:
        yield url


def test_on_supabase_a_revoked_grant_and_a_superusers_snapshot_are_named_then_completed(
    supabase_app: str,
    supabase_server: SupabaseServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the non-superuser ``postgres``: the audit function's grant revoked by the platform's
    superuser stops the erasure after the store's write; a superuser's report holding an old
    snapshot keeps the old row version, and ``postgres`` can still name it."""
    env = {**keyed_store_env(tmp_path), "BACKUP_SCHEMAS": "public,auth"}
    backup = run_hardening("backup", url=supabase_app, env=env)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    keyring = Keyring(base64.b64decode(env["BACKUP_ENCRYPTION_KEY"]))
    store = FileStore(tmp_path / "store")
    victim = sorted(store_ledger(store, keyring).tenants)[0]
    dbname = psycopg.conninfo.conninfo_to_dict(supabase_app)["dbname"]
    admin = supabase_server.url(dbname, "supabase_admin")
    grant = "EXECUTE ON FUNCTION hardening.record_tenant_erasure(uuid, jsonb)"
    run_sql(admin, f"REVOKE {grant} FROM postgres")
    evidence = tmp_path / "evidence"
    erase = ("erase-tenant", victim, "--yes", "--evidence-dir", str(evidence))
    proc = run_hardening(*erase, url=supabase_app, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "permission denied" in message and "no audit row" in message, message
    assert f"hardening erase-tenant {victim}" in message and "Traceback" not in message

    run_sql(admin, f"GRANT {grant} TO postgres")
    holder = psycopg.connect(admin, application_name="bi-export")
    holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    holder.execute("SELECT 1").fetchone()
    monkeypatch.setattr(erasure, "OLD_VERSIONS_WAIT_SECONDS", 0.5)
    try:
        plan = plan_erasure(store, keyring, supabase_app, victim, evidence_root=evidence)
        certificate = erase_tenant(store, keyring, supabase_app, plan)
    finally:
        holder.close()
    assert certificate.audit_event_id is not None and not certificate.old_row_versions_removed
    [held] = certificate.old_row_version_holders
    assert "role supabase_admin" in held and "bi-export" in held
    proc = run_hardening(*erase, url=supabase_app, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [path] = (evidence / "erasures").glob("*.json")
    final = json.loads(path.read_text())
    assert (
        final["old_row_versions_removed"] and final["audit_event_id"] == certificate.audit_event_id
    )
