"""The outside review's attacks on the seals, as a superuser on the test server.

1. Replacing ``pg_catalog.sha256`` so a forged row hashes like the row it replaced: the seal
   digests are computed in Python from the fetched column values, so the forgery is red with
   full and quick verification, and no recording run can vouch for it.
2. The unsealed window: delete the rows newer than the last seal, rewind the sequence, insert a
   back-dated row. The next seal refuses and verification is red, naming the ids; so are a
   rewound sequence and a reused or missing id below a recorded high-water mark.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess

import psycopg
import pytest

from hardening_pipeline.hardening.seals import (
    SealError,
    read_seals,
    seal_audit_log,
    verify_audit_seals,
)
from hardening_pipeline.hardening.status import run_status_check
from tests.support.cli import keyed_store_env, run_hardening
from tests.support.db import admin_connect, insert_tenant, write_tenants

LINE = "audit_seal_chain"

# The row text the in-database digest used to hash (format 1).
V1_TEXT = """
    SELECT jsonb_build_array(id, actor, tenant_id, table_name, operation, record_id, before,
                             after, created_at AT TIME ZONE 'UTC', db_role, txid)::text AS t
    FROM audit_events WHERE id = %s
"""


@pytest.fixture
def su(db_url):
    with admin_connect(db_url, autocommit=True) as conn:
        yield conn


def tamper(su: psycopg.Connection, *statements: tuple[str, tuple]) -> None:
    with su.transaction():
        su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        for statement, params in statements:
            su.execute(statement, params)
        su.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")


def red_lines(report) -> list[str]:
    return [x.name for x in report.red]


# --- 1. a replaced sha256 ----------------------------------------------------------------------


def override_sha256(su: psycopg.Connection, forged_text: str, old_hash: bytes) -> None:
    """Make pg_catalog.sha256 return ``old_hash`` for the forged row's text, the real hash
    otherwise (the built-in stays reachable under another name). CREATE OR REPLACE is not
    enough: a built-in function's OID is dispatched to its C code whatever pg_proc says, so
    the catalog row goes and a new function takes the name."""
    su.execute(
        "CREATE FUNCTION public.real_sha256(bytea) RETURNS bytea "
        "LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE AS 'sha256_bytea'"
    )
    su.execute("DELETE FROM pg_proc WHERE oid = 'pg_catalog.sha256(bytea)'::regprocedure")
    su.execute(
        psycopg.sql.SQL(
            "CREATE FUNCTION pg_catalog.sha256(bytea) RETURNS bytea "
            "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN $1 = {} "
            "THEN {}::bytea ELSE public.real_sha256($1) END $$"
        ).format(psycopg.sql.Literal(forged_text.encode("utf-8")), psycopg.sql.Literal(old_hash))
    )


def restore_sha256(su: psycopg.Connection) -> None:
    su.execute("DROP FUNCTION pg_catalog.sha256(bytea)")
    su.execute(
        "CREATE FUNCTION pg_catalog.sha256(bytea) RETURNS bytea "
        "LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE AS 'sha256_bytea'"
    )
    su.execute("DROP FUNCTION public.real_sha256(bytea)")


def test_a_replaced_sha256_does_not_hide_a_forged_row(db_url, su, tmp_path, keyring):
    from hardening_pipeline.backup.store import FileStore

    store = FileStore(tmp_path / "store")
    ids = write_tenants(su, 2)
    seal_audit_log(db_url, store=store, keyring=keyring)
    recorded = verify_audit_seals(db_url, store=store, keyring=keyring, record_as="test")
    assert recorded.passed, recorded.detail
    target = ids[3]
    old_text = su.execute(V1_TEXT, (target,)).fetchone()["t"]
    tamper(su, ("UPDATE audit_events SET actor = 'mallory' WHERE id = %s", (target,)))
    forged_text = su.execute(V1_TEXT, (target,)).fetchone()["t"]
    override_sha256(su, forged_text, hashlib.sha256(old_text.encode()).digest())
    # The override is live: the database itself now vouches for the forged row.
    assert (
        su.execute("SELECT sha256(convert_to(%s, 'UTF8')) AS h", (forged_text,)).fetchone()["h"]
        == hashlib.sha256(old_text.encode()).digest()
    )
    try:
        where = {"store": store, "keyring": keyring}
        for full in (True, False):
            result = verify_audit_seals(db_url, full=full, **where)
            assert not result.passed and result.first_bad_id == target, result.detail
        # A recording run re-hashes in Python: it records nothing over the forged row.
        assert not verify_audit_seals(db_url, record_as="attacker", full=True, **where).passed
        assert not verify_audit_seals(db_url, record_as="attacker", **where).passed
        assert LINE in red_lines(run_status_check(db_url, store=store, keyring=keyring))
        assert LINE in red_lines(run_status_check(db_url))
    finally:
        restore_sha256(su)
    quick = verify_audit_seals(db_url, store=store, keyring=keyring)
    assert not quick.passed and quick.first_bad_id == target, quick.detail


def test_cli_verify_only_full_is_red_under_a_replaced_sha256(db_url, su, tmp_path):
    cli = functools.partial(run_hardening, url=db_url, env=keyed_store_env(tmp_path), timeout=120)

    ids = write_tenants(su, 1)
    assert cli("seal").returncode == 0
    old_text = su.execute(V1_TEXT, (ids[1],)).fetchone()["t"]
    tamper(su, ("UPDATE audit_events SET actor = 'mallory' WHERE id = %s", (ids[1],)))
    forged_text = su.execute(V1_TEXT, (ids[1],)).fetchone()["t"]
    override_sha256(su, forged_text, hashlib.sha256(old_text.encode()).digest())
    try:
        full = cli("seal", "--verify-only", "--full")
        assert full.returncode == 1 and f"first bad id {ids[1]}" in full.stderr, full.stderr
        status = cli("status")
        assert status.returncode == 1, status.stdout
    finally:
        restore_sha256(su)


# --- 2. the unsealed window --------------------------------------------------------------------

SEQ = "pg_get_serial_sequence('public.audit_events', 'id')"
BACKDATED = (
    "INSERT INTO audit_events (actor, table_name, operation, after, db_role, created_at) "
    "VALUES ('user:bob', 'messages', 'INSERT', '{\"body\": \"hi\"}', 'authenticated', "
    "now() - interval '1 year')"
)


def test_the_unsealed_window_attack_is_refused_and_red(db_url, su, tmp_path, keyring):
    """Delete what is newer than the last seal, rewind the sequence, insert a back-dated row."""
    from hardening_pipeline.backup.store import FileStore

    store = FileStore(tmp_path / "store")
    write_tenants(su, 2)
    sealed = seal_audit_log(db_url, store=store, keyring=keyring).latest
    write_tenants(su, 1)  # not sealed yet
    tamper(
        su,
        ("DELETE FROM audit_events WHERE id > %s", (sealed.to_id,)),
        (f"SELECT setval({SEQ}, %s)", (sealed.to_id,)),
        (BACKDATED, ()),
    )
    forged = sealed.to_id + 1
    result = verify_audit_seals(db_url, store=store, keyring=keyring)
    assert not result.passed and result.first_bad_id == forged, result.detail
    assert f"id {forged}" in result.detail and "created_at" in result.detail
    assert LINE in red_lines(run_status_check(db_url, store=store, keyring=keyring))
    with pytest.raises(SealError, match=f"id {forged}"):
        seal_audit_log(db_url, store=store, keyring=keyring)
    assert [s.seq for s in read_seals(su)] == [sealed.seq]  # nothing sealed over it


def test_a_rewound_sequence_is_red_and_names_the_ids(db_url, su):
    write_tenants(su, 1)
    sealed = seal_audit_log(db_url).latest
    assert sealed.high_water == sealed.to_id
    su.execute(f"SELECT setval({SEQ}, %s)", (sealed.to_id - 2,))
    result = verify_audit_seals(db_url)
    assert not result.passed, result.detail
    assert "rewound" in result.detail and f"{sealed.to_id - 1}..{sealed.to_id}" in result.detail
    assert LINE in red_lines(run_status_check(db_url))
    with pytest.raises(SealError, match="rewound"):
        seal_audit_log(db_url)


def held_back_seal(db_url: str, su: psycopg.Connection):
    """A seal made while a transaction was open: its high-water mark is above its last id, and
    the rows committed meanwhile above that id are recorded as pending. Callers take the
    ``no_seal_start_margin`` fixture, so the rows written just before are sealable at once."""
    write_tenants(su, 1)
    late = admin_connect(db_url)
    late.execute("SELECT set_config('app.actor', 'test:late', true)")
    late.execute(
        "INSERT INTO tenants (id, slug, name) VALUES (gen_random_uuid(), %s, 'Late')",
        (f"late-{os.urandom(4).hex()}",),
    )
    after = write_tenants(su, 1)
    run = seal_audit_log(db_url, wait_seconds=0.2)
    sealed = run.latest
    assert run.horizon.held_back_by and sealed.high_water >= after[-1] > sealed.to_id
    return late, sealed, after


def test_a_pending_row_deleted_below_the_high_water_mark_is_red(db_url, su, no_seal_start_margin):
    late, sealed, pending = held_back_seal(db_url, su)
    try:
        late.commit()  # the guard cannot be switched off while it holds the table
        tamper(su, ("DELETE FROM audit_events WHERE id = %s", (pending[2],)))
        result = verify_audit_seals(db_url)
        assert not result.passed and f"id {pending[2]}" in result.detail, result.detail
        assert "missing" in result.detail
        with pytest.raises(SealError, match=f"id {pending[2]}"):
            seal_audit_log(db_url)
    finally:
        late.close()


def test_a_reused_id_below_the_high_water_mark_is_red(db_url, su, no_seal_start_margin):
    late, sealed, pending = held_back_seal(db_url, su)
    try:
        late.commit()
        reused = pending[0]
        tamper(
            su,
            ("DELETE FROM audit_events WHERE id = %s", (reused,)),
            (
                "INSERT INTO audit_events (id, actor, table_name, operation, db_role) "
                "OVERRIDING SYSTEM VALUE VALUES (%s, 'user:bob', 'tenants', 'TRUNCATE', 'x')",
                (reused,),
            ),
        )
        result = verify_audit_seals(db_url)
        assert not result.passed and f"id {reused}" in result.detail, result.detail
        with pytest.raises(SealError, match=f"id {reused}"):
            seal_audit_log(db_url)
    finally:
        late.close()


def test_created_at_going_backwards_inside_the_tolerance_is_not_tampering(db_url, su):
    write_tenants(su, 1)
    seal_audit_log(db_url)
    tamper(su, (BACKDATED.replace("1 year", "2 seconds"), ()))
    assert verify_audit_seals(db_url).passed
    assert seal_audit_log(db_url).seals
    assert verify_audit_seals(db_url, full=True).passed


def test_cli_seal_and_verify_only_are_red_after_the_window_attack(db_url, su, tmp_path):
    cli = functools.partial(
        run_hardening, "seal", url=db_url, env=keyed_store_env(tmp_path), timeout=120
    )

    write_tenants(su, 1)
    assert cli().returncode == 0
    last = su.execute("SELECT max(to_id) AS m FROM hardening.audit_seals").fetchone()["m"]
    write_tenants(su, 1)
    tamper(
        su,
        ("DELETE FROM audit_events WHERE id > %s", (last,)),
        (f"SELECT setval({SEQ}, %s)", (last,)),
        (BACKDATED, ()),
    )

    def said(result: subprocess.CompletedProcess) -> str:
        return " ".join(result.stderr.split())  # rich wraps long lines

    quick = cli("--verify-only")
    assert quick.returncode == 1 and f"first bad id {last + 1}" in said(quick), quick.stderr
    refused = cli()
    assert refused.returncode == 1 and "sealing refused" in said(refused), refused.stderr
    assert f"id {last + 1}" in said(refused) and "Traceback" not in refused.stderr


def test_the_asset_run_fails_when_the_window_was_rewritten(db_url, su, tmp_path):
    import base64

    import dagster as dg

    from hardening_pipeline.defs.resources import (
        AppDatabaseResource,
        BackupStoreResource,
        EncryptionKeysResource,
    )
    from hardening_pipeline.defs.seals import audit_seal

    resources = {
        "app_db": AppDatabaseResource(database_url=db_url),
        "backup_store": BackupStoreResource(store_url=(tmp_path / "store").as_uri()),
        "encryption_keys": EncryptionKeysResource(key=base64.b64encode(os.urandom(32)).decode()),
    }
    write_tenants(su, 1)
    assert dg.materialize([audit_seal], resources=resources).success
    su.execute(f"SELECT setval({SEQ}, 2)")
    red = dg.materialize([audit_seal], resources=resources, raise_on_error=False)
    assert not red.success


def test_a_restore_moves_the_sequence_past_the_recorded_high_water_mark(db_url, su):
    """A restore sets the sequence just past the largest restored id; ids burned before the
    backup would then be handed out again and look reused. restore_high_water prevents it."""
    from hardening_pipeline.hardening.seals.window import restore_high_water

    write_tenants(su, 1)
    with pytest.raises(RuntimeError), su.transaction():  # burns ids above the last row
        insert_tenant(su, "t-rolled-back")
        raise RuntimeError
    sealed = seal_audit_log(db_url).latest
    top = su.execute("SELECT max(id) AS m FROM audit_events").fetchone()["m"]
    assert sealed.high_water > top
    su.execute(f"SELECT setval({SEQ}, %s, false)", (top + 1,))  # what the restore does
    assert "rewound" in verify_audit_seals(db_url).detail
    with su.transaction():
        assert restore_high_water(su) == sealed.high_water
    assert verify_audit_seals(db_url).passed
    write_tenants(su, 1)
    assert seal_audit_log(db_url).seals and verify_audit_seals(db_url).passed
