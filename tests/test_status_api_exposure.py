"""Status lines that find what anon and authenticated reach around RLS (issue observation 8):
each is shown leaking first, as the role itself, then closed by the exact SQL the line prints.
"""

from __future__ import annotations

import re

import pytest
from psycopg import errors

from hardening_pipeline.hardening.status import run_status_check
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import acting_as, insert_tenant


def red(db_url: str) -> dict[str, str]:
    return {line.name: line for line in run_status_check(db_url).red}


def apply_fix(admin, fix: str) -> None:
    statements = re.findall(r"(?:REVOKE|ALTER|GRANT|CREATE)\b[^;]*;", fix)
    assert statements, fix
    for statement in statements:
        admin.execute(statement)
    admin.commit()


@pytest.fixture
def two_tenants(admin):
    return insert_tenant(admin, "alpha"), insert_tenant(admin, "beta")


def test_anon_reading_every_tenants_messages_through_a_view_turns_red(db_url, admin, two_tenants):
    # Supabase's default privileges hand anon every new object in public; this is the same.
    admin.execute("CREATE VIEW public.all_messages AS SELECT id, tenant_id, body FROM messages")
    admin.execute("GRANT SELECT ON public.all_messages TO anon")
    admin.commit()
    with acting_as(admin, "anon"):
        leaked = admin.execute("SELECT DISTINCT tenant_id FROM public.all_messages").fetchall()
    assert len(leaked) == 2  # the leak is real: anon sees both tenants

    lines = red(db_url)
    assert set(lines) == {"tenant_views_security_invoker", "api_roles_reach_no_tenant_data"}
    assert "public.all_messages" in lines["tenant_views_security_invoker"].detail
    assert (
        "anon SELECT on view public.all_messages" in lines["api_roles_reach_no_tenant_data"].detail
    )
    for line in lines.values():
        apply_fix(admin, line.fix)
    assert red(db_url) == {}
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, "anon"):
            admin.execute("SELECT * FROM public.all_messages")


def test_a_definer_function_anon_can_call_turns_both_lines_red(db_url, admin, two_tenants):
    alpha, _ = two_tenants
    admin.execute(
        "CREATE FUNCTION public.message_count(t uuid) RETURNS bigint LANGUAGE sql "
        "SECURITY DEFINER SET search_path = '' "
        "AS 'SELECT count(*) FROM public.messages WHERE tenant_id = t'"
    )
    admin.commit()
    with acting_as(admin, "anon"):
        counted = admin.execute("SELECT public.message_count(%s) AS n", (alpha.tenant,)).fetchone()
    assert counted == {"n": 1}  # anon counted tenant alpha's messages

    lines = red(db_url)
    assert set(lines) == {
        "anon_security_definer_function_executable",
        "authenticated_security_definer_function_executable",
    }
    anon_line = lines["anon_security_definer_function_executable"]
    assert "public.message_count(t uuid)" in anon_line.detail
    # service_role held EXECUTE only through PUBLIC: the fix gives it back explicitly.
    assert anon_line.fix == (
        'REVOKE EXECUTE ON FUNCTION "public"."message_count"(t uuid) FROM PUBLIC, anon; '
        'GRANT EXECUTE ON FUNCTION "public"."message_count"(t uuid) TO service_role;'
    )
    for line in lines.values():
        apply_fix(admin, line.fix)
    assert red(db_url) == {}
    for role in ("anon", "authenticated"):
        with pytest.raises(errors.InsufficientPrivilege):
            with acting_as(admin, role):
                admin.execute("SELECT public.message_count(%s)", (alpha.tenant,))
    with acting_as(admin, "service_role"):
        admin.execute("SELECT public.message_count(%s)", (alpha.tenant,))


def test_a_definer_function_a_column_default_calls_is_moved_not_revoked(db_url, admin, two_tenants):
    alpha, _ = two_tenants
    admin.execute(
        "CREATE FUNCTION public.default_sender() RETURNS text LANGUAGE sql SECURITY DEFINER "
        "SET search_path = '' AS $$SELECT 'resident'::text$$; "
        "ALTER TABLE messages ALTER COLUMN sender SET DEFAULT public.default_sender()"
    )
    admin.commit()
    lines = red(db_url)
    signed_in = lines["authenticated_security_definer_function_executable"]
    # authenticated inserts messages, so the default needs it: a REVOKE would break every insert.
    assert "REVOKE" not in signed_in.fix
    assert "default value for column sender of table messages" in signed_in.detail
    anon = lines["anon_security_definer_function_executable"]
    assert anon.fix.endswith(
        'GRANT EXECUTE ON FUNCTION "public"."default_sender"() TO authenticated, service_role;'
    )
    for line in lines.values():
        apply_fix(admin, line.fix)
    assert red(db_url) == {}
    with acting_as(admin, "authenticated", tenant=alpha.tenant):
        admin.execute(
            "INSERT INTO messages (tenant_id, development_id, unit_id, body) "
            "VALUES (%s, %s, %s, 'hello')",
            (alpha.tenant, alpha.development, alpha.unit),
        )
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, "anon"):
            admin.execute("SELECT private.default_sender()")


