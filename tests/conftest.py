"""Shared fixtures: one Postgres per test session, a migrated template, a fresh clone per test.

HARDENING_TEST_DATABASE_URL points the suite at a server you run (it needs superuser rights to
create databases and roles); otherwise a testcontainers Postgres where Docker answers, else an
embedded throwaway server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.db.throwaway import throwaway_postgres
from hardening_pipeline.restore.drill import DRILL_SUPERUSER
from tests.support.db import admin_connect, create_database, drop_database
from tests.support.s3_server import (  # noqa: F401  (fixtures)
    s3_bucket,
    s3_clock,
    s3_closed_endpoint,
    s3_faults,
    s3_locked_bucket,
    s3_server,
)
from tests.support.slack_receiver import slack_receiver  # noqa: F401  (fixture)
from tests.support.supabase_db import (  # noqa: F401  (fixtures)
    supabase_app_url,
    supabase_db_url,
    supabase_server,
)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    configured = os.environ.get("HARDENING_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def restore_server_url() -> Iterator[str]:
    """A second server whose superuser is the drill's, never a role a backup owns things as.

    A restore runs the backup's code as its owners; ``postgres``, which owns the test
    databases' objects, must be an ordinary role where they are restored.
    """
    with throwaway_postgres(prefer_docker=False, superuser=DRILL_SUPERUSER) as url:
        yield url


@pytest.fixture
def restore_target_url(restore_server_url: str) -> Iterator[str]:
    """A fresh, empty database on ``restore_server_url`` (reached as its superuser)."""
    url = create_database(restore_server_url)
    yield url
    drop_database(restore_server_url, url)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """Name of a database with every migration applied; tests clone it, never touch it."""
    url = create_database(pg_server_url)
    apply_migrations(url, applied_by="test-suite")
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    yield name
    drop_database(pg_server_url, url)


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh, fully migrated database for this test alone."""
    url = create_database(pg_server_url, template=template_db)
    yield url
    drop_database(pg_server_url, url)


@pytest.fixture
def empty_db_url(pg_server_url: str) -> Iterator[str]:
    """A fresh database with nothing applied (roles are cluster-wide and may already exist)."""
    url = create_database(pg_server_url)
    yield url
    drop_database(pg_server_url, url)


@pytest.fixture
def admin(db_url: str):
    """A superuser connection to this test's database."""
    with admin_connect(db_url) as conn:
        yield conn


@pytest.fixture
def unique_slug() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def keyring() -> Keyring:
    """A fresh random master key per test; a test module that needs a fixed one overrides it."""
    return Keyring(os.urandom(32))


@pytest.fixture
def no_seal_start_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seal horizon's one-second margin for clock slack, set to zero: a test of an open
    transaction need not sleep it out (rows written before it began are sealable at once)."""
    from datetime import timedelta

    monkeypatch.setattr("hardening_pipeline.hardening.seals.horizon.START_MARGIN", timedelta(0))
