"""The API roles may not hang triggers on tenant tables (017), on the Supabase shape where the
default privileges hand them ALL on every table ``postgres`` creates."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors, sql

from tests.support.cli import run_hardening
from tests.support.supabase_db import (
    SupabaseServer,
    adopting_app,
)

# A built-in trigger function every role may execute: enough to show a trigger can be created.
TRIGGER = (
    "CREATE TRIGGER api_role_trigger BEFORE UPDATE ON public.messages FOR EACH ROW "
    "EXECUTE FUNCTION pg_catalog.suppress_redundant_updates_trigger()"
)


def create_trigger_as(url: str, role: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        conn.execute(TRIGGER)
        conn.rollback()


@pytest.fixture
def app(supabase_server: SupabaseServer):
    with adopting_app(supabase_server) as url:
        yield url


@pytest.mark.parametrize("role", ["authenticated", "service_role"])
def test_after_migrate_an_api_role_cannot_create_a_trigger_on_a_tenant_table(app, tmp_path, role):
    create_trigger_as(app, role)  # Supabase's default privileges allow it before migrate
    migrated = run_hardening("migrate", url=app, env={"HARDENING_STATE_DIR": str(tmp_path)})
    assert migrated.returncode == 0, migrated.stderr
    with pytest.raises(errors.InsufficientPrivilege):
        create_trigger_as(app, role)


def test_a_table_created_after_migrate_turns_the_line_red(app, tmp_path):
    env = {"HARDENING_STATE_DIR": str(tmp_path), "HARDENING_REPORTS_DIR": str(tmp_path / "r")}
    assert run_hardening("migrate", url=app, env=env).returncode == 0
    with psycopg.connect(app) as conn:  # as postgres: the default privileges apply
        conn.execute("CREATE TABLE public.receipts (id uuid PRIMARY KEY, tenant_id uuid)")
    status = run_hardening("status", url=app, env=env)
    line = next(x for x in status.stdout.splitlines() if "api_roles_no_trigger_or_truncate" in x)
    assert "authenticated TRIGGER on receipts" in line, line
