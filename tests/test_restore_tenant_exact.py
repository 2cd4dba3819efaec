"""`restore --tenant` restores exactly what was asked, or nothing.

Two ways it used to restore the wrong thing, each tried the way an attacker would:

* a store writer (no key) breaks the newest backup (an object removed or cut short, an older
  manifest replayed over it, the folder moved): the restore quietly took the backup before, so
  rows deleted since came back. It must refuse, unless an older backup is named with
  ``--backup-id``, and always say which backup it restored and when that backup was taken;
* a key holder re-encrypts a tenant's object with rows of another tenant (or of none) inside:
  the restore inserted them. Every row must carry the requested tenant's id, in a table that
  has a tenant column, or the whole restore is refused before anything is written.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from hardening_pipeline.backup.catalog import NoBackupError
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import MANIFEST_NAME, Manifest, TableEntry, backup_folder
from hardening_pipeline.backup.manifest_signing import sign_manifest
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.object_format import ObjectEncoder, decode_object
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.backup.tenant_digests import hexdigest, part_digest_key
from hardening_pipeline.backup.tenant_key_use import object_key
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.errors import CheckFailed
from hardening_pipeline.restore.tenant import restore_tenant
from hardening_pipeline.seed import seed_demo_data
from tests.support.cli import run_hardening
from tests.support.db import admin_connect

KEY = bytes(range(50, 82))
TABLES = ("tenants", "developments", "units", "messages", "onboarding_attempts", "audit_events")


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(KEY)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return {
        "BACKUP_ENCRYPTION_KEY": base64.b64encode(KEY).decode(),
        "BACKUP_STORE_URL": (tmp_path / "store").as_uri(),
    }


def row_counts(url: str, tables: tuple[str, ...] = TABLES) -> dict[str, int]:
    with admin_connect(url) as conn:
        return {
            t: conn.execute(f"SELECT count(*) AS n FROM public.{t}").fetchone()["n"]  # noqa: S608
            for t in tables
        }


def tenant_ids(url: str) -> list[str]:
    with admin_connect(url) as conn:
        return [r["id"] for r in conn.execute("SELECT id::text AS id FROM tenants ORDER BY id")]


def delete_message(url: str, tenant: str) -> str:
    """Delete one of ``tenant``'s messages, as a user's mistake would; returns its id."""
    with admin_connect(url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:oops', false)")
        row = conn.execute(
            "DELETE FROM messages WHERE id = (SELECT id FROM messages WHERE tenant_id = %s "
            "ORDER BY id LIMIT 1) RETURNING id::text AS id",
            (tenant,),
        ).fetchone()
        conn.commit()
    return row["id"]


def message_exists(url: str, message_id: str) -> bool:
    with admin_connect(url) as conn:
        return bool(conn.execute("SELECT 1 FROM messages WHERE id = %s", (message_id,)).fetchone())


def refused_merge(tenant: str, url: str, env: dict[str, str]) -> str:
    """`restore --tenant T --into url --merge` must be red (1) with no traceback; its stderr."""
    proc = run_hardening("restore", "--tenant", tenant, "--into", url, "--merge", url=url, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return " ".join(proc.stderr.split())


# --- forging a tenant's object (needs the key) ---------------------------------------------------


def tenant_tables(store: FileStore, keyring: Keyring, manifest: Manifest, tenant: str):
    """``{table name: COPY text}`` of ``tenant``'s object, decrypted and cut by the manifest."""
    entry = next(o for o in manifest.objects if o.tenant_id == tenant)
    blob = b"".join(store.get(manifest.folder("") + entry.name))
    plain = b"".join(
        decode_object(
            [blob],
            object_key(store, manifest, keyring, entry),
            backup_id=manifest.backup_id,
            object_name=entry.name,
            expected_sha256=entry.sha256,
        )
    )
    texts, pos = {}, 0
    for table in entry.tables:
        texts[table.name] = plain[pos : pos + table.bytes]
        pos += table.bytes
    return entry, texts


