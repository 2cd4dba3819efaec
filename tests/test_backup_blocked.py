"""An application role that locks a tenant table cannot stall a backup for ever.

``authenticated`` has UPDATE and DELETE on the kit's tenant tables (001), which is what ``LOCK
TABLE ... IN ACCESS EXCLUSIVE MODE`` needs; 004 and 017 take away only TRUNCATE, TRIGGER and
REFERENCES. The blocker logs in as its own role and switches to ``authenticated``, as an API
gateway's sessions do, so the sentence can name the session's login role.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import MANIFEST_NAME
from hardening_pipeline.backup.nightly import DEFAULT_LOCK_TIMEOUT, run_backup
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.errors import CheckFailed
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import admin_connect

BOUND = 2.0
APPLICATION = "locking api session"


@pytest.fixture
def seeded(db_url: str) -> str:
    seed_demo_data(db_url, tenants=2, messages_per_unit=2, random_seed=3)
    return db_url


@pytest.fixture
def api_login(seeded: str) -> Iterator[str]:
    """A login role that may SET ROLE authenticated; returns its URL on the test database."""
    name = f"api_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    with admin_connect(seeded, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        admin.execute(sql.SQL("GRANT authenticated TO {}").format(sql.Identifier(name)))
        yield psycopg.conninfo.make_conninfo(
            seeded, user=name, password=password, application_name=APPLICATION
        )
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def run_bounded(seeded: str, store: FileStore, keyring: Keyring) -> BaseException | None:
    """``run_backup`` in a thread the test gives up on, so a hang fails instead of hanging CI."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            run_backup(seeded, store, keyring, lock_timeout=BOUND)
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=BOUND + 28)
    assert outcome, "the backup still waits for the lock long after its bound"
    return outcome[0]


def test_lock_by_authenticated_turns_the_backup_red_naming_the_blocker(
    seeded: str, api_login: str, keyring: Keyring, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    with psycopg.connect(api_login) as blocker:
        blocker.execute("SET ROLE authenticated")
        blocker.execute("LOCK TABLE public.messages IN ACCESS EXCLUSIVE MODE")
        pid = blocker.info.backend_pid
        login = psycopg.conninfo.conninfo_to_dict(api_login)["user"]
        started = time.monotonic()
        failure = run_bounded(seeded, store, keyring)
        waited = time.monotonic() - started
        blocker.rollback()
    assert isinstance(failure, CheckFailed), failure
    message = str(failure)
    assert waited < BOUND + 15, waited
    assert "\n" not in message
    assert f"pid {pid}" in message and f"role {login}" in message, message
    assert repr(APPLICATION) in message and "public.messages" in message, message
    assert f"SELECT pg_terminate_backend({pid})" in message, message
    assert "no manifest was written" in message, message
    assert not list((tmp_path / "store").rglob(MANIFEST_NAME))
    # Nothing was left held: the next run, unblocked, completes.
    run_backup(seeded, store, keyring, lock_timeout=BOUND)
    assert len(list((tmp_path / "store").rglob(MANIFEST_NAME))) == 1


def test_the_default_bound_outlasts_the_drills_that_hold_a_backup_on_a_lock() -> None:
    # tests/test_failure_drills.py holds a backup on LOCK TABLE for up to its WAIT (30 s).
    assert DEFAULT_LOCK_TIMEOUT >= 60


def test_the_bound_must_be_positive(seeded: str, keyring: Keyring, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="lock timeout"):
        run_backup(seeded, FileStore(tmp_path / "store"), keyring, lock_timeout=0)
