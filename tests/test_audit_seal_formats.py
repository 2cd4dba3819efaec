"""Seal formats: format 1 seals (digested by the database before 014) still verify, in Python.

The verifier reproduces the format 1 row text (``jsonb_build_array(...)::text``) itself, so
old seals are checked without any SQL function as well. These tests compare that reproduction
with what the database renders for awkward values, and run a chain that starts in format 1 and
continues in format 2.
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from hardening_pipeline.hardening.seals import read_seals, seal_audit_log, verify_audit_seals
from hardening_pipeline.hardening.seals.format import GENESIS_DIGEST, Accumulator
from hardening_pipeline.hardening.seals.rows import audit_rows, row_hash_v2, row_text_v1
from tests.support.db import admin_connect, insert_tenant

V1_TEXT = """
    SELECT id, jsonb_build_array(id, actor, tenant_id, table_name, operation, record_id, before,
                                 after, created_at AT TIME ZONE 'UTC', db_role, txid)::text AS t
    FROM audit_events ORDER BY id
"""
AWKWARD = [
    # actor, tenant_id, record_id, before, after, created_at
    (
        'quote " backslash \\ slash /',
        None,
        None,
        None,
        '{"a": 1.0, "b": [1e3, -0.5]}',
        "2026-03-04 05:06:07.120000+00",
    ),
    (
        "new\nline\ttab\r\x01\x1f\x7f",
        "3f1c7a8e-0000-4000-8000-00000000abcd",
        "r-1",
        '{"k": "v\\n\\u0001 é 😀", "nested": {"z": null, "a": true}}',
        None,
        "2026-03-04 05:06:07+00",
    ),
    ("ünïcödé 😀 \u2028", None, "", "{}", '{"x": "\\"quoted\\""}', "0999-01-02 03:04:05.5+00"),
    ("plain", None, "x", '[1, 2.50, "s"]', '"just a string"', "2026-12-31 23:59:59.999999+00"),
]


@pytest.fixture
def su(db_url):
    with admin_connect(db_url, autocommit=True) as conn:
        yield conn


def insert_awkward(su: psycopg.Connection) -> None:
    with su.transaction():
        su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        for actor, tenant, record, before, after, created in AWKWARD:
            su.execute(
                "INSERT INTO audit_events (actor, tenant_id, table_name, operation, record_id, "
                "before, after, created_at, db_role) VALUES (%s, %s, 'messages', 'UPDATE', %s, "
                "%s::jsonb, %s::jsonb, %s::timestamptz, 'postgres')",
                (actor, tenant, record, before, after, created),
            )
        su.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")


def test_the_format_1_row_text_is_reproduced_exactly(db_url, su):
    insert_tenant(su, "t-formats")
    insert_awkward(su)
    expected = {r["id"]: r["t"].encode("utf-8") for r in su.execute(V1_TEXT).fetchall()}
    with admin_connect(db_url) as conn:
        conn.execute("SET TimeZone = 'Pacific/Auckland'")  # must not matter
        got = {row_id: row_text_v1(fields) for row_id, fields in audit_rows(conn, 0)}
    assert got == expected


def test_the_format_2_row_hash_changes_with_every_column(db_url, su):
    insert_awkward(su)
    with admin_connect(db_url) as conn:
        rows = list(audit_rows(conn, 0))
    _, fields = rows[0]
    base = row_hash_v2(fields)
    for i, value in enumerate(fields):
        if value is None:
            changed = b"\x01" if i in (6, 7) else b""
        else:
            changed = None  # NULL instead of the value
        altered = fields[:i] + (changed,) + fields[i + 1 :]
        assert row_hash_v2(altered) != base, i
    # Moving bytes between neighbouring fields changes the hash (values are length-prefixed).
    a = (b"ab", b"c")
    b = (b"a", b"bc")
    assert row_hash_v2(fields[:1] + a + fields[3:]) != row_hash_v2(fields[:1] + b + fields[3:])


def seal_in_format_1(su: psycopg.Connection) -> None:
    """What the code before 014 wrote: row hashes computed by the database, domain v1."""
    rows = su.execute(
        "SELECT id, sha256(convert_to(jsonb_build_array(id, actor, tenant_id, table_name, "
        "operation, record_id, before, after, created_at AT TIME ZONE 'UTC', db_role, "
        "txid)::text, 'UTF8')) AS h FROM audit_events ORDER BY id"
    ).fetchall()
    acc = Accumulator(1, GENESIS_DIGEST, version=1)
    for r in rows:
        acc.add(r["id"], bytes(r["h"]))
    to_id = rows[-1]["id"]
    su.execute(
        "INSERT INTO hardening.audit_seals (seq, from_id, to_id, row_count, digest, "
        "previous_digest, fingerprints, sealed_at, sealed_by) VALUES (1, 1, %s, %s, %s, %s, %s, "
        "now(), 'before 014')",
        (to_id, acc.count, acc.digest(to_id), GENESIS_DIGEST, bytes(acc.fingerprints)),
    )


def test_a_chain_begun_in_format_1_verifies_and_continues_in_format_2(db_url, su):
    insert_tenant(su, "t-old")
    insert_awkward(su)
    seal_in_format_1(su)
    insert_tenant(su, "t-new")
    run = seal_audit_log(db_url)
    assert [s.version for s in read_seals(su)] == [1, 2] and run.latest.seq == 2
    result = verify_audit_seals(db_url, record_as="test")
    assert result.passed and "1 format-1 seal(s)" in result.detail, result.detail
    assert verify_audit_seals(db_url).rehashed_seals == 0
    # Old format-1 checks (digested by the database) are ignored, never trusted.
    assert (
        su.execute(
            "SELECT count(*) AS n FROM hardening.audit_seal_checks WHERE version = 2"
        ).fetchone()["n"]
        == 2
    )
    target = su.execute("SELECT min(id) + 3 AS i FROM audit_events").fetchone()["i"]
    with su.transaction():
        su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        su.execute("UPDATE audit_events SET actor = 'mallory' WHERE id = %s", (target,))
        su.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")
    for full in (False, True):
        bad = verify_audit_seals(db_url, full=full)
        assert not bad.passed and bad.first_bad_id == target, bad.detail


def test_a_format_1_seal_digest_differs_from_format_2_over_the_same_rows(db_url, su):
    insert_tenant(su, "t-digest")
    with admin_connect(db_url) as conn:
        rows = list(audit_rows(conn, 0))
    one = Accumulator(1, GENESIS_DIGEST, version=1)
    two = Accumulator(1, GENESIS_DIGEST, version=2)
    for row_id, fields in rows:
        one.add(row_id, hashlib.sha256(row_text_v1(fields)).digest())
        two.add(row_id, row_hash_v2(fields))
    assert one.digest(rows[-1][0]) != two.digest(rows[-1][0])


def test_a_database_before_014_still_verifies_and_sealing_asks_for_the_migration(empty_db_url):
    """A restore of a backup taken before 014 is migrated only that far."""
    from hardening_pipeline.db.migrations import MIGRATIONS_DIR, apply_migrations
    from hardening_pipeline.errors import ConfigError

    before = {p.name for p in MIGRATIONS_DIR.glob("*.sql") if p.name < "014"}
    apply_migrations(empty_db_url, only=before, applied_by="test")
    with admin_connect(empty_db_url, autocommit=True) as su:
        insert_tenant(su, "t-before")
        seal_in_format_1(su)
        assert verify_audit_seals(empty_db_url, record_as="test").passed
        with pytest.raises(ConfigError, match="014"):
            seal_audit_log(empty_db_url)
        with su.transaction():
            su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            su.execute("UPDATE audit_events SET actor = 'mallory' WHERE id = 2")
            su.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")
    assert verify_audit_seals(empty_db_url).first_bad_id == 2
