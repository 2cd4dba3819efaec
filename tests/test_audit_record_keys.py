"""Audit rows name the record by the table's primary key (018): a table keyed on two columns
gets one audit row per changed row, with both images and a record_id, not two half rows.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from hardening_pipeline.db.migrations import apply_migrations, discover_migrations
from hardening_pipeline.hardening.seals import seal_audit_log, verify_audit_seals
from hardening_pipeline.hardening.status import run_status_check
from tests.support.db import acting_as, insert_tenant
from tests.support.supabase_app import ALICE, TENANT_A
from tests.support.supabase_db import apply_blocker_fixes


def composite_key(**columns: str) -> str:
    """record_id of a row keyed on several columns: jsonb's own text form of the key."""
    return json.dumps(columns, separators=(", ", ": "), sort_keys=False)


@pytest.fixture
def memberships(admin):
    """A table keyed on (tenant_id, user_id), captured the way the status fix says to."""
    tenant = insert_tenant(admin, "alpha")
    admin.execute(
        "CREATE TABLE public.memberships (tenant_id uuid NOT NULL REFERENCES tenants (id), "
        "user_id uuid NOT NULL, role text NOT NULL, PRIMARY KEY (tenant_id, user_id))"
    )
    admin.execute(
        "SELECT hardening.install_audit_capture('public.memberships'::regclass, 'tenant_id')"
    )
    admin.commit()
    return tenant


def audit_rows(admin, table: str, operation: str) -> list[dict]:
    return admin.execute(
        "SELECT record_id, before ->> 'role' AS before_role, after ->> 'role' AS after_role "
        "FROM audit_events WHERE table_name = %s AND operation = %s ORDER BY id",
        (table, operation),
    ).fetchall()


def test_an_update_on_a_composite_key_leaves_one_row_with_both_images(admin, memberships):
    user = uuid.uuid4()
    key = composite_key(user_id=str(user), tenant_id=str(memberships.tenant))
    with acting_as(admin, None, actor="test:keys"):
        admin.execute(
            "INSERT INTO memberships VALUES (%s, %s, 'viewer')", (memberships.tenant, user)
        )
        admin.execute("UPDATE memberships SET role = 'admin' WHERE user_id = %s", (user,))
        admin.execute("DELETE FROM memberships WHERE user_id = %s", (user,))
        assert audit_rows(admin, "memberships", "INSERT") == [
            {"record_id": key, "before_role": None, "after_role": "viewer"}
        ]
        assert audit_rows(admin, "memberships", "UPDATE") == [
            {"record_id": key, "before_role": "viewer", "after_role": "admin"}
        ]
        assert audit_rows(admin, "memberships", "DELETE") == [
            {"record_id": key, "before_role": "admin", "after_role": None}
        ]


def test_a_multi_row_update_pairs_each_row_with_its_own_images(admin, memberships):
    users = [uuid.uuid4() for _ in range(3)]
    with acting_as(admin, None, actor="test:keys"):
        for user in users:
            admin.execute(
                "INSERT INTO memberships VALUES (%s, %s, 'viewer')", (memberships.tenant, user)
            )
        admin.execute("UPDATE memberships SET role = 'admin'")
        rows = audit_rows(admin, "memberships", "UPDATE")
    assert sorted(r["record_id"] for r in rows) == sorted(
        composite_key(user_id=str(u), tenant_id=str(memberships.tenant)) for u in users
    )
    assert all((r["before_role"], r["after_role"]) == ("viewer", "admin") for r in rows)


def test_changing_a_key_column_still_leaves_both_images(admin, memberships):
    old_user, new_user = uuid.uuid4(), uuid.uuid4()
    with acting_as(admin, None, actor="test:keys"):
        admin.execute(
            "INSERT INTO memberships VALUES (%s, %s, 'viewer')", (memberships.tenant, old_user)
        )
        admin.execute(
            "UPDATE memberships SET user_id = %s WHERE user_id = %s", (new_user, old_user)
        )
        rows = audit_rows(admin, "memberships", "UPDATE")
    assert sorted((r["record_id"], r["before_role"], r["after_role"]) for r in rows) == sorted(
        [
            (
                composite_key(user_id=str(old_user), tenant_id=str(memberships.tenant)),
                "viewer",
                None,
            ),
            (
                composite_key(user_id=str(new_user), tenant_id=str(memberships.tenant)),
                None,
                "viewer",
            ),
        ]
    )


def test_a_single_column_key_not_named_id_is_the_record_id(admin):
    tenant = insert_tenant(admin, "alpha")
    admin.execute(
        "CREATE TABLE public.tenant_settings (tenant_id uuid PRIMARY KEY REFERENCES tenants (id), "
        "theme text NOT NULL)"
    )
    admin.execute(
        "SELECT hardening.install_audit_capture('public.tenant_settings'::regclass, 'tenant_id')"
    )
    with acting_as(admin, None, actor="test:keys"):
        admin.execute("INSERT INTO tenant_settings VALUES (%s, 'dark')", (tenant.tenant,))
        admin.execute("UPDATE tenant_settings SET theme = 'light'")
        rows = admin.execute(
            "SELECT record_id, before ->> 'theme' AS b, after ->> 'theme' AS a "
            "FROM audit_events WHERE table_name = 'tenant_settings' AND operation = 'UPDATE'"
        ).fetchall()
    assert rows == [{"record_id": str(tenant.tenant), "b": "dark", "a": "light"}]


