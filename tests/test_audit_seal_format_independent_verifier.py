"""docs/audit-seal-format.md is precise enough to verify seals without this project.

``tests/support/independent_seal_verifier.py`` was written from the page alone and imports
nothing from the project. It must pass real seals (format 1 and 2, several seals, a held-back
seal with pending rows) and find the same tampering the project's verifier finds.
"""

from __future__ import annotations

import json
import os

import psycopg
import pytest

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.hardening.seals import seal_audit_log, store_key, verify_audit_seals
from tests.support import independent_seal_verifier as independent
from tests.support.db import admin_connect, write_tenants

MASTER = os.urandom(32)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(MASTER)


@pytest.fixture
def su(db_url):
    with admin_connect(db_url, autocommit=True) as conn:
        yield conn


def tamper(su: psycopg.Connection, *statements: str, last: int = 0) -> None:
    with su.transaction():
        su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        for statement in statements:
            su.execute(statement, {"last": last} if "%(last)s" in statement else None)
        su.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")


@pytest.fixture
def sealed(db_url, su, tmp_path, keyring, no_seal_start_margin):
    """A chain of several format 2 seals, one of them held back by an open transaction."""
    store = FileStore(tmp_path / "store")
    write_tenants(su, 2)
    seal_audit_log(db_url, store=store, keyring=keyring, max_rows=4)
    write_tenants(su, 1)
    with admin_connect(db_url) as late:
        late.execute("SELECT set_config('app.actor', 'test:late', true)")
        late.execute(
            "INSERT INTO tenants (id, slug, name) VALUES (gen_random_uuid(), 't-late', 'Late')"
        )
        write_tenants(su, 1)
        held = seal_audit_log(db_url, store=store, keyring=keyring, wait_seconds=0.2)
        assert held.latest.pending, held.summary()
        late.commit()
    write_tenants(su, 1)
    seal_audit_log(db_url, store=store, keyring=keyring)
    write_tenants(su, 1)  # above the last seal
    return store


def test_the_independent_verifier_passes_real_seals(db_url, sealed, keyring):
    assert verify_audit_seals(db_url, store=sealed, keyring=keyring).passed
    assert independent.verify(db_url, sealed.root, MASTER) == []


def test_it_pins_a_changed_sealed_row(db_url, su, sealed, keyring):
    tamper(su, "UPDATE audit_events SET actor = 'mallory' WHERE id = 7")
    problems = independent.verify(db_url, sealed.root, MASTER)
    assert (7, "seal 2: id 7 differs") in problems, problems
    assert verify_audit_seals(db_url, store=sealed, keyring=keyring).first_bad_id == 7


def test_it_finds_the_unsealed_window_attack(db_url, su, sealed):
    last = su.execute("SELECT max(to_id) AS m FROM hardening.audit_seals").fetchone()["m"]
    tamper(
        su,
        "DELETE FROM audit_events WHERE id > %(last)s",
        "SELECT setval(pg_get_serial_sequence('public.audit_events', 'id'), %(last)s)",
        "INSERT INTO audit_events (actor, table_name, operation, after, db_role, created_at) "
        "VALUES ('user:bob', 'messages', 'INSERT', '{}', 'authenticated', "
        "now() - interval '1 year')",
        last=last,
    )
    problems = independent.verify(db_url, sealed.root, MASTER)
    assert (last + 1, f"id {last + 1}: created_at went backwards") in problems


def test_it_finds_a_rewound_sequence_and_a_missing_pending_row(db_url, su, sealed):
    seals = su.execute(
        "SELECT to_id, high_water, pending FROM hardening.audit_seals ORDER BY seq"
    ).fetchall()
    held = next(s for s in seals if s["pending"])
    su.execute(
        "SELECT setval(pg_get_serial_sequence('public.audit_events', 'id'), %s)",
        (held["to_id"],),
    )
    problems = independent.verify(db_url, sealed.root, MASTER)
    assert (held["to_id"] + 1, "the sequence was rewound") in problems
    su.execute(
        "SELECT setval(pg_get_serial_sequence('public.audit_events', 'id'), %s)",
        (max(s["high_water"] for s in seals) + 10,),
    )
    assert independent.verify(db_url, sealed.root, MASTER) == []
    gone = held["to_id"] + 1 + held["pending"][0] - 1  # the first pending id (one-byte delta)
    tamper(su, "DELETE FROM audit_events WHERE id = %(last)s", last=gone)
    problems = independent.verify(db_url, sealed.root, MASTER)
    assert (gone, f"pending id {gone} is missing") in problems, problems


def test_it_rejects_a_forged_store_copy(db_url, sealed):
    path = sealed.root / store_key(2)
    body = json.loads(path.read_bytes())
    body["sealed_by"] = "someone else"
    path.write_text(json.dumps(body))
    problems = independent.verify(db_url, sealed.root, MASTER)
    assert any("bad MAC" in text for _, text in problems), problems
    assert independent.verify(db_url, sealed.root, os.urandom(32)) != []
