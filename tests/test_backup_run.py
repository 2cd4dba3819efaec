"""A whole backup run against a real Postgres, into a folder and into a B2-strict S3 server.

Each guarantee of ``run_backup`` is tried by breaking it: the manifest write fails, a second
backup starts, a row has no tenant, the key is garbage, and the data is read back with only the
key and the manifest to prove the objects hold exactly the database's rows.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring, generate_master_key_b64
from hardening_pipeline.backup.manifest import (
    MANIFEST_NAME,
    NON_TENANT_OBJECT_NAME,
    Manifest,
    ObjectEntry,
    TableEntry,
)
from hardening_pipeline.backup.nightly import BackupResult, run_backup
from hardening_pipeline.backup.object_format import ObjectDecoder
from hardening_pipeline.backup.store import MIN_PART_SIZE, BackupStore, FileStore
from hardening_pipeline.backup.tenant_key_use import object_key
from hardening_pipeline.backup.tenant_keys import LEDGER_KEY
from hardening_pipeline.errors import CheckFailed, HardeningError
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import admin_connect
from tests.support.s3_server import B2LikeS3Server, closed_port_url
from tests.support.stores import RecordingStore

TENANT_TABLES = ("tenants", "developments", "units", "messages", "onboarding_attempts")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def seeded(db_url: str) -> str:
    seed_demo_data(db_url, tenants=3, messages_per_unit=5, random_seed=7)
    return db_url


def decode_tables(
    store: BackupStore, folder: str, manifest: Manifest, keyring: Keyring, entry: ObjectEntry
) -> dict[str, bytes]:
    """Decrypt one object with only the key and the manifest, and cut it into its tables."""
    decoder = ObjectDecoder(
        store.get(folder + entry.name),
        object_key(store, manifest, keyring, entry),
        backup_id=manifest.backup_id,
        object_name=entry.name,
        expected_sha256=entry.sha256,
    )
    plaintext = b"".join(decoder)
    tables, offset = {}, 0
    for table in entry.tables:
        tables[table.name] = plaintext[offset : offset + table.bytes]
        offset += table.bytes
    assert offset == len(plaintext)
    return tables


def first_column(copy_text: bytes) -> set[str]:
    return {line.split(b"\t", 1)[0].decode() for line in copy_text.splitlines()}


def sql_ids(conn: psycopg.Connection, table: str, tenant_id: str) -> set[str]:
    column = "id" if table == "tenants" else "tenant_id"
    rows = conn.execute(
        sql.SQL("SELECT id::text AS id FROM {} WHERE {}::text = %s").format(
            sql.Identifier(table), sql.Identifier(column)
        ),
        (tenant_id,),
    ).fetchall()
    return {r["id"] for r in rows}


def assert_backup_holds_the_database(
    result: BackupResult, store: BackupStore, keyring: Keyring, db_url: str
) -> None:
    catalog = list_backups(store, keyring)
    assert [b.backup_id for b in catalog.valid] == [result.backup_id]
    assert not catalog.incomplete and not catalog.invalid
    stored = catalog.valid[0]
    manifest = stored.manifest
    assert manifest is not None and manifest == result.manifest

    with admin_connect(db_url) as conn:
        tenant_ids = {r["id"] for r in conn.execute("SELECT id::text AS id FROM tenants")}
        assert len(tenant_ids) == 3
        assert {o.tenant_id for o in manifest.objects} == tenant_ids | {None}
        for entry in manifest.objects:
            tables = decode_tables(store, stored.folder, manifest, keyring, entry)
            if entry.tenant_id is None:
                continue
            assert set(tables) >= set(TENANT_TABLES)
            for name in TENANT_TABLES:
                text = tables[name]
                expected = sql_ids(conn, name, entry.tenant_id)
                # Exactly this tenant's rows: same ids, one line each, nothing from another tenant.
                assert first_column(text) == expected, name
                assert text.count(b"\n") == len(expected) == entry_table(entry, name).row_count
        # And together the tenant objects hold every row of every tenant-scoped table.
        for name in TENANT_TABLES:
            query = sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(name))
            total = conn.execute(query).fetchone()["n"]
            exported = sum(entry_table(o, name).row_count for o in manifest.objects if o.tenant_id)
            assert total == exported, name

        shared = manifest.object(NON_TENANT_OBJECT_NAME)
        shared_tables = decode_tables(store, stored.folder, manifest, keyring, shared)
        audit = conn.execute("SELECT count(*) AS n FROM audit_events").fetchone()["n"]
        migrations = conn.execute(
            "SELECT filename FROM hardening.schema_migrations ORDER BY filename"
        ).fetchall()
        untenanted = conn.execute(
            "SELECT count(*) AS n FROM audit_events a WHERE a.tenant_id IS NULL "
            "OR NOT EXISTS (SELECT FROM tenants t WHERE t.id = a.tenant_id)"
        ).fetchone()["n"]
        assert audit > untenanted >= 0
        # The audit log is split like a tenant table: each tenant's rows in its own object
        # (erased with its key), the rest in the shared one, every row exactly once.
        assert shared_tables["audit_events"].count(b"\n") == untenanted
        assert entry_table(shared, "audit_events").row_count == untenanted
        per_tenant = sum(
            entry_table(o, "audit_events").row_count for o in manifest.objects if o.tenant_id
        )
        assert per_tenant + untenanted == audit
        migration_text = shared_tables["hardening.schema_migrations"]
        assert migration_text.count(b"\n") == len(migrations)
        for row in migrations:
            assert row["filename"].encode() in migration_text


def entry_table(entry: ObjectEntry, name: str) -> TableEntry:
    return next(t for t in entry.tables if t.name == name)


def test_backup_to_a_folder_holds_every_row(seeded: str, keyring: Keyring, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "backups")
    result = run_backup(seeded, store, keyring)
    assert not result.dry_run
    assert result.rows > 150
    # The key ledger is stored beside the backups, not as part of one.
    assert result.stored_bytes == sum(o.size for o in store.list() if o.key != LEDGER_KEY)
    assert result.location.startswith(store.describe())
    assert_backup_holds_the_database(result, store, keyring, seeded)


def test_backup_to_b2_like_s3_holds_every_row(
    seeded: str, keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    store = s3_server.store(s3_bucket)
    result = run_backup(seeded, store, keyring)
    assert s3_server.rejected == []  # no checksum header B2 would refuse
    assert_backup_holds_the_database(result, store, keyring, seeded)
    keys = [o.key for o in store.list() if o.key != LEDGER_KEY]
    assert keys and all(k.startswith(result.manifest.folder("")) for k in keys)
    folder = result.manifest.created_at.strftime("%Y/%m/%d/") + result.backup_id + "/"
    assert result.manifest.folder("") == folder
    assert f"{folder}{MANIFEST_NAME}" in keys


def test_dry_run_stores_nothing(seeded: str, keyring: Keyring, tmp_path: Path) -> None:
    store = RecordingStore(FileStore(tmp_path / "backups"))
    result = run_backup(seeded, store, keyring, dry_run=True)
    assert result.dry_run
    assert store.mutations() == []
    assert not (tmp_path / "backups").exists()
    # Everything else ran: the manifest describes every tenant and counts every row.
    assert len(result.manifest.objects) == 4
    assert result.rows > 150 and result.ciphertext_bytes > 0


def test_manifest_is_written_last_and_a_failed_manifest_leaves_no_backup(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    ok = RecordingStore(FileStore(tmp_path / "ok"))
    run_backup(seeded, ok, keyring)
    puts = [key for op, key in ok.calls if op == "put"]
    assert puts[-1].endswith("/" + MANIFEST_NAME)
    assert all(not key.endswith(MANIFEST_NAME) for key in puts[:-1])

    broken = RecordingStore(FileStore(tmp_path / "broken"), fail_put_at=len(puts))
    with pytest.raises(HardeningError):
        run_backup(seeded, broken, keyring)
    catalog = list_backups(broken.inner, keyring)
    assert catalog.valid == [] and catalog.invalid == []
    assert len(catalog.incomplete) == 1
    assert not catalog.incomplete[0].has_manifest_object


def test_manifest_put_refused_by_s3_leaves_an_incomplete_backup(
    seeded: str, keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str, s3_faults
) -> None:
    store = s3_server.store(s3_bucket)
    # The key ledger, three tenants, the shared object and the schema go up first; the seventh
    # PutObject is the manifest (the schema's place among the others depends on timing, the
    # manifest's never).
    s3_faults.fail_next("PutObject", status=403, after=6)
    with pytest.raises(HardeningError, match="AccessDenied"):
        run_backup(seeded, store, keyring)
    assert s3_faults.injected == {"PutObject": 1}
    refused = [r for r in s3_server.requests if r.operation == "PutObject"][-1]
    assert refused.path.endswith("/" + MANIFEST_NAME)
    catalog = list_backups(store, keyring)
    assert catalog.valid == [] and catalog.invalid == []
    assert len(catalog.incomplete) == 1


def test_second_concurrent_backup_refuses(seeded: str, keyring: Keyring, tmp_path: Path) -> None:
    store = RecordingStore(FileStore(tmp_path / "backups"))
    with admin_connect(seeded) as holder:
        holder.execute("SELECT job FROM hardening.job_locks WHERE job = 'backup' FOR UPDATE")
        with pytest.raises(CheckFailed, match="another backup"):
            run_backup(seeded, store, keyring)
        holder.rollback()
    assert store.calls == []
    # Once the first one is done the lock is free again.
    run_backup(seeded, store, keyring)


def test_row_without_a_tenant_fails_the_backup_and_writes_no_manifest(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    with admin_connect(seeded, autocommit=True) as conn:
        # A tenant-scoped table someone added without the foreign key to tenants.
        conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, tenant_id uuid NOT NULL)")
        tenant = conn.execute("SELECT id FROM tenants LIMIT 1").fetchone()["id"]
        conn.execute("INSERT INTO notes VALUES (1, %s), (2, %s)", (tenant, uuid.uuid4()))
    store = RecordingStore(FileStore(tmp_path / "backups"))
    with pytest.raises(CheckFailed, match=r"incomplete \(notes: 1 of 2 rows\)"):
        run_backup(seeded, store, keyring)
    assert not any(key.endswith(MANIFEST_NAME) for _, key in store.mutations())
    catalog = list_backups(store.inner, keyring)
    assert catalog.valid == [] and len(catalog.incomplete) == 1


def test_multipart_upload_for_objects_bigger_than_a_part(
    seeded: str, keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    with admin_connect(seeded) as conn:
        conn.execute("CREATE TABLE public.attachments (id int PRIMARY KEY, body text NOT NULL)")
        with conn.cursor().copy("COPY attachments (id, body) FROM STDIN") as copy:
            # Random bytes do not compress, so the shared object stays above one 5 MiB part.
            for i in range(160):
                copy.write_row((i, os.urandom(48 * 1024).hex()))
        conn.commit()
    store = s3_server.store(s3_bucket, part_size=MIN_PART_SIZE)
    result = run_backup(seeded, store, keyring)
    shared = result.manifest.object(NON_TENANT_OBJECT_NAME)
    assert shared.ciphertext_bytes > MIN_PART_SIZE
    ops = s3_server.operations()
    assert ops.count("CreateMultipartUpload") == 1
    assert ops.count("UploadPart") == -(-shared.ciphertext_bytes // MIN_PART_SIZE)
    assert ops.count("CompleteMultipartUpload") == 1
    assert s3_server.rejected == []
    stored = list_backups(store, keyring).valid[0]
    tables = decode_tables(store, stored.folder, result.manifest, keyring, shared)
    assert tables["attachments"].count(b"\n") == 160


def _cli(env_overrides: dict[str, str | None], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "HARDENING_"))}
    env["HARDENING_STATE_DIR"] = str(tmp_path / "state")
    env["BACKUP_STORE_URL"] = (tmp_path / "store").as_uri()
    for name, value in env_overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, "-m", "hardening_pipeline.cli", "backup"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("garbage", "BACKUP_ENCRYPTION_KEY"),
        ("c2hvcnQ=", "must decode to exactly 32"),
        (None, "BACKUP_ENCRYPTION_KEY is not set"),
    ],
)
def test_cli_refuses_a_missing_or_malformed_key_before_reading_data(
    key: str | None, message: str, tmp_path: Path
) -> None:
    # The database is unreachable: if the key were checked after connecting, the error would be
    # about the connection. Getting the key error proves nothing was read first.
    proc = _cli(
        {
            "HARDENING_DATABASE_URL": closed_port_url().replace("http", "postgresql") + "/app",
            "BACKUP_ENCRYPTION_KEY": key,
        },
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "state").exists()  # no local key is invented for a real database


def test_cli_backup_with_a_real_database(seeded: str, tmp_path: Path) -> None:
    proc = _cli({"HARDENING_DATABASE_URL": seeded, "BACKUP_ENCRYPTION_KEY": "garbage"}, tmp_path)
    assert proc.returncode == 2 and "BACKUP_ENCRYPTION_KEY" in proc.stderr
    assert not (tmp_path / "store").exists()

    key = generate_master_key_b64()
    proc = _cli({"HARDENING_DATABASE_URL": seeded, "BACKUP_ENCRYPTION_KEY": key}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    keyring = Keyring(base64.b64decode(key))
    catalog = list_backups(FileStore(tmp_path / "store"), keyring)
    assert len(catalog.valid) == 1


def test_cli_store_failure_is_one_red_sentence(seeded: str, tmp_path: Path) -> None:
    key = generate_master_key_b64()
    proc = _cli(
        {
            "HARDENING_DATABASE_URL": seeded,
            "BACKUP_ENCRYPTION_KEY": key,
            # A folder that cannot be created, whoever runs the tests.
            "BACKUP_STORE_URL": "file:///proc/hardening-backups",
        },
        tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "could not write" in proc.stderr
    assert "Traceback" not in proc.stderr