def test_a_definer_function_a_trigger_calls_by_name_gets_no_breaking_sql(
    db_url, admin, two_tenants
):
    alpha, _ = two_tenants
    admin.execute(
        "CREATE FUNCTION public.stamp_sender() RETURNS text LANGUAGE sql SECURITY DEFINER "
        "SET search_path = '' AS $$SELECT 'resident'::text$$; "
        "CREATE FUNCTION public.set_sender() RETURNS trigger LANGUAGE plpgsql "
        "SET search_path = '' AS $$BEGIN NEW.sender := public.stamp_sender(); RETURN NEW; END$$; "
        "CREATE TRIGGER set_sender BEFORE INSERT ON messages "
        "FOR EACH ROW EXECUTE FUNCTION public.set_sender()"
    )
    admin.commit()
    lines = red(db_url)
    signed_in = lines["authenticated_security_definer_function_executable"]
    # authenticated's inserts run the trigger, which calls it by name: neither REVOKE nor a move.
    assert "the body of set_sender() (by name)" in signed_in.detail
    assert not re.findall(r"(?:REVOKE|ALTER|GRANT|CREATE)\b[^;]*;", signed_in.fix)
    apply_fix(admin, lines["anon_security_definer_function_executable"].fix)
    with acting_as(admin, "authenticated", tenant=alpha.tenant):
        inserted = admin.execute(
            "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body) "
            "VALUES (%s, %s, %s, 'x', 'hello') RETURNING sender",
            (alpha.tenant, alpha.development, alpha.unit),
        ).fetchone()
    assert inserted == {"sender": "resident"}


def test_a_trigger_function_or_one_in_an_unusable_schema_is_not_reported(db_url, admin):
    admin.execute(
        "CREATE SCHEMA private; CREATE FUNCTION private.peek() RETURNS bigint LANGUAGE sql "
        "SECURITY DEFINER SET search_path = '' AS 'SELECT count(*) FROM public.messages'"
    )
    admin.commit()
    assert red(db_url) == {}
    admin.execute("GRANT USAGE ON SCHEMA private TO authenticated")
    admin.commit()
    assert set(red(db_url)) == {"authenticated_security_definer_function_executable"}


def test_a_materialized_view_over_tenant_rows_is_red_for_authenticated(db_url, admin, two_tenants):
    admin.execute(
        "CREATE MATERIALIZED VIEW public.message_counts AS "
        "SELECT tenant_id, count(*) AS n FROM messages GROUP BY tenant_id"
    )
    admin.execute("GRANT SELECT ON public.message_counts TO authenticated")
    admin.commit()
    alpha, _ = two_tenants
    with acting_as(admin, "authenticated", tenant=alpha.tenant):
        seen = admin.execute("SELECT count(*) AS n FROM public.message_counts").fetchone()
    assert seen == {"n": 2}  # no RLS on a materialized view: both tenants
    lines = red(db_url)
    assert set(lines) == {"api_roles_reach_no_tenant_data"}
    apply_fix(admin, lines["api_roles_reach_no_tenant_data"].fix)
    assert red(db_url) == {}


def test_sequence_privileges_on_a_tenant_table(db_url, admin):
    admin.execute("GRANT ALL ON SEQUENCE audit_events_id_seq TO anon, authenticated")
    admin.commit()
    line = red(db_url)["api_roles_reach_no_tenant_data"]
    assert "sequence public.audit_events_id_seq" in line.detail
    assert "authenticated USAGE" not in line.detail  # inserts need it; not reported
    apply_fix(admin, line.fix)
    # Not on the audit log's own sequence, which only the capture uses: its USAGE is the kit line's.
    kit = red(db_url)["kit_objects_closed_to_api_roles"]
    assert "authenticated USAGE on sequence audit_events_id_seq" in kit.detail
    apply_fix(admin, kit.fix)
    assert red(db_url) == {}


def test_a_security_invoker_view_without_api_grants_is_green(db_url, admin):
    admin.execute(
        "CREATE VIEW public.my_messages WITH (security_invoker = true) AS SELECT * FROM messages"
    )
    admin.execute("GRANT SELECT ON public.my_messages TO authenticated")
    admin.commit()
    assert red(db_url) == {}


def test_the_kit_trips_none_of_them_on_a_migrated_seeded_database(db_url):
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)
    report = run_status_check(db_url)
    assert report.passed, [(x.name, x.detail) for x in report.red]
