"""Tenant tables outside ``public`` (an app's ``billing.payouts``) get what public's get.

On the Supabase-faithful server, as its non-superuser ``postgres``: the app keeps payouts in a
schema of its own, with RLS off (its policy written but never enforced) and ALL granted to anon.
``hardening migrate`` locks it down and captures its writes, status names it schema-qualified,
a table created later turns status red with fix SQL that pastes as it is, the backup splits its
rows per tenant and ``restore --tenant --merge`` brings them back. DDL on it is on the record
where the event triggers are installed (the embedded server, migrated as a superuser). The
Supabase tests share one database, run in file order, once on each major in ``SUPABASE_MAJORS``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from hardening_pipeline.hardening.status import run_checks
from tests.support.cli import keyed_store_env, run_hardening
from tests.support.supabase_app import ALICE, BOB, TENANT_A, TENANT_B
from tests.support.supabase_db import (
    APP_TEMPLATE,
    SupabaseServer,
    apply_blocker_fixes,
    supabase_server_each_major,  # noqa: F401  (fixture: this module runs on every major)
)

PAYOUT_A = "aaaaaaaa-0000-4000-8000-0000000000a1"
PAYOUT_B = "bbbbbbbb-0000-4000-8000-0000000000a1"

BILLING_APP = """
CREATE SCHEMA billing;
GRANT USAGE ON SCHEMA billing TO anon, authenticated, service_role;
CREATE TABLE billing.payouts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL REFERENCES public.tenants (id),
    amount_cents integer NOT NULL
);
GRANT ALL ON billing.payouts TO anon, authenticated, service_role;
-- The app's policy, written but never enforced: RLS stays off.
CREATE POLICY "members read payouts" ON billing.payouts FOR SELECT TO authenticated
    USING (tenant_id IN (SELECT m.tenant_id FROM public.memberships m
                         WHERE m.user_id = (SELECT auth.uid())));