def test_tables_keyed_by_id_keep_their_triggers_and_record_ids(admin):
    """The capture arguments of an id-keyed table are 011's, so its rows read as before."""
    tenant = insert_tenant(admin, "alpha")
    nargs = admin.execute(
        "SELECT DISTINCT tgnargs FROM pg_trigger WHERE tgrelid = 'public.messages'::regclass "
        "AND tgname IN ('messages_audit_insert', 'messages_audit_update', "
        "'messages_audit_delete')"
    ).fetchall()
    assert nargs == [{"tgnargs": 1}]
    with acting_as(admin, None, actor="test:keys"):
        admin.execute("UPDATE messages SET body = 'x' WHERE id = %s", (tenant.message,))
        row = admin.execute(
            "SELECT record_id FROM audit_events WHERE operation = 'UPDATE' "
            "AND table_name = 'messages'"
        ).fetchone()
    assert row == {"record_id": str(tenant.message)}


def test_migrating_an_app_keys_its_composite_table_and_old_seals_verify(supabase_app_url):
    """Supabase's postgres (no superuser) migrates an app whose memberships has a composite key;
    audit rows sealed before 018 keep verifying after it."""
    apply_blocker_fixes(supabase_app_url)
    apply_migrations(
        supabase_app_url, only=[f.filename for f in discover_migrations() if f.filename < "018"]
    )
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:before', true)")
        conn.execute(UPDATE_ALICE, ("admin", ALICE, TENANT_A))
    assert seal_audit_log(supabase_app_url).seals
    apply_migrations(supabase_app_url)
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:after', true)")
        conn.execute(UPDATE_ALICE, ("viewer", ALICE, TENANT_A))
        rows = conn.execute(
            "SELECT record_id, before ->> 'role', after ->> 'role' FROM public.audit_events "
            "WHERE table_name = 'memberships' AND actor = 'test:after'"
        ).fetchall()
    assert rows == [(composite_key(user_id=ALICE, tenant_id=TENANT_A), "admin", "viewer")]
    assert seal_audit_log(supabase_app_url).seals
    result = verify_audit_seals(supabase_app_url)
    assert result.passed, result.detail


UPDATE_ALICE = "UPDATE public.memberships SET role = %s WHERE user_id = %s AND tenant_id = %s"


def test_a_key_changed_later_is_named_by_status_and_its_fix_rekeys(db_url, admin):
    tenant = insert_tenant(admin, "alpha")
    admin.execute(
        "ALTER TABLE onboarding_attempts DROP CONSTRAINT onboarding_attempts_pkey; "
        "ALTER TABLE onboarding_attempts ADD PRIMARY KEY (tenant_id, id)"
    )
    admin.commit()
    line = next(x for x in run_status_check(db_url).red if x.name == "audit_capture_triggers")
    assert "onboarding_attempts_audit_update names rows by (id)" in line.detail
    admin.execute(
        "DROP TRIGGER onboarding_attempts_audit_guard ON onboarding_attempts; "
        "DROP TRIGGER onboarding_attempts_audit_insert ON onboarding_attempts; "
        "DROP TRIGGER onboarding_attempts_audit_update ON onboarding_attempts; "
        "DROP TRIGGER onboarding_attempts_audit_delete ON onboarding_attempts; "
        "DROP TRIGGER onboarding_attempts_audit_truncate ON onboarding_attempts; "
        "SELECT hardening.install_audit_capture('public.onboarding_attempts'::regclass, "
        "'tenant_id')"
    )
    admin.commit()
    assert run_status_check(db_url).passed
    with acting_as(admin, None, actor="test:keys"):
        admin.execute("UPDATE onboarding_attempts SET email = 'ops2@example.com'")
        row = admin.execute(
            "SELECT record_id FROM audit_events WHERE operation = 'UPDATE'"
        ).fetchone()
    assert row == {
        "record_id": composite_key(id=str(tenant.onboarding), tenant_id=str(tenant.tenant))
    }


def test_a_new_install_starts_with_an_empty_log_and_recording_on(admin):
    """018 replaces the capture functions; on a log still empty that is not put on record."""
    assert admin.execute("SELECT count(*) AS n FROM audit_events").fetchone() == {"n": 0}
    enabled = admin.execute(
        "SELECT evtname, evtenabled FROM pg_event_trigger WHERE evtname LIKE 'hardening_%' "
        "ORDER BY 1"
    ).fetchall()
    assert enabled == [
        {"evtname": "hardening_record_ddl", "evtenabled": "A"},
        {"evtname": "hardening_record_ddl_drop", "evtenabled": "A"},
    ]


def test_on_a_log_with_history_the_capture_replacement_is_on_the_record(empty_db_url):
    apply_migrations(
        empty_db_url, only=[f.filename for f in discover_migrations() if f.filename < "018"]
    )
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:before', true)")
        conn.execute("INSERT INTO tenants (slug, name) VALUES ('alpha', 'Alpha')")
    apply_migrations(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        recorded = conn.execute(
            "SELECT DISTINCT table_name FROM audit_events WHERE operation = 'DDL' "
            "AND after ->> 'statement' LIKE '%%audit_capture_insert%%'"
        ).fetchall()
        enabled = conn.execute(
            "SELECT DISTINCT evtenabled FROM pg_event_trigger WHERE evtname LIKE 'hardening_%'"
        ).fetchall()
    assert ("tenants",) in recorded and ("messages",) in recorded
    assert enabled == [("A",)]
