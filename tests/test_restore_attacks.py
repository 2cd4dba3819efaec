"""Code execution through every restore entry point, tried and refused.

A backup carries the app's schema, so a restore runs SQL and code that came from the source
database (whose table owner may be an attacker) and from the store (whose writer may hold the
key). Each attack below tries to run ``COPY ... TO PROGRAM 'touch <marker>'`` on the restore
target; the marker is in a folder anyone may write to, so it would appear whichever OS user the
server runs as. The first test proves the marker appears when the payload does run as a
superuser, so the others can fail.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from hardening_pipeline.backup.app_schema import SCHEMA_OBJECT_NAME
from hardening_pipeline.backup.catalog import find_backup, list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import (
    MANIFEST_NAME,
    Manifest,
    SectionEntry,
    unwrap_data_key,
)
from hardening_pipeline.backup.manifest_signing import sign_manifest
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.object_format import ObjectEncoder, decode_object
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.backup.tenant_key_use import ObjectKeys
from hardening_pipeline.db.throwaway import throwaway_postgres
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.restore.binding import read_source_identity
from hardening_pipeline.restore.drill import DRILL_SUPERUSER, run_restore_drill
from hardening_pipeline.restore.tenant import restore_tenant
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import admin_connect

ATTACKER = "mallory"


@pytest.fixture
def marker() -> Iterator[Path]:
    folder = Path("/tmp") / f"hp-marker-{uuid.uuid4().hex[:12]}"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)  # the server's OS user must be able to write it, were it allowed
    path = folder / "pwned"
    yield path
    path.unlink(missing_ok=True)
    folder.rmdir()


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def program(marker: Path) -> str:
    return f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"


def on_restore(statement: str) -> str:
    """plpgsql that runs ``statement`` only in the drill's database, not on the source."""
    return (
        "IF current_database() = 'restore_drill' THEN "
        f"EXECUTE {psycopg.sql.quote(statement)}; END IF;"
    )


def attacker_app(url: str, body: str) -> None:
    """A table the attacker owns in ``public``, seeded, with ``body`` run as the attacker."""
    seed_demo_data(url, tenants=2, messages_per_unit=1, random_seed=11)
    with admin_connect(url) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ATTACKER}")
        conn.execute(f"CREATE ROLE {ATTACKER} NOLOGIN")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {ATTACKER}")
        conn.execute(f"SET ROLE {ATTACKER}")
        conn.execute(body)
        conn.execute("RESET ROLE")
        conn.commit()


def test_the_marker_appears_when_the_payload_runs_as_a_superuser(marker):
    with throwaway_postgres(prefer_docker=False) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(program(marker))
    assert marker.exists()


def test_a_comment_posing_as_a_dump_entry_stays_a_comment(db_url, store, keyring, marker):
    payload = (
        f"x\n--\n-- Name: y; Type: TABLE; Schema: public; Owner: postgres\n--\n\n"
        f"{program(marker)};\n"
    )
    attacker_app(
        db_url,
        "CREATE TABLE public.notes (id int PRIMARY KEY, body text);"
        "INSERT INTO public.notes VALUES (1, 'n');"
        f"COMMENT ON TABLE public.notes IS {psycopg.sql.quote(payload)};",
    )
    run_backup(db_url, store, keyring)
    result = run_restore_drill(store, keyring)
    assert not marker.exists()
    assert result.failure is None, result.failure


@pytest.mark.parametrize(
    "escape",
    ["", "RESET ROLE; ", f"SET SESSION AUTHORIZATION {DRILL_SUPERUSER}; "],
    ids=["plain", "reset-role", "session-authorization"],
)
def test_the_owners_check_function_runs_with_the_owners_rights_only(
    db_url, store, keyring, marker, escape
):
    attacker_app(
        db_url,
        "CREATE FUNCTION public.note_ok(body text) RETURNS boolean LANGUAGE plpgsql AS $f$ "
        f"BEGIN {on_restore(escape + program(marker))} RETURN true; END $f$;"
        "CREATE TABLE public.notes (id int PRIMARY KEY, body text CHECK (public.note_ok(body)));"
        "INSERT INTO public.notes VALUES (1, 'n');",
    )
    run_backup(db_url, store, keyring)
    result = run_restore_drill(store, keyring)
    assert not marker.exists()
    assert not result.passed and result.failed_stage == "restore", result.failure


