"""Audit seals: a hash chain over audit_events that shows any rewrite of sealed history.

Every tampering test works as the superuser the suite connects as, because that is who the
append-only guards cannot stop: it disables the guard trigger and rewrites rows, deletes them,
forges rows with ids inside a sealed range, and finally rewrites the seals themselves.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.defs.seals import audit_seal, audit_seal_job, audit_seal_sensor
from hardening_pipeline.hardening.seals import (
    SealCheck,
    SealError,
    decode_fingerprints,
    read_seals,
    row_versions,
    seal_audit_log,
    store_key,
    verify_audit_seals,
)
from hardening_pipeline.hardening.seals import checks as seals_module
from hardening_pipeline.hardening.seals.format import Accumulator
from hardening_pipeline.hardening.status import run_status_check
from tests.support.cli import keyed_store_env, run_hardening
from tests.support.db import admin_connect, insert_tenant, write_tenants

ROOT = Path(__file__).resolve().parents[1]
LINE = "audit_seal_chain"


@pytest.fixture
def su(db_url):
    """An autocommit superuser connection: each statement or transaction() block commits."""
    with admin_connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def store(tmp_path) -> FileStore:
    return FileStore(tmp_path / "store")


def tamper(su: psycopg.Connection, statement: str, params: tuple = ()) -> None:
    """What a superuser can do: switch the guard off, rewrite, switch it back on."""
    with su.transaction():
        su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        su.execute(statement, params)
        su.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")


def seal_line(report):
    return next(line for line in report.lines if line.name == LINE)


@pytest.fixture(params=["first-verification", "after-a-recorded-check"])
def checked(request) -> bool:
    """Every tampering test runs twice: against a chain never verified before, and against one
    whose seals a recorded check vouches for, so the change must show in the row versions."""
    return request.param == "after-a-recorded-check"


def seal(db_url: str, checked: bool, **kwargs) -> None:
    """Seal (``kwargs`` go to seal_audit_log); with ``checked``, also record a full check and
    show that a verification then re-hashes nothing."""
    seal_audit_log(db_url, **kwargs)
    if checked:
        where = {k: kwargs[k] for k in ("store", "keyring") if k in kwargs}
        recorded = verify_audit_seals(db_url, record_as="test", **where)
        assert recorded.passed and recorded.rehashed_seals == recorded.seals, recorded.detail
        assert verify_audit_seals(db_url, **where).rehashed_seals == 0


# --- green paths --------------------------------------------------------------------------------


def test_a_fresh_database_is_green_with_no_seals_yet(db_url, store, keyring):
    result = verify_audit_seals(db_url, store=store, keyring=keyring)
    assert result.passed and result.detail == "no seals yet"
    report = run_status_check(db_url)
    assert report.passed, [(x.name, x.detail) for x in report.red]
    assert seal_line(report).detail == "no seals yet"


def test_seal_write_seal_again_keeps_the_chain_green(db_url, su, store, keyring):
    first_ids = write_tenants(su, 2)
    first = seal_audit_log(db_url, store=store, keyring=keyring, actor="test")
    assert [s.seq for s in first.seals] == [1]
    seal1 = first.seals[0]
    assert (seal1.from_id, seal1.to_id, seal1.row_count) == (1, first_ids[-1], len(first_ids))
    assert [i for i, _ in decode_fingerprints(seal1.fingerprints, 1)] == first_ids

    second_ids = write_tenants(su, 1)
    second = seal_audit_log(db_url, store=store, keyring=keyring, actor="test")
    seal2 = second.latest
    assert seal2.seq == 2 and seal2.previous_digest == seal1.digest
    assert (seal2.from_id, seal2.to_id) == (seal1.to_id + 1, second_ids[-1])

    assert seal_audit_log(db_url, store=store, keyring=keyring).seals == []  # nothing new
    assert [o.key for o in store.list("seals/")] == [store_key(1), store_key(2)]
    stored = json.loads(b"".join(store.get(store_key(2))))
    assert stored["digest"] == seal2.digest.hex() and stored["mac"] == seal2.mac.hex()

    result = verify_audit_seals(db_url, store=store, keyring=keyring)
    assert result.passed, result.detail
    assert result.rows == len(first_ids) + len(second_ids) and result.seals == 2
    report = run_status_check(db_url, store=store, keyring=keyring)
    assert report.passed, [(x.name, x.detail) for x in report.red]
    assert "store copies match" in seal_line(report).detail


def test_large_ranges_are_split_into_several_chained_seals(db_url, su, checked):
    ids = write_tenants(su, 3)
    run = seal_audit_log(db_url, max_rows=4)
    assert [s.row_count for s in run.seals] == [4, 4, 4, 3]
    assert run.seals[-1].to_id == ids[-1]
    for before, after in zip(run.seals, run.seals[1:], strict=False):
        assert after.from_id == before.to_id + 1 and after.previous_digest == before.digest
    assert verify_audit_seals(db_url, record_as="test" if checked else None).passed
    tamper(su, "UPDATE audit_events SET actor = 'x' WHERE id = %s", (ids[9],))
    result = verify_audit_seals(db_url)
    assert result.first_bad_id == ids[9]
    if checked:  # only the third seal's versions changed: its rows up to the bad one were read
        assert result.rows == 2 and "(seal 3," in result.detail


# --- tampering with rows ------------------------------------------------------------------------


def test_a_changed_sealed_row_turns_the_line_red_with_its_id(db_url, su, checked):
    ids = write_tenants(su, 2)
    seal(db_url, checked)
    write_tenants(su, 1)  # unsealed rows after the seal are not the problem
    target = ids[4]
    tamper(su, "UPDATE audit_events SET actor = 'someone-else' WHERE id = %s", (target,))
    result = verify_audit_seals(db_url)
    assert not result.passed and result.first_bad_id == target
    assert f"first bad id {target}: id {target} was changed" in result.detail
    report = run_status_check(db_url)
    assert [x.name for x in report.red] == [LINE]
    assert f"first bad id {target}" in seal_line(report).detail and seal_line(report).fix


def test_a_changed_jsonb_image_is_caught(db_url, su, checked):
    ids = write_tenants(su, 1)
    seal(db_url, checked)
    tamper(
        su,
        'UPDATE audit_events SET after = after || \'{"body": "nothing to see"}\' WHERE id = %s',
        (ids[3],),
    )
    assert verify_audit_seals(db_url).first_bad_id == ids[3]


def test_a_deleted_sealed_row_turns_the_line_red_with_its_id(db_url, su, checked):
    ids = write_tenants(su, 2)
    seal(db_url, checked)
    tamper(su, "DELETE FROM audit_events WHERE id = ANY(%s)", ([ids[6], ids[8]],))
    result = verify_audit_seals(db_url)
    assert not result.passed and result.first_bad_id == ids[6]
    assert "was deleted" in result.detail


def test_deleting_the_last_sealed_rows_is_caught(db_url, su, checked):
    ids = write_tenants(su, 1)
    seal(db_url, checked)
    tamper(su, "DELETE FROM audit_events WHERE id >= %s", (ids[-2],))
    assert verify_audit_seals(db_url).first_bad_id == ids[-2]


def test_a_row_forged_into_a_sealed_gap_is_caught(db_url, su, checked):
    write_tenants(su, 1)
    with pytest.raises(RuntimeError), su.transaction():  # burns ids: a gap in the sealed range
        insert_tenant(su, "rolled-back")
        raise RuntimeError
    write_tenants(su, 1)
    seal(db_url, checked)
    present = {r["id"] for r in su.execute("SELECT id FROM audit_events").fetchall()}
    gap = min(set(range(1, max(present))) - present)
    tamper(
        su,
        "INSERT INTO audit_events (id, actor, table_name, operation, db_role) "
        "OVERRIDING SYSTEM VALUE VALUES (%s, 'forger', 'tenants', 'TRUNCATE', 'postgres')",
        (gap,),
    )
    result = verify_audit_seals(db_url)
    assert result.first_bad_id == gap and "was inserted after it was sealed" in result.detail


def test_a_row_forged_before_the_first_seal_is_caught(db_url, su, checked):
    write_tenants(su, 1)
    seal(db_url, checked)
    tamper(
        su,
        "INSERT INTO audit_events (id, actor, table_name, operation, db_role) "
        "OVERRIDING SYSTEM VALUE VALUES (0, 'forger', 'tenants', 'TRUNCATE', 'postgres')",
    )
    assert verify_audit_seals(db_url).first_bad_id == 0


@pytest.mark.parametrize(
    ("table", "column"), [("audit_seals", "row_count"), ("audit_seal_checks", "seq")]
)
def test_replica_mode_cannot_touch_the_seal_tables(db_url, su, table, column):
    write_tenants(su, 1)
    seal_audit_log(db_url)
    verify_audit_seals(db_url, record_as="test")
    target = sql.Identifier("hardening", table)
    for statement in (
        sql.SQL("UPDATE {} SET {} = 0").format(target, sql.Identifier(column)),
        sql.SQL("DELETE FROM {}").format(target),
        sql.SQL("TRUNCATE {}").format(target),
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), su.transaction():
            su.execute("SET LOCAL session_replication_role = replica")
            su.execute(statement)


# --- row-version checks --------------------------------------------------------------------------


def checks(su: psycopg.Connection) -> list[dict]:
    return su.execute(
        "SELECT seq, checked_by, key_id FROM hardening.audit_seal_checks ORDER BY seq, checked_at"
    ).fetchall()


def test_a_recorded_check_spares_unchanged_seals_and_new_seals_are_rehashed(db_url, su):
    ids = write_tenants(su, 3)
    seal_audit_log(db_url, max_rows=5)
    first = verify_audit_seals(db_url, record_as="test")
    assert first.passed and (first.rehashed_seals, first.rehashed_rows) == (3, len(ids))
    assert "every row re-hashed" in first.detail
    assert [c["seq"] for c in checks(su)] == [1, 2, 3]

    again = verify_audit_seals(db_url)
    assert again.passed and (again.rehashed_seals, again.rehashed_rows) == (0, 0)
    assert again.rows == len(ids) and "re-hashed 0 seal(s) (0 rows); 3 unchanged" in again.detail
    assert "unchanged since re-hashed" in seal_line(run_status_check(db_url)).detail

    more = write_tenants(su, 1)
    seal_audit_log(db_url)
    newest = verify_audit_seals(db_url)
    assert newest.passed and (newest.rehashed_seals, newest.rehashed_rows) == (1, len(more))
    assert newest.rows == len(ids) + len(more)
    assert [c["seq"] for c in checks(su)] == [1, 2, 3]  # nothing recorded without record_as


def test_rows_moved_by_vacuum_full_are_rehashed_and_stay_green(db_url, su):
    with pytest.raises(RuntimeError), su.transaction():  # dead rows for VACUUM FULL to squeeze out
        insert_tenant(su, "rolled-back")
        raise RuntimeError
    write_tenants(su, 2)
    seal_audit_log(db_url)
    assert verify_audit_seals(db_url, record_as="test").passed
    su.execute("VACUUM FULL audit_events")
    moved = verify_audit_seals(db_url, record_as="test")
    assert moved.passed and moved.rehashed_seals == 1, moved.detail
    assert verify_audit_seals(db_url).rehashed_seals == 0  # the new versions were recorded


def test_full_rehashes_everything_and_old_checks_are_redone_when_recording(db_url, su, monkeypatch):
    write_tenants(su, 2)
    seal_audit_log(db_url, max_rows=4)
    assert verify_audit_seals(db_url, record_as="test").passed
    assert verify_audit_seals(db_url, full=True).rehashed_seals == 3
    monkeypatch.setattr(seals_module, "RECHECK_AFTER", timedelta(0))
    assert verify_audit_seals(db_url).rehashed_seals == 0  # reading never expires a check
    assert verify_audit_seals(db_url, record_as="test").rehashed_seals == 3
    assert len(checks(su)) == 6


def test_a_rewritten_out_of_line_image_is_caught_although_its_row_keeps_its_version(
    db_url, su, store, keyring
):
    """A large image lives in the TOAST relation; a superuser can swap its chunks without giving
    the row a new version. Such rows carry their row hash in the versions digest."""
    write_tenants(su, 1)
    body = base64.b64encode(os.urandom(6000)).decode()  # incompressible: stored out of line
    with su.transaction():
        su.execute("SELECT set_config('app.actor', 'test:large', true)")
        large = su.execute(
            "INSERT INTO audit_events (actor, table_name, operation, after, db_role) "
            "VALUES ('app', 'messages', 'INSERT', jsonb_build_object('body', %s::text), 'x') "
            "RETURNING id, xmin::text AS xmin, ctid::text AS ctid",
            (body,),
        ).fetchone()
    seal_audit_log(db_url, store=store, keyring=keyring)
    assert verify_audit_seals(db_url, store=store, keyring=keyring, record_as="test").passed
    toast = su.execute(
        "SELECT reltoastrelid::regclass::text AS name, reltoastrelid::oid AS oid FROM pg_class "
        "WHERE oid = 'public.audit_events'::regclass"
    ).fetchone()
    su.execute("CREATE TABLE scratch (v jsonb)")
    su.execute(
        "INSERT INTO scratch VALUES (jsonb_build_object('body', %s::text))",
        ("NOTHING-TO-SEE-HERE" + body[19:],),
    )
    scratch_toast = su.execute(
        "SELECT reltoastrelid::regclass::text AS name FROM pg_class WHERE oid = 'scratch'::regclass"
    ).fetchone()["name"]
    # TOAST relations refuse DML unless they pass for ordinary tables; the old chunks must be
    # vacuumed away, because TOAST reads see deleted chunks until then.
    su.execute("UPDATE pg_class SET relkind = 'r' WHERE oid = %s", (toast["oid"],))
    with su.transaction():
        chunk = sql.SQL("SELECT DISTINCT chunk_id FROM {}").format(sql.SQL(toast["name"]))
        chunk_id = su.execute(chunk).fetchone()["chunk_id"]
        su.execute(
            sql.SQL("DELETE FROM {} WHERE chunk_id = %s").format(sql.SQL(toast["name"])),
            (chunk_id,),
        )
        su.execute(
            sql.SQL("INSERT INTO {} SELECT %s, chunk_seq, chunk_data FROM {}").format(
                sql.SQL(toast["name"]), sql.SQL(scratch_toast)
            ),
            (chunk_id,),
        )
    su.execute(sql.SQL("VACUUM {}").format(sql.SQL(toast["name"])))
    su.execute("UPDATE pg_class SET relkind = 't' WHERE oid = %s", (toast["oid"],))
    su.execute("DROP TABLE scratch")
    row = su.execute(
        "SELECT xmin::text AS xmin, ctid::text AS ctid, after->>'body' AS body "
        "FROM audit_events WHERE id = %s",
        (large["id"],),
    ).fetchone()
    assert (row["xmin"], row["ctid"]) == (large["xmin"], large["ctid"])  # same version...
    assert row["body"].startswith("NOTHING-TO-SEE-HERE")  # ...other contents
    result = verify_audit_seals(db_url, store=store, keyring=keyring, record_as="test")
    assert not result.passed and result.first_bad_id == large["id"], result.detail
    assert [x.name for x in run_status_check(db_url).red] == [LINE]


@pytest.mark.parametrize(
    "statements",
    [
        (
            "ALTER TABLE audit_events RENAME COLUMN before TO swapped",
            "ALTER TABLE audit_events RENAME COLUMN after TO before",
            "ALTER TABLE audit_events RENAME COLUMN swapped TO after",
        ),
        (
            "ALTER TABLE audit_events DROP COLUMN db_role",
            "ALTER TABLE audit_events ADD COLUMN db_role text NOT NULL DEFAULT 'nobody'",
        ),
    ],
    ids=["swap-images", "replace-a-column"],
)
def test_a_change_to_the_table_shape_is_caught_although_no_row_moves(db_url, su, statements):
    """Column changes that rewrite no row still change what every sealed row reads as."""
    write_tenants(su, 1)
    seal_audit_log(db_url)
    assert verify_audit_seals(db_url, record_as="test").passed
    with su.transaction():
        for statement in statements:
            su.execute(statement)
    result = verify_audit_seals(db_url)
    assert not result.passed and result.first_bad_id == 1, result.detail


def test_the_status_line_stops_trusting_old_checks(db_url, su, monkeypatch):
    write_tenants(su, 2)
    seal_audit_log(db_url, max_rows=4)
    assert verify_audit_seals(db_url, record_as="test").passed
    assert verify_audit_seals(db_url).rehashed_seals == 0
    monkeypatch.setattr(seals_module, "TRUST_CHECKS_FOR", timedelta(0))
    assert verify_audit_seals(db_url).rehashed_seals == 3


def test_no_checks_are_recorded_when_they_could_never_be_trusted(db_url, su, store):
    write_tenants(su, 1)
    seal_audit_log(db_url, store=store)
    for _ in range(2):  # a store without the key: the store copies, not checks, are the reference
        result = verify_audit_seals(db_url, store=store, record_as="test")
        assert result.passed and result.rehashed_seals == 1
    assert checks(su) == []


def forge_check(su: psycopg.Connection, keyring: Keyring | None = None) -> None:
    """What someone who controls the database writes after rewriting a row: a check that vouches
    for the new row versions of every seal (MAC'd under ``keyring`` if they have one)."""
    chain = read_seals(su)
    with su.transaction():  # the versions are read through a server-side cursor
        versions, _ = row_versions(su, chain)
    for s in chain:
        check = SealCheck(s.seq, s.digest, versions[s.seq], datetime.now(UTC), "attacker")
        if keyring is not None:
            check = check.signed(keyring)
        su.execute(
            "INSERT INTO hardening.audit_seal_checks (seq, seal_digest, versions_digest, "
            "checked_at, checked_by, key_id, mac, version) VALUES (%s, %s, %s, %s, %s, %s, %s, 2)",
            (
                s.seq,
                s.digest,
                check.versions_digest,
                check.checked_at,
                "attacker",
                check.key_id,
                check.mac,
            ),
        )


def test_a_forged_check_does_not_hide_a_rewritten_row_from_the_key_or_the_store(
    db_url, su, store, keyring
):
    ids = write_tenants(su, 2)
    seal_audit_log(db_url, store=store, keyring=keyring)
    assert verify_audit_seals(db_url, store=store, keyring=keyring, record_as="test").passed
    assert all(c["key_id"] == keyring.current_key_id for c in checks(su))
    tamper(su, "UPDATE audit_events SET actor = 'rewritten' WHERE id = %s", (ids[2],))
    forge_check(su)  # no MAC
    forge_check(su, Keyring(os.urandom(32)))  # a MAC under some other key
    for where in ({"keyring": keyring}, {"store": store}, {"store": store, "keyring": keyring}):
        result = verify_audit_seals(db_url, **where)
        assert not result.passed and result.first_bad_id == ids[2], where
    # The documented limit: with neither, the database is its own reference and is believed.
    assert verify_audit_seals(db_url).passed


# --- tampering with the seals -------------------------------------------------------------------


def rewrite_history(db_url: str, su: psycopg.Connection, row_id: int) -> None:
    """An attacker who owns the database but has neither the key nor the store: change a row,
    delete every seal and recompute the whole chain so it is self-consistent again."""
    tamper(su, "UPDATE audit_events SET actor = 'rewritten' WHERE id = %s", (row_id,))
    with su.transaction():
        su.execute("ALTER TABLE hardening.audit_seals DISABLE TRIGGER audit_seals_append_only")
        su.execute("DELETE FROM hardening.audit_seals")
        su.execute(
            "ALTER TABLE hardening.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only"
        )
    seal_audit_log(db_url, actor="attacker")


def test_a_recomputed_chain_is_caught_by_the_store_copy(db_url, su, store, keyring, checked):
    ids = write_tenants(su, 2)
    seal(db_url, checked, store=store, keyring=keyring)
    write_tenants(su, 1)
    seal_audit_log(db_url, store=store, keyring=keyring)
    rewrite_history(db_url, su, ids[5])

    # Documented limit: the database alone is self-consistent again.
    assert verify_audit_seals(db_url).passed
    # The key alone shows the seals were not made by us.
    assert "carries no MAC" in verify_audit_seals(db_url, keyring=keyring).detail
    # The store copies pin the row.
    result = verify_audit_seals(db_url, store=store, keyring=keyring)
    assert not result.passed and result.first_bad_id == ids[5]
    assert "differs from its store copy" in result.detail
    report = run_status_check(db_url, store=store, keyring=keyring)
    assert [x.name for x in report.red] == [LINE]


def test_a_deleted_newest_seal_is_caught_by_the_store_and_resealing_restores_it(
    db_url, su, store, keyring
):
    write_tenants(su, 1)
    seal_audit_log(db_url, store=store, keyring=keyring)
    write_tenants(su, 1)
    newest = seal_audit_log(db_url, store=store, keyring=keyring).latest
    with su.transaction():
        # A careful superuser keeps the trigger switch off the record too (016 would log it).
        su.execute("ALTER EVENT TRIGGER hardening_record_ddl DISABLE")
        su.execute("ALTER TABLE hardening.audit_seals DISABLE TRIGGER audit_seals_append_only")
        su.execute("DELETE FROM hardening.audit_seals WHERE seq = 2")
        su.execute(
            "ALTER TABLE hardening.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only"
        )
        su.execute("ALTER EVENT TRIGGER hardening_record_ddl ENABLE ALWAYS")
    assert verify_audit_seals(db_url).passed  # the database alone cannot tell
    result = verify_audit_seals(db_url, store=store, keyring=keyring)
    assert "seal 2 is in the store but missing from the database" in result.detail
    # The rows still match the copy, so the next run re-records it rather than overwriting it.
    run = seal_audit_log(db_url, store=store, keyring=keyring)
    assert [s.seq for s in run.adopted] == [2] and run.seals == []
    assert read_seals(su)[-1] == newest
    assert verify_audit_seals(db_url, store=store, keyring=keyring).passed


def test_sealing_refuses_to_overwrite_a_store_copy_that_no_longer_matches(
    db_url, su, store, keyring
):
    ids = write_tenants(su, 1)
    seal_audit_log(db_url, store=store, keyring=keyring)
    with su.transaction():
        su.execute("ALTER TABLE hardening.audit_seals DISABLE TRIGGER audit_seals_append_only")
        su.execute("DELETE FROM hardening.audit_seals")
        su.execute(
            "ALTER TABLE hardening.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only"
        )
    tamper(su, "UPDATE audit_events SET actor = 'x' WHERE id = %s", (ids[0],))
    with pytest.raises(SealError, match="no longer matches the audit rows"):
        seal_audit_log(db_url, store=store, keyring=keyring)
    assert verify_audit_seals(db_url, store=store, keyring=keyring).first_bad_id == ids[0]


def test_a_forged_store_copy_fails_authentication(db_url, su, store, keyring):
    write_tenants(su, 1)
    seal_audit_log(db_url, store=store, keyring=keyring)
    body = json.loads(b"".join(store.get(store_key(1))))
    body["row_count"] = 4
    store.put(store_key(1), [json.dumps(body).encode()])
    result = verify_audit_seals(db_url, store=store, keyring=keyring)
    assert (
        not result.passed and "store copy of seal 1 has a MAC that does not match" in result.detail
    )
    other = Keyring(os.urandom(32))
    assert "not configured" in verify_audit_seals(db_url, keyring=other).detail


def test_a_seal_without_a_store_copy_is_red_when_the_store_is_checked(db_url, su, store):
    write_tenants(su, 1)
    seal_audit_log(db_url)  # sealed without a store
    result = verify_audit_seals(db_url, store=store)
    assert "seal 1 has no store copy" in result.detail


# --- concurrency: the safe horizon --------------------------------------------------------------


def test_a_late_commit_is_not_tampering_and_is_sealed_next_time(
    db_url, su, store, keyring, no_seal_start_margin
):
    early = write_tenants(su, 1)
    with admin_connect(db_url) as late:
        insert_tenant_uncommitted(late)
        late_ids = [
            r["id"] for r in late.execute("SELECT id FROM audit_events WHERE id > %s", (early[-1],))
        ]
        after = write_tenants(su, 1)  # committed, with ids above the open transaction's
        assert min(after) > max(late_ids)

        run = seal_audit_log(db_url, store=store, keyring=keyring, wait_seconds=0.3)
        assert run.horizon.held_back_by, run.summary()
        assert run.latest.to_id == early[-1] < min(late_ids)
        late.commit()

    assert verify_audit_seals(db_url, store=store, keyring=keyring).passed
    run = seal_audit_log(db_url, store=store, keyring=keyring)
    assert not run.horizon.held_back_by
    assert run.latest.to_id == after[-1] and run.rows == len(late_ids) + len(after)
    result = verify_audit_seals(db_url, store=store, keyring=keyring)
    assert result.passed and result.rows == len(early) + len(late_ids) + len(after)


def insert_tenant_uncommitted(conn: psycopg.Connection) -> None:
    conn.execute("SELECT set_config('app.actor', 'test:late', true)")
    conn.execute(
        "INSERT INTO tenants (id, slug, name) VALUES (gen_random_uuid(), %s, 'Late')",
        (f"late-{os.urandom(4).hex()}",),
    )


def test_a_short_open_transaction_is_waited_for(db_url, su):
    write_tenants(su, 1)
    with admin_connect(db_url) as late:
        insert_tenant_uncommitted(late)
        late_id = late.execute("SELECT max(id) AS m FROM audit_events").fetchone()["m"]

        def commit_soon() -> None:
            time.sleep(0.3)
            late.commit()

        thread = threading.Thread(target=commit_soon)
        thread.start()
        run = seal_audit_log(db_url, wait_seconds=10)
        thread.join()
    assert not run.horizon.held_back_by and run.latest.to_id >= late_id
    assert verify_audit_seals(db_url).passed


def test_sealing_adds_nothing_to_the_write_path(db_url, su):
    def triggers() -> set[tuple[str, str, str]]:
        rows = su.execute(
            "SELECT tgrelid::regclass::text AS rel, tgname, tgenabled::text AS en "
            "FROM pg_trigger WHERE NOT tgisinternal"
        ).fetchall()
        return {(r["rel"], r["tgname"], r["en"]) for r in rows}

    before = triggers()
    write_tenants(su, 1)
    seal_audit_log(db_url)
    assert triggers() == before
    # The only triggers 006 and 010 add guard their own tables.
    sealing = {t for t in before if "seal" in t[1]}
    assert sealing == {
        ("hardening.audit_seals", "audit_seals_append_only", "A"),
        ("hardening.audit_seal_checks", "audit_seal_checks_append_only", "A"),
    }
    for name in ("006_audit_seals.sql", "010_audit_seal_checks.sql"):
        migration = (ROOT / "sql" / "migrations" / name).read_text()
        assert " ON public." not in migration and "ALTER TABLE public." not in migration


# --- formats ------------------------------------------------------------------------------------


def test_fingerprints_round_trip_for_random_id_sequences():
    rng = random.Random(7)
    for _ in range(200):
        start = rng.randint(1, 10**12)
        ids = sorted(rng.sample(range(start, start + rng.randint(1, 10**6)), rng.randint(0, 40)))
        acc = Accumulator(start, bytes(32))
        hashes = [rng.randbytes(32) for _ in ids]
        for i, h in zip(ids, hashes, strict=True):
            acc.add(i, h)
        decoded = list(decode_fingerprints(bytes(acc.fingerprints), start))
        assert decoded == [(i, h[:8]) for i, h in zip(ids, hashes, strict=True)]


def test_the_row_hash_does_not_depend_on_the_session_time_zone(db_url, su):
    write_tenants(su, 1)
    with admin_connect(db_url) as conn:
        conn.execute("SET TimeZone = 'Pacific/Auckland'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.commit()
    seal_audit_log(db_url)
    url_tz = psycopg.conninfo.make_conninfo(db_url, options="-c TimeZone=America/Lima")
    assert verify_audit_seals(url_tz).passed


# --- Dagster and CLI ----------------------------------------------------------------------------


def test_the_asset_seals_and_checks_the_chain(db_url, su, tmp_path):
    write_tenants(su, 1)
    resources = {
        "app_db": AppDatabaseResource(database_url=db_url),
        "backup_store": BackupStoreResource(store_url=(tmp_path / "store").as_uri()),
        "encryption_keys": EncryptionKeysResource(key=base64.b64encode(os.urandom(32)).decode()),
    }
    result = dg.materialize([audit_seal], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("audit_seal")[0].metadata
    assert metadata["new_seals"].value == 1 and metadata["latest_seq"].value == 1
    # Nothing new: no blank digest shown.
    again = dg.materialize([audit_seal], resources=resources)
    metadata = again.asset_materializations_for_node("audit_seal")[0].metadata
    assert metadata["new_seals"].value == 0 and "latest_digest" not in metadata
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.check_name == "seal_chain_intact"

    tamper(su, "DELETE FROM audit_events WHERE id = 2")
    red = dg.materialize([audit_seal], resources=resources, raise_on_error=False)
    assert not red.success
    # The run fails with the sentence and the first bad id, not DagsterAssetCheckFailedError.
    (step_failure,) = red.get_step_failure_events()
    said = step_failure.step_failure_data.user_failure_data.description
    assert said.startswith("the audit seal chain is broken: ") and "first bad id 2" in said
    evaluation = red.get_asset_check_evaluations()[0]
    # An id, shown as text: never plotted as a metric (nor as 0 when there is none).
    assert not evaluation.passed and evaluation.metadata["first_bad_id"].value == "2"
    assert check.metadata["first_bad_id"].value == "none"


def sensor_resources(db_url: str, tmp_path: Path, webhook_url: str = "") -> dict:
    return {
        "app_db": AppDatabaseResource(database_url=db_url),
        "backup_store": BackupStoreResource(store_url=(tmp_path / "store").as_uri()),
        "encryption_keys": EncryptionKeysResource(key=base64.b64encode(os.urandom(32)).decode()),
        "slack": SlackAlertsResource(webhook_url=webhook_url, max_retries=0, timeout=5),
    }


def seal_sensor_tick(instance, cursor, resources) -> tuple[dg.SensorResult, str | None]:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = audit_seal_sensor(context)
    return result, result.cursor


def test_the_sensor_seals_in_its_tick_alerts_a_broken_chain_once_then_resolved(
    db_url, su, tmp_path, slack_receiver, monkeypatch
):
    """No runs; one Slack message with the sentence and first bad id, quiet after, resolved."""
    monkeypatch.setenv("HARDENING_STATE_DIR", str(tmp_path / "state"))
    write_tenants(su, 1)
    resources = sensor_resources(db_url, tmp_path, slack_receiver.url)
    with dg.instance_for_test() as instance:
        result, cursor = seal_sensor_tick(instance, None, resources)
        assert result.run_requests == [] or result.run_requests is None
        kinds = {type(event).__name__ for event in result.asset_events}
        assert kinds == {"AssetMaterialization", "AssetCheckEvaluation"}
        check = next(e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation))
        assert check.passed and check.check_name == "seal_chain_intact"
        assert slack_receiver.requests == []

        original = su.execute("SELECT actor FROM audit_events WHERE id = 2").fetchone()["actor"]
        tamper(su, "UPDATE audit_events SET actor = 'forged' WHERE id = 2")
        for _ in range(4):  # the sensor ticks every minute; one incident, one message
            result, cursor = seal_sensor_tick(instance, cursor, resources)
            assert not result.run_requests
        assert len(slack_receiver.requests) == 1
        message = json.dumps(slack_receiver.requests[0])
        assert "Audit seal chain broken" in message and "first bad id 2" in message
        assert "runbook.md#status-audit-seal-chain" in message
        assert "DagsterAssetCheckFailedError" not in message

        tamper(su, "UPDATE audit_events SET actor = %s WHERE id = 2", (original,))
        result, cursor = seal_sensor_tick(instance, cursor, resources)
        assert len(slack_receiver.requests) == 2
        assert "Resolved: audit seal chain" in json.dumps(slack_receiver.requests[1])
        seal_sensor_tick(instance, cursor, resources)
        assert len(slack_receiver.requests) == 2


def test_before_the_schema_exists_the_sensor_waits_and_names_the_job(empty_db_url, tmp_path):
    resources = sensor_resources(empty_db_url, tmp_path)
    with dg.instance_for_test() as instance:
        result, _ = seal_sensor_tick(instance, None, resources)
    assert "launch database_schema_job" in result.skip_reason.skip_message
    assert not result.asset_events


def test_a_day_of_sealing_adds_no_runs():
    """Sealing happens in the sensor's ticks: no seal schedule, and the sensor requests no run
    (its tick returns a SensorResult without run requests, as the test above shows)."""
    from hardening_pipeline.definitions import defs

    repo = defs.get_repository_def()
    assert not [s for s in repo.schedule_defs if s.job_name == audit_seal_job.name]
    sensor = defs.resolve_sensor_def("audit_seal_sensor")
    assert sensor.minimum_interval_seconds == 60
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert not sensor.targets  # it requests no run of any job


def test_cli_seal_then_verify_only_after_tampering(db_url, su, tmp_path):
    write_tenants(su, 1)
    cli = functools.partial(
        run_hardening, "seal", url=db_url, env=keyed_store_env(tmp_path), timeout=120
    )

    ok = cli()
    assert ok.returncode == 0, ok.stderr

    def said(result: subprocess.CompletedProcess) -> str:
        return " ".join(result.stdout.split())  # rich wraps long lines

    assert "sealed ids 1..5" in said(ok) and "every row re-hashed" in said(ok)
    quick = cli("--verify-only")
    assert quick.returncode == 0 and "re-hashed 0 seal(s)" in said(quick), quick.stderr
    full = cli("--verify-only", "--full")
    assert full.returncode == 0 and "every row re-hashed" in said(full), full.stderr
    tamper(su, "UPDATE audit_events SET actor = 'x' WHERE id = 3")
    red = cli("--verify-only")
    assert red.returncode == 1 and "first bad id 3" in red.stderr


def test_the_seal_check_links_the_published_runbook(db_url, su, tmp_path, monkeypatch):
    monkeypatch.setenv("HARDENING_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HARDENING_RUNBOOK_URL", "https://runbook.example.com/runbook.html")
    write_tenants(su, 1)
    resources = sensor_resources(db_url, tmp_path)
    with dg.instance_for_test() as instance:
        result, _ = seal_sensor_tick(instance, None, resources)
    check = next(e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation))
    link = check.metadata["runbook"]
    assert isinstance(link, dg.UrlMetadataValue)
    assert link.value == "https://runbook.example.com/runbook.html#status-audit-seal-chain"