"""
PAYOUT_ROWS = [(PAYOUT_A, TENANT_A, 1000), (PAYOUT_B, TENANT_B, 2000)]

# A table the app adds after migrate, open the same way.
LATER_TABLE = """
CREATE TABLE billing.refunds (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL REFERENCES public.tenants (id),
    amount_cents integer NOT NULL
);
GRANT ALL ON billing.refunds TO anon, authenticated, service_role;
"""


@dataclass
class App:
    server: SupabaseServer
    url: str
    env: dict[str, str]
    folder: Path

    def run(self, *args: str, **env: str):
        return run_hardening(*args, url=self.url, env=self.env | env)


@pytest.fixture(scope="module")
def app(supabase_server: SupabaseServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    url = supabase_server.clone(APP_TEMPLATE)
    folder = tmp_path_factory.mktemp("billing")
    apply_blocker_fixes(url)
    with psycopg.connect(url) as conn:
        assert conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == ("postgres", False)
        conn.execute(BILLING_APP)
        conn.cursor().executemany(
            "INSERT INTO billing.payouts (id, tenant_id, amount_cents) VALUES (%s, %s, %s)",
            PAYOUT_ROWS,
        )
    env = keyed_store_env(folder) | {
        "HARDENING_REPORTS_DIR": str(folder / "reports"),
        "HARDENING_STATE_DIR": str(folder / "state"),
        "BACKUP_SCHEMAS": "public,auth,billing",
    }
    yield App(supabase_server, url, env, folder)
    supabase_server.drop(url)


def _payouts_as(conn: psycopg.Connection, role: str, user: str | None = None) -> list:
    """The payouts ``role`` reads through the API (claims as PostgREST sets them)."""
    with conn.transaction():
        conn.execute(f"SET LOCAL ROLE {role}")
        if user:
            claims = {"sub": user, "role": role, "aud": "authenticated"}
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        try:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT id::text, tenant_id::text FROM billing.payouts ORDER BY id"
                ).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            rows = ["permission denied"]
    return rows


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def test_1_migrate_locks_billing_down_for_anon_and_the_other_tenant(app: App) -> None:
    with psycopg.connect(app.url) as conn:  # before: anon reads every tenant's payouts
        assert len(_payouts_as(conn, "anon")) == 2
    result = app.run("migrate")
    _no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(app.url) as conn:
        assert _payouts_as(conn, "anon") == ["permission denied"]
        assert _payouts_as(conn, "authenticated", BOB) == [(PAYOUT_B, TENANT_B)]
        assert _payouts_as(conn, "authenticated", ALICE) == [(PAYOUT_A, TENANT_A)]
        flags = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE oid = 'billing.payouts'::regclass"
        ).fetchone()
        assert flags == (True, True)
        held = conn.execute(
            "SELECT has_table_privilege('authenticated', 'billing.payouts', 'TRIGGER'), "
            "has_table_privilege('service_role', 'billing.payouts', 'TRUNCATE')"
        ).fetchone()
        assert held == (False, False)
        indexed = conn.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = 'billing.payouts'::regclass AND a.attname = 'tenant_id'"
        ).fetchone()
        assert indexed == (1,)


def test_2_writes_to_billing_are_audited(app: App) -> None:
    with psycopg.connect(app.url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:billing', true)")
        conn.execute("UPDATE billing.payouts SET amount_cents = 1500 WHERE id = %s", (PAYOUT_A,))
        rows = conn.execute(
            "SELECT actor, tenant_id::text, operation, before ->> 'amount_cents', "
            "after ->> 'amount_cents' FROM public.audit_events WHERE record_id = %s",
            (PAYOUT_A,),
        ).fetchall()
    assert rows == [("test:billing", TENANT_A, "UPDATE", "1000", "1500")]


def test_3_status_counts_billing_payouts_as_a_tenant_table(app: App) -> None:
    with psycopg.connect(app.url, row_factory=dict_row) as conn:
        lines = {line.name: line for line in run_checks(conn)}
    for name in ("rls_tenant_tables", "no_anon_grants", "audit_capture_triggers"):
        assert lines[name].passed, lines[name]
    assert "billing.payouts" in lines["rls_tenant_tables"].detail


def test_4_a_billing_table_created_later_turns_status_red_and_its_fix_pastes(app: App) -> None:
    with psycopg.connect(app.url, row_factory=dict_row) as conn:
        conn.execute(LATER_TABLE)
        conn.commit()
        lines = {line.name: line for line in run_checks(conn)}
    red = ("rls_tenant_tables", "no_anon_grants", "audit_capture_triggers")
    for name in red:
        assert not lines[name].passed, lines[name]
        assert "billing.refunds" in lines[name].detail, lines[name]
    statements = [
        statement
        for name in red
        for statement in re.findall(r"(?:ALTER TABLE|REVOKE|SELECT) [^;]*;", lines[name].fix)
        if "<" not in statement  # a placeholder for another case
    ]
    assert any("billing.refunds" in s for s in statements), statements
    with psycopg.connect(app.url, row_factory=dict_row) as conn:  # as postgres, pasted as is
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        lines = {line.name: line for line in run_checks(conn)}
        for name in red:
            assert lines[name].passed, lines[name]
        conn.execute("SET ROLE anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM billing.refunds")


def _manifest(app: App) -> dict:
    newest = max((app.folder / "store").rglob("manifest.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(newest.read_text())


def test_5_a_backup_that_leaves_billing_out_is_refused(app: App) -> None:
    result = app.run("backup", BACKUP_SCHEMAS="public,auth")
    _no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "billing.payouts" in result.stderr and "BACKUP_SCHEMAS" in result.stderr


def test_6_backup_splits_billing_rows_per_tenant(app: App) -> None:
    result = app.run("backup")
    _no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    objects = _manifest(app)["objects"]
    per_tenant = {
        o["tenant_id"]: {t["name"]: t["row_count"] for t in o["tables"]}
        for o in objects
        if o["tenant_id"]
    }
    assert per_tenant[TENANT_A]["billing.payouts"] == 1
    assert per_tenant[TENANT_B]["billing.payouts"] == 1
    shared = [t["name"] for o in objects if not o["tenant_id"] for t in o["tables"]]
    assert "billing.payouts" not in shared


def test_7_restore_tenant_merge_brings_a_lost_payout_back(app: App) -> None:
    with psycopg.connect(app.url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:oops', true)")
        lost = conn.execute(
            "DELETE FROM billing.payouts WHERE id = %s RETURNING *", (PAYOUT_A,)
        ).fetchall()
    assert len(lost) == 1
    result = app.run("restore", "--tenant", TENANT_A, "--into", app.url, "--merge")
    _no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(app.url) as conn:
        back = conn.execute("SELECT * FROM billing.payouts WHERE id = %s", (PAYOUT_A,)).fetchall()
    assert back == lost


def test_a_billing_policy_for_anon_stops_migrate_and_changes_nothing(
    supabase_server: SupabaseServer, tmp_path: Path
) -> None:
    url = supabase_server.clone(APP_TEMPLATE)
    try:
        apply_blocker_fixes(url)
        with psycopg.connect(url) as conn:
            conn.execute(BILLING_APP)
            # No TO clause: it applies to PUBLIC, anon included.
            conn.execute("CREATE POLICY open_payouts ON billing.payouts FOR SELECT USING (true)")
        env = {"HARDENING_STATE_DIR": str(tmp_path)}
        plan = run_hardening("migrate", "--plan", url=url, env=env)
        _no_traceback(plan)
        assert plan.returncode == 1, plan.stdout + plan.stderr
        assert "ALTER POLICY open_payouts ON billing.payouts TO authenticated;" in plan.stdout
        result = run_hardening("migrate", url=url, env=env)
        _no_traceback(result)
        assert result.returncode != 0, result.stdout + result.stderr
        assert "open_payouts on billing.payouts" in result.stderr, result.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT relrowsecurity FROM pg_class WHERE oid = 'billing.payouts'::regclass"
            ).fetchone() == (False,)
            assert conn.execute(
                "SELECT has_table_privilege('anon', 'billing.payouts', 'SELECT')"
            ).fetchone() == (True,)
    finally:
        supabase_server.drop(url)


def test_the_sql_and_python_lists_of_schemas_that_hold_no_tenant_tables_agree(admin) -> None:
    # Imported here so the module's other tests also run (and fail) on a checkout without it.
    from hardening_pipeline.db.tenant_tables import NOT_APP_SCHEMAS, find_tenant_tables

    checked = [*NOT_APP_SCHEMAS, "pg_temp_3", "public", "billing"]
    verdicts = admin.execute(
        "SELECT s, hardening.tenant_schema(s::name) AS counts FROM unnest(%s::text[]) s",
        (checked,),
    ).fetchall()
    assert {r["s"] for r in verdicts if r["counts"]} == {"public", "billing"}
    in_sql = {r["t"] for r in admin.execute("SELECT t::oid AS t FROM hardening.tenant_tables() t")}
    assert in_sql == {t.oid for t in find_tenant_tables(admin)}


def test_ddl_on_a_tenant_table_outside_public_is_on_the_record(admin) -> None:
    """Embedded server, migrated as a superuser: 016's event triggers are installed."""
    admin.execute("CREATE SCHEMA billing")
    admin.execute(
        "CREATE TABLE billing.payouts (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, note text)"
    )
    admin.commit()
    start = admin.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
    admin.execute("ALTER TABLE billing.payouts DISABLE ROW LEVEL SECURITY")
    admin.execute("ALTER TABLE billing.payouts ALTER COLUMN note TYPE varchar(50)")
    admin.commit()
    rows = admin.execute(
        "SELECT table_name, after ->> 'statement' AS statement FROM audit_events "
        "WHERE operation = 'DDL' AND id > %s ORDER BY id",
        (start,),
    ).fetchall()
    assert [r["table_name"] for r in rows] == ["billing.payouts", "billing.payouts"], rows
    assert "varchar(50)" in rows[1]["statement"]