@pytest.mark.parametrize("kind", ["generated column", "index expression"])
def test_the_owners_expressions_run_with_the_owners_rights_only(
    db_url, store, keyring, marker, kind
):
    function = (
        "CREATE FUNCTION public.note_key(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$ "
        f"BEGIN {on_restore('RESET ROLE; ' + program(marker))} RETURN i; END $f$;"
    )
    table = (
        "CREATE TABLE public.notes (id int PRIMARY KEY, "
        "k int GENERATED ALWAYS AS (public.note_key(id)) STORED);"
        if kind == "generated column"
        else "CREATE TABLE public.notes (id int PRIMARY KEY);"
        "CREATE INDEX notes_key ON public.notes (public.note_key(id));"
    )
    attacker_app(db_url, function + table + "INSERT INTO public.notes (id) VALUES (1);")
    run_backup(db_url, store, keyring)
    result = run_restore_drill(store, keyring)
    assert not marker.exists()
    assert not result.passed


def rewrite_schema_object(
    store: FileStore, keyring: Keyring, manifest: Manifest, edit: Callable[[bytes], bytes]
) -> None:
    """A key holder re-encrypts the schema object with ``edit`` applied; re-signs the manifest."""
    schema = manifest.app_schema
    assert schema is not None
    folder = manifest.folder("")
    data_key = unwrap_data_key(manifest, keyring)
    plain = b"".join(
        decode_object(
            [b"".join(store.get(folder + schema.name))],
            data_key,
            backup_id=manifest.backup_id,
            object_name=schema.name,
        )
    )
    forged = edit(plain)
    encoder = ObjectEncoder(
        [forged], data_key, backup_id=manifest.backup_id, object_name=schema.name
    )
    blob = b"".join(encoder)
    digest = hashlib.sha256(forged).hexdigest()
    entry = replace(
        schema,
        sections=(SectionEntry("archive", len(forged), digest),),
        plaintext_bytes=len(forged),
        plaintext_sha256=digest,
        compressed_bytes=encoder.compressed_bytes,
        ciphertext_bytes=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    store.put(folder + SCHEMA_OBJECT_NAME, [blob])
    store.put(folder + MANIFEST_NAME, [sign_manifest(replace(manifest, app_schema=entry), keyring)])


def forged_backup(db_url: str, store: FileStore, keyring: Keyring, marker: Path) -> Manifest:
    """A backup whose schema archive's comment was rewritten into a top-level COPY TO PROGRAM."""
    placeholder = "A" * 120
    attacker_app(
        db_url,
        "CREATE TABLE public.notes (id int PRIMARY KEY, body text);"
        f"COMMENT ON TABLE public.notes IS '{placeholder}';",
    )
    manifest = run_backup(db_url, store, keyring).manifest
    injected = f"x'; {program(marker)}; SELECT '".ljust(len(placeholder)).encode()
    assert len(injected) == len(placeholder)

    def edit(plain: bytes) -> bytes:
        assert plain.count(placeholder.encode()) == 1
        return plain.replace(placeholder.encode(), injected)

    rewrite_schema_object(store, keyring, manifest, edit)
    return find_backup(list_backups(store, keyring), None).manifest


def test_a_forged_schema_object_is_refused_by_the_drill_naming_the_entry(
    db_url, store, keyring, marker
):
    forged_backup(db_url, store, keyring, marker)
    result = run_restore_drill(store, keyring)
    assert not marker.exists()
    assert not result.passed and result.failed_stage == "restore"
    assert "reaches outside the database" in (result.failure or "")
    assert "comment public.TABLE notes" in (result.failure or "")


def test_a_forged_schema_object_is_refused_by_a_tenant_restore_and_leaves_nothing(
    db_url, store, keyring, marker, restore_target_url
):
    manifest = forged_backup(db_url, store, keyring, marker)
    tenant = next(o.tenant_id for o in manifest.objects if o.tenant_id)
    with admin_connect(restore_target_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'app_admin'").fetchone():
            conn.execute("CREATE ROLE app_admin LOGIN CREATEROLE BYPASSRLS")
        # Roles are cluster-wide: where an earlier test left an ordinary ``postgres`` (the
        # backup's owner) on this server, the app's admin must be able to act as it, as on the
        # app's own server, so the restore gets as far as the forged entry.
        if conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'postgres' AND NOT rolsuper"
        ).fetchone():
            conn.execute("GRANT postgres TO app_admin")
        name = conn.execute("SELECT current_database() AS d").fetchone()["d"]
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO app_admin')
    as_admin = psycopg.conninfo.make_conninfo(restore_target_url, user="app_admin")
    with pytest.raises(Exception, match="reaches outside the database"):
        restore_tenant(store, keyring, tenant_id=tenant, target_url=as_admin)
    assert not marker.exists()
    with admin_connect(restore_target_url) as conn:
        left = conn.execute(
            "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'hardening')"
        ).fetchone()
    assert left["n"] == 0


def test_a_key_holders_own_database_in_the_store_is_refused_and_runs_as_its_owners_only(
    db_url, empty_db_url, store, keyring, marker
):
    """No access to the victim's database: a backup of the attacker's own, in the victim's store."""
    from hardening_pipeline.db.migrations import apply_migrations

    apply_migrations(empty_db_url, applied_by="attacker")
    attacker_app(
        empty_db_url,
        "CREATE FUNCTION public.note_ok(body text) RETURNS boolean LANGUAGE plpgsql AS $f$ "
        f"BEGIN {on_restore('RESET ROLE; ' + program(marker))} RETURN true; END $f$;"
        "CREATE TABLE public.notes (id int PRIMARY KEY, body text CHECK (public.note_ok(body)));"
        "INSERT INTO public.notes VALUES (1, 'n');",
    )
    seed_demo_data(db_url, tenants=1, messages_per_unit=1, random_seed=15)
    run_backup(db_url, store, keyring)  # the victim's own backup, older
    attackers = run_backup(empty_db_url, store, keyring).manifest
    # Bound to the configured database: the attacker's backup is not drilled, and says why.
    refused = run_restore_drill(store, keyring, source=read_source_identity(db_url))
    assert not refused.passed and refused.failed_stage == "find"
    assert f"the newest backup {attackers.backup_id} is of database" in (refused.failure or "")
    assert f"--backup-id {attackers.backup_id}" in (refused.failure or "")
    with pytest.raises(CheckFailed, match="not of the configured database"):
        restore_tenant(
            store,
            keyring,
            tenant_id=next(o.tenant_id for o in attackers.objects if o.tenant_id),
            target_url=db_url,
            merge=True,
            source=read_source_identity(db_url),
        )
    # Named explicitly, it is drilled, and its code still runs as its owners only.
    named = run_restore_drill(
        store, keyring, backup_id=attackers.backup_id, source=read_source_identity(db_url)
    )
    assert not marker.exists()
    assert not named.passed and named.failed_stage == "restore"


def test_the_drills_server_runs_as_an_unprivileged_os_user_outside_group_root(
    db_url, store, keyring
):
    if os.geteuid() != 0:
        pytest.skip("as another user the server runs as that user, who is not root either")
    seed_demo_data(db_url, tenants=2, messages_per_unit=1, random_seed=12)
    run_backup(db_url, store, keyring)
    seen: dict[str, str] = {}
    import hardening_pipeline.restore.drill as drill

    original = drill.compare_with_manifest

    def spy(url: str, manifest: Manifest, keys: ObjectKeys):
        with psycopg.connect(url) as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            status = Path(f"/proc/{pid}/status").read_text()
        seen.update(
            line.split(":", 1) for line in status.splitlines() if line.split(":")[0] in
            ("Uid", "Gid", "Groups")
        )  # fmt: skip
        return original(url, manifest, keys)

    drill.compare_with_manifest = spy
    try:
        result = run_restore_drill(store, keyring)
    finally:
        drill.compare_with_manifest = original
    assert result.passed, result.failure
    assert seen["Uid"].split()[0] != "0"
    assert seen["Gid"].split()[0] != "0"
    assert "0" not in seen["Groups"].split()


def test_a_superuser_into_target_is_refused_before_the_schema_runs(
    db_url, store, keyring, restore_target_url
):
    seed_demo_data(db_url, tenants=2, messages_per_unit=1, random_seed=13)
    manifest = run_backup(db_url, store, keyring).manifest
    tenant = next(o.tenant_id for o in manifest.objects if o.tenant_id)
    with pytest.raises(ConfigError, match="--into connects as a superuser"):
        restore_tenant(store, keyring, tenant_id=tenant, target_url=restore_target_url)


def test_a_trigger_on_a_tenant_table_cannot_use_the_drills_checks(db_url, store, keyring, marker):
    """The drill checks write probe rows through the app's triggers, after the restore."""
    seed_demo_data(db_url, tenants=2, messages_per_unit=1, random_seed=14)
    with admin_connect(db_url) as conn:
        conn.execute(
            "CREATE FUNCTION public.on_message() RETURNS trigger LANGUAGE plpgsql AS $f$ "
            f"BEGIN {on_restore('RESET ROLE; ' + program(marker))} RETURN NEW; END $f$"
        )
        conn.execute(
            "CREATE TRIGGER on_message BEFORE INSERT ON public.messages "
            "FOR EACH ROW EXECUTE FUNCTION public.on_message()"
        )
        conn.commit()
    run_backup(db_url, store, keyring)
    result = run_restore_drill(store, keyring)
    assert not marker.exists()
    assert not result.passed