def rewrite_tenant_object(
    store: FileStore,
    keyring: Keyring,
    manifest: Manifest,
    tenant: str,
    edit: Callable[[dict[str, bytes], list[TableEntry]], None],
) -> Manifest:
    """Re-encrypt ``tenant``'s object after ``edit`` changed its tables; re-sign the manifest.

    Every digest, size and row count is recomputed, so the listing, the MAC and the per-table
    digests all verify: only the rows themselves can give the forgery away.
    """
    entry, texts = tenant_tables(store, keyring, manifest, tenant)
    tables = list(entry.tables)
    edit(texts, tables)
    plain = b"".join(texts[t.name] for t in tables)
    key = object_key(store, manifest, keyring, entry)
    # The tenant's digests are keyed by its own key: the forger holds it.
    digest_key = part_digest_key(manifest, entry, key)
    encoder = ObjectEncoder([plain], key, backup_id=manifest.backup_id, object_name=entry.name)
    blob = b"".join(encoder)
    forged = replace(
        entry,
        tables=tuple(
            replace(
                t,
                row_count=texts[t.name].count(b"\n"),
                bytes=len(texts[t.name]),
                sha256=hexdigest(digest_key, texts[t.name]),
            )
            for t in tables
        ),
        plaintext_bytes=len(plain),
        plaintext_sha256=hexdigest(digest_key, plain),
        compressed_bytes=encoder.compressed_bytes,
        ciphertext_bytes=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    objects = tuple(forged if o is entry else o for o in manifest.objects)
    signed = replace(manifest, objects=objects)
    folder = manifest.folder("")
    store.put(folder + entry.name, [blob])
    store.put(folder + MANIFEST_NAME, [sign_manifest(signed, keyring)])
    return signed


def rows_of(text: bytes, columns: tuple[str, ...], column: str, value: str) -> list[bytes]:
    """The COPY lines of ``text`` whose ``column`` is ``value`` (text form)."""
    index = columns.index(column)
    return [
        line + b"\n"
        for line in text.split(b"\n")
        if line and line.split(b"\t")[index] == value.encode()
    ]


# --- 5: a broken newest backup is never silently replaced by an older one ------------------------


@pytest.fixture
def two_backups(db_url, store, keyring):
    """An older backup, a message of the first tenant deleted, then the newest backup."""
    seed_demo_data(db_url, tenants=2, messages_per_unit=2, random_seed=5)
    older = run_backup(db_url, store, keyring)
    tenant = tenant_ids(db_url)[0]
    gone = delete_message(db_url, tenant)
    time.sleep(1.1)  # backup ids carry the second: the newest must sort last
    newest = run_backup(db_url, store, keyring)
    assert older.manifest.created_at < newest.manifest.created_at
    return older, newest, tenant, gone


def _break_newest(kind: str, store: FileStore, older, newest) -> None:
    folder = newest.manifest.folder("")
    other = next(o for o in newest.manifest.objects if o.tenant_id is not None)
    if kind == "object missing":
        store.delete(folder + other.name)
    elif kind == "object wrong size":
        blob = b"".join(store.get(folder + other.name))
        store.put(folder + other.name, [blob[: len(blob) // 2]])
    elif kind == "older manifest replayed":
        replayed = b"".join(store.get(older.manifest.folder("") + MANIFEST_NAME))
        store.put(folder + MANIFEST_NAME, [replayed])
    elif kind == "manifest moved":
        later = backup_folder("", newest.backup_id, newest.manifest.created_at + timedelta(days=1))
        for obj in store.list(folder):
            data = b"".join(store.get(obj.key))
            store.put(later + obj.key[len(folder) :], [data])
            store.delete(obj.key)
    else:  # pragma: no cover
        raise AssertionError(kind)


BREAKS = ["object missing", "object wrong size", "older manifest replayed", "manifest moved"]


@pytest.mark.parametrize("kind", BREAKS)
def test_a_broken_newest_backup_refuses_the_tenant_restore(
    two_backups, store, keyring, db_url, kind
):
    older, newest, tenant, gone = two_backups
    _break_newest(kind, store, older, newest)
    before = row_counts(db_url)
    with pytest.raises(NoBackupError) as caught:
        restore_tenant(store, keyring, tenant_id=tenant, target_url=db_url, merge=True)
    message = str(caught.value)
    assert newest.backup_id in message and "cannot be trusted" in message, message
    assert "--backup-id" in message and older.backup_id in message, message
    # The deleted row did not come back from the older backup: nothing was written at all.
    assert not message_exists(db_url, gone)
    assert row_counts(db_url) == before


def test_cli_refuses_a_broken_newest_backup_and_restores_an_older_one_only_when_named(
    two_backups, store, db_url, cli_env
):
    older, newest, tenant, gone = two_backups
    _break_newest("object missing", store, older, newest)
    before = row_counts(db_url)
    err = refused_merge(tenant, db_url, cli_env)
    assert newest.backup_id in err and "is missing" in err and "--backup-id" in err, err
    assert err.count(". ") == 0, err  # one sentence
    assert not message_exists(db_url, gone) and row_counts(db_url) == before

    # Named explicitly, the older backup is restored, and the output says which one and when.
    named = run_hardening(
        "restore",
        "--tenant",
        tenant,
        "--into",
        db_url,
        "--merge",
        "--backup-id",
        older.backup_id,
        url=db_url,
        env=cli_env,
    )
    assert named.returncode == 0, named.stdout + named.stderr
    out = " ".join(named.stdout.split())
    assert older.backup_id in out, out
    assert older.manifest.created_at.isoformat(timespec="seconds") in out, out
    assert message_exists(db_url, gone)


def test_cli_names_the_backup_restored_and_when_it_was_taken(two_backups, db_url, cli_env):
    _, newest, tenant, _ = two_backups
    done = run_hardening(
        "restore", "--tenant", tenant, "--into", db_url, "--merge", url=db_url, env=cli_env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert f"restored from backup {newest.backup_id}" in out, out
    assert newest.manifest.created_at.isoformat(timespec="seconds") in out, out


def test_result_carries_the_backup_and_its_creation_time(two_backups, store, keyring, db_url):
    _, newest, tenant, _ = two_backups
    result = restore_tenant(store, keyring, tenant_id=tenant, target_url=db_url, merge=True)
    assert result.backup_id == newest.backup_id
    assert result.created_at == newest.manifest.created_at


# --- 6: every row carries the requested tenant's id ----------------------------------------------


@pytest.fixture
def backed_up(db_url, store, keyring):
    seed_demo_data(db_url, tenants=2, messages_per_unit=2, random_seed=6)
    first, second = tenant_ids(db_url)
    return run_backup(db_url, store, keyring).manifest, first, second


def plant_message_of(second: str, manifest: Manifest, store, keyring, message_id: str):
    """The edit that copies ``second``'s message ``message_id`` into another tenant's object."""
    entry, texts = tenant_tables(store, keyring, manifest, second)
    columns = next(t.columns for t in entry.tables if t.name == "messages")
    (planted,) = rows_of(texts["messages"], columns, "id", message_id)

    def edit(tables: dict[str, bytes], _: list[TableEntry]) -> None:
        tables["messages"] += planted

    return edit


def test_another_tenants_row_refuses_the_merge_and_writes_nothing(
    backed_up, store, keyring, db_url
):
    manifest, first, second = backed_up
    own_gone = delete_message(db_url, first)
    other_gone = delete_message(db_url, second)
    edit = plant_message_of(second, manifest, store, keyring, other_gone)
    rewrite_tenant_object(store, keyring, manifest, first, edit)
    before = row_counts(db_url)
    with pytest.raises(CheckFailed) as caught:
        restore_tenant(store, keyring, tenant_id=first, target_url=db_url, merge=True)
    message = str(caught.value)
    assert "messages" in message and "1 row" in message and first in message, message
    assert row_counts(db_url) == before
    assert not message_exists(db_url, other_gone) and not message_exists(db_url, own_gone)


def test_cli_refuses_another_tenants_row_with_merge(backed_up, store, keyring, db_url, cli_env):
    manifest, first, second = backed_up
    delete_message(db_url, first)
    other_gone = delete_message(db_url, second)
    edit = plant_message_of(second, manifest, store, keyring, other_gone)
    rewrite_tenant_object(store, keyring, manifest, first, edit)
    before = row_counts(db_url)
    err = refused_merge(first, db_url, cli_env)
    assert "messages" in err and "1 row" in err and "another tenant" in err, err
    assert row_counts(db_url) == before and not message_exists(db_url, other_gone)


def test_another_tenant_planted_in_the_tenants_table_refuses_a_fresh_restore(
    backed_up, store, keyring, empty_db_url
):
    manifest, first, second = backed_up
    entry, texts = tenant_tables(store, keyring, manifest, second)
    columns = next(t.columns for t in entry.tables if t.name == "tenants")
    (planted,) = rows_of(texts["tenants"], columns, "id", second)

    def edit(tables: dict[str, bytes], _: list[TableEntry]) -> None:
        tables["tenants"] += planted

    rewrite_tenant_object(store, keyring, manifest, first, edit)
    apply_migrations(empty_db_url)
    before = row_counts(empty_db_url)
    with pytest.raises(CheckFailed, match=r"1 row\(s\) of tenants "):
        restore_tenant(store, keyring, tenant_id=first, target_url=empty_db_url)
    assert row_counts(empty_db_url) == before
    assert tenant_ids(empty_db_url) == []


APP_SQL = """
CREATE TABLE public.notes (
    id int PRIMARY KEY, tenant_id uuid REFERENCES public.tenants (id), body text NOT NULL
);
CREATE TABLE public.tags (id int PRIMARY KEY, label text NOT NULL);
GRANT SELECT, INSERT ON public.notes, public.tags TO service_role;
"""


@pytest.fixture
def app_backed_up(db_url, store, keyring):
    """An app table whose tenant column allows NULL, and a table with no tenant column."""
    seed_demo_data(db_url, tenants=2, messages_per_unit=1, random_seed=7)
    first, second = tenant_ids(db_url)
    with admin_connect(db_url) as conn:
        conn.execute(APP_SQL)
        conn.execute(
            "INSERT INTO notes VALUES (1, %s, 'mine'), (2, %s, 'theirs')",
            (first, second),
        )
        conn.execute("INSERT INTO tags VALUES (1, 'shared')")
        conn.commit()
    manifest = run_backup(db_url, store, keyring).manifest
    entry = next(o for o in manifest.objects if o.tenant_id == first)
    names = {t.name for t in entry.tables}
    assert "notes" in names and "tags" not in names
    with admin_connect(db_url) as conn:
        conn.execute("DELETE FROM notes WHERE id = 1")
        conn.commit()
    return manifest, first, second


def test_a_row_without_a_tenant_refuses_the_restore(app_backed_up, store, keyring, db_url):
    manifest, first, _ = app_backed_up

    def edit(tables: dict[str, bytes], _: list[TableEntry]) -> None:
        tables["notes"] += b"4\t\\N\tplanted\n"

    rewrite_tenant_object(store, keyring, manifest, first, edit)
    before = row_counts(db_url, (*TABLES, "notes"))
    with pytest.raises(CheckFailed) as caught:
        restore_tenant(store, keyring, tenant_id=first, target_url=db_url, merge=True)
    message = str(caught.value)
    assert "notes" in message and "1 row" in message, message
    assert row_counts(db_url, (*TABLES, "notes")) == before


def test_a_table_without_a_tenant_column_refuses_the_restore(app_backed_up, store, keyring, db_url):
    manifest, first, _ = app_backed_up

    def edit(tables: dict[str, bytes], entries: list[TableEntry]) -> None:
        tables["tags"] = b"2\tplanted\n"
        entries.append(TableEntry("tags", ("id", "label"), 1, 0, ""))

    rewrite_tenant_object(store, keyring, manifest, first, edit)
    before = row_counts(db_url, (*TABLES, "notes", "tags"))
    with pytest.raises(CheckFailed) as caught:
        restore_tenant(store, keyring, tenant_id=first, target_url=db_url, merge=True)
    message = str(caught.value)
    assert "tags" in message and "tenant column" in message, message
    assert row_counts(db_url, (*TABLES, "notes", "tags")) == before