def test_a_superuser_locks_down_a_later_tenant_table_outside_public(admin) -> None:
    admin.execute("CREATE SCHEMA billing")
    admin.execute("CREATE TABLE billing.payouts (id uuid PRIMARY KEY, tenant_id uuid NOT NULL)")
    admin.execute("GRANT USAGE ON SCHEMA billing TO anon")
    admin.execute("GRANT ALL ON billing.payouts TO anon")
    admin.execute("SELECT hardening.lock_down_tenant_table('billing.payouts'::regclass)")
    admin.commit()
    lines = {line.name: line for line in run_checks(admin)}
    for name in ("rls_tenant_tables", "no_anon_grants", "audit_capture_triggers"):
        assert lines[name].passed, lines[name]
    admin.execute("SET ROLE anon")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        admin.execute("SELECT * FROM billing.payouts")


def test_restore_one_tenant_into_an_empty_database_brings_only_its_billing_rows(
    db_url: str, tmp_path: Path, restore_target_url: str
) -> None:
    """The rebuild path: the backup's schema first, then the tenant's rows of every schema."""
    from hardening_pipeline.backup.crypto import Keyring
    from hardening_pipeline.backup.nightly import run_backup
    from hardening_pipeline.backup.store import FileStore
    from hardening_pipeline.restore.tenant import restore_tenant
    from hardening_pipeline.seed import seed_demo_data
    from tests.test_whole_app_backup import app_owner_login, postgres_ordinary_again

    seed_demo_data(db_url, tenants=2, messages_per_unit=1, random_seed=5)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "CREATE SCHEMA billing; CREATE TABLE billing.payouts (id bigint GENERATED BY DEFAULT "
            "AS IDENTITY PRIMARY KEY, tenant_id uuid NOT NULL REFERENCES public.tenants (id), "
            "amount_cents int NOT NULL)"
        )
        conn.execute("GRANT USAGE ON SCHEMA billing TO authenticated, service_role")
        conn.execute("GRANT SELECT, INSERT ON billing.payouts TO authenticated, service_role")
        conn.execute("SELECT set_config('app.actor', 'test:app', true)")
        conn.execute(
            "INSERT INTO billing.payouts (tenant_id, amount_cents) "
            "SELECT id, 100 FROM public.tenants, generate_series(1, 2)"
        )
    store, keyring = FileStore(tmp_path / "store"), Keyring(bytes(range(32)))
    backup = run_backup(db_url, store, keyring, schemas=("public", "billing", "hardening"))
    tenant = backup.manifest.objects[0].tenant_id
    try:
        result = restore_tenant(
            store, keyring, tenant_id=tenant, target_url=app_owner_login(restore_target_url)
        )
    finally:
        postgres_ordinary_again(restore_target_url)
    assert {c.table: c.inserted for c in result.counts}["billing.payouts"] == 2
    with psycopg.connect(restore_target_url) as conn:
        rows = conn.execute("SELECT DISTINCT tenant_id::text FROM billing.payouts").fetchall()
    assert rows == [(tenant,)]
