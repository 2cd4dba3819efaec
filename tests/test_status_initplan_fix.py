"""The auth_rls_initplan line's fix wraps the call each policy really makes.

A fix that names another function (say ``hardening.current_tenant_id()`` for a policy that reads
``auth.uid()``) would change what the policy means if pasted. Seen on the Supabase-faithful app,
whose policies compare ``user_id = auth.uid()``.
"""

from __future__ import annotations

import psycopg

from hardening_pipeline.db.connection import connect
from hardening_pipeline.hardening.status import run_checks
from tests.support.db import admin_connect


def _initplan_line(conn: psycopg.Connection):
    [line] = run_checks(conn, names=["auth_rls_initplan"])
    return line


def test_initplan_fix_wraps_auth_uid_on_the_supabase_app(supabase_app_url):
    with connect(supabase_app_url) as conn:  # as Supabase's postgres, not a superuser
        line = _initplan_line(conn)
    assert not line.passed
    assert "auth.uid" in line.detail
    assert "(SELECT auth.uid())" in line.fix, line.fix
    assert "hardening.current_tenant_id" not in line.fix, line.fix


def test_initplan_fix_wraps_current_setting_with_its_arguments(db_url, admin):
    admin.execute(
        "CREATE POLICY by_setting ON public.messages AS RESTRICTIVE FOR SELECT TO authenticated "
        "USING (tenant_id::text = current_setting('app.tenant_id', true))"
    )
    admin.commit()
    with admin_connect(db_url) as conn:
        line = _initplan_line(conn)
    assert not line.passed
    assert "by_setting on messages" in line.detail
    assert "(SELECT current_setting('app.tenant_id'::text, true))" in line.fix, line.fix
    assert "hardening.current_tenant_id" not in line.fix, line.fix
