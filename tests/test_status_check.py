"""The status checker: green on a hardened database, and each way of breaking it turns exactly
its own line red while every other line stays green.

Each breakage is done as a superuser in this test's own cloned database, the way a hurried
hotfix or a console click would do it.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from hardening_pipeline.alerts.slack import SlackNotifier
from hardening_pipeline.db.migrations import MIGRATIONS_DIR
from hardening_pipeline.hardening.alerts import alert_status
from hardening_pipeline.hardening.report import write_report
from hardening_pipeline.hardening.status import (
    CHECKS,
    CheckContext,
    run_checks,
    run_status_check,
)
from hardening_pipeline.hardening.status.rls import per_row_calls
from tests.support.db import admin_connect

ALL_LINES = [name for name, _, _ in CHECKS]

NEW_TENANT_TABLE_WITHOUT_RLS = """
    CREATE TABLE public.invoices (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id uuid NOT NULL REFERENCES public.tenants (id) ON DELETE RESTRICT
    );
    CREATE INDEX invoices_tenant_id_idx ON public.invoices (tenant_id);
    SELECT hardening.install_audit_capture('public.invoices'::regclass, 'tenant_id');
"""

DISABLE_ONE_FK_TRIGGER = """
    DO $$
    DECLARE t text;
    BEGIN
        SELECT tgname INTO t FROM pg_trigger
        WHERE tgrelid = 'public.messages'::regclass AND tgconstraint =
            (SELECT oid FROM pg_constraint WHERE conname = 'messages_unit_id_fkey');
        EXECUTE format('ALTER TABLE public.messages DISABLE TRIGGER %I', t);
    END $$;
"""

# (line that must turn red, SQL that breaks exactly that guarantee)
BREAKAGES = [
    ("messages_unit_id_not_null", "ALTER TABLE messages ALTER COLUMN unit_id DROP NOT NULL"),
    ("foreign_keys_restrict", "ALTER TABLE messages DROP CONSTRAINT messages_unit_id_fkey"),
    (
        "foreign_keys_restrict",
        "ALTER TABLE messages DROP CONSTRAINT messages_tenant_id_fkey; "
        "ALTER TABLE messages ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (tenant_id) "
        "REFERENCES tenants (id) ON DELETE CASCADE",
    ),
    (
        "foreign_keys_restrict",
        "ALTER TABLE units DROP CONSTRAINT units_tenant_id_fkey; "
        "ALTER TABLE units ADD CONSTRAINT units_tenant_id_fkey FOREIGN KEY (tenant_id) "
        "REFERENCES tenants (id) ON DELETE RESTRICT NOT VALID",
    ),
    ("foreign_keys_restrict", DISABLE_ONE_FK_TRIGGER),
    (
        "tenant_consistency_keys",
        "ALTER TABLE messages DROP CONSTRAINT messages_unit_development_tenant_fkey",
    ),
    (
        "tenant_consistency_keys",
        "ALTER TABLE units DROP CONSTRAINT units_development_tenant_fkey",
    ),
    (
        "audit_append_only_guard",
        "ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only",  # not ALWAYS
    ),
    (
        "audit_append_only_guard",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
    ),
    ("audit_append_only_guard", "DROP TRIGGER audit_events_append_only ON audit_events"),
    ("audit_capture_triggers", "ALTER TABLE messages DISABLE TRIGGER messages_audit_insert"),
    ("audit_capture_triggers", "ALTER TABLE units ENABLE TRIGGER units_audit_guard"),
    ("audit_capture_triggers", "DROP TRIGGER tenants_audit_delete ON tenants"),
    (
        "adopted_tables_policies_narrow",
        # messages recorded as found with RLS on: its permissive kit policy would widen access.
        "UPDATE hardening.managed_tables SET created_by_kit = false, adopted_at = now(), "
        "rls_was_enabled = true WHERE table_name = 'messages'",
    ),
    ("audit_ddl_recorded", "ALTER EVENT TRIGGER hardening_record_ddl DISABLE"),
    ("audit_ddl_recorded", "DROP EVENT TRIGGER hardening_record_ddl_drop"),
    ("audit_events_no_write_grants", "GRANT DELETE ON audit_events TO service_role"),
    ("audit_events_no_write_grants", "GRANT TRUNCATE ON audit_events TO hardening_audit_owner"),
    ("audit_events_no_write_grants", "GRANT UPDATE (actor) ON audit_events TO authenticated"),
    (
        "audit_capture_triggers",
        "ALTER TABLE onboarding_attempts DROP CONSTRAINT onboarding_attempts_pkey; "
        "ALTER TABLE onboarding_attempts ADD PRIMARY KEY (tenant_id, id)",
    ),
    (
        "tenant_resolver_not_user_writable",
        "UPDATE hardening.tenant_resolver "
        "SET claim_paths = ARRAY['tenant_id', 'user_metadata.tenant_id']",
    ),
    ("rls_tenant_tables", NEW_TENANT_TABLE_WITHOUT_RLS),
    ("rls_tenant_tables", "ALTER TABLE messages NO FORCE ROW LEVEL SECURITY"),
    ("rls_tenant_tables", "ALTER TABLE audit_events DISABLE ROW LEVEL SECURITY"),
    ("rls_disabled_in_public", "CREATE TABLE public.feature_flags (name text PRIMARY KEY)"),
    (
        "policy_exists_rls_disabled",
        "CREATE SCHEMA app2; CREATE TABLE app2.notes (x int); "
        "CREATE POLICY notes_read ON app2.notes FOR SELECT TO authenticated USING (true)",
    ),
    (
        "rls_enabled_no_policy",
        "CREATE TABLE public.notes (x int); ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY; "
        "GRANT SELECT ON public.notes TO authenticated",
    ),
    (
        "no_anon_or_public_policies",
        "CREATE POLICY anon_peek ON messages FOR SELECT TO anon USING (false)",
    ),
    (
        "no_anon_or_public_policies",
        "CREATE POLICY everyone ON developments FOR SELECT USING (false)",  # no TO: PUBLIC
    ),
    ("no_anon_grants", "GRANT SELECT ON messages TO anon"),
    ("no_anon_grants", "GRANT SELECT ON tenants TO PUBLIC"),
    ("no_anon_grants", "GRANT SELECT (body) ON messages TO anon"),
    ("api_roles_no_trigger_or_truncate", "GRANT TRIGGER ON messages TO authenticated"),
    ("api_roles_no_trigger_or_truncate", "GRANT TRUNCATE ON units TO service_role"),
    ("api_roles_no_trigger_or_truncate", "GRANT REFERENCES ON tenants TO authenticated"),
    ("tenant_id_indexed", "DROP INDEX onboarding_attempts_tenant_id_idx"),
    (
        "auth_rls_initplan",
        "DROP POLICY messages_tenant_isolation ON messages; "
        "CREATE POLICY messages_tenant_isolation ON messages FOR ALL TO authenticated "
        "USING (tenant_id = hardening.current_tenant_id()) "
        "WITH CHECK (tenant_id = (SELECT hardening.current_tenant_id()))",
    ),
    (
        "auth_rls_initplan",
        "DROP POLICY units_tenant_isolation ON units; "
        "CREATE POLICY units_tenant_isolation ON units FOR ALL TO authenticated "
        "USING (tenant_id = (SELECT hardening.current_tenant_id())) "
        "WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)",
    ),
    (
        "multiple_permissive_policies",
        "CREATE POLICY messages_also ON messages FOR SELECT TO authenticated "
        "USING (tenant_id = (SELECT hardening.current_tenant_id()))",
    ),
    (
        "tenant_policies_constrain_rows",
        "ALTER POLICY messages_tenant_isolation ON messages USING (true) WITH CHECK (true)",
    ),
    (
        # Still ANDed with the tenant, but ORed away: the tree, not the text, is judged.
        "tenant_policies_constrain_rows",
        "ALTER POLICY units_tenant_isolation ON units "
        "USING (tenant_id = (SELECT hardening.current_tenant_id()) OR units.id IS NOT NULL)",
    ),
    (
        "no_rules_on_tenant_tables",
        "CREATE SCHEMA open; CREATE TABLE open.copies (body text); "
        "CREATE RULE copy_messages AS ON INSERT TO messages DO ALSO "
        "INSERT INTO open.copies VALUES (NEW.body)",
    ),
    (
        # Pinned to one tenant, but not the caller's: only reading as the caller shows it.
        "tenant_isolation_probe",
        "INSERT INTO tenants (id, slug, name) VALUES "
        "('aaaaaaaa-0000-4000-8000-000000000000', 'first', 'First'), "
        "('bbbbbbbb-0000-4000-8000-000000000000', 'second', 'Second'); "
        "ALTER POLICY tenants_own_row ON tenants "
        "USING (id = 'bbbbbbbb-0000-4000-8000-000000000000'::uuid)",
    ),
    (
        "function_search_path_fixed",
        "CREATE FUNCTION public.whoami() RETURNS text LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT current_user::text'; REVOKE EXECUTE ON FUNCTION public.whoami() FROM PUBLIC",
    ),
    (
        "function_search_path_fixed",
        # Not a capture function nor one they call: their SET options also count for
        # audit_capture_triggers.
        "ALTER FUNCTION hardening.record_tenant_erasure(uuid, jsonb) RESET search_path",
    ),
    (
        "function_search_path_mutable",
        "CREATE FUNCTION public.add_one(i int) RETURNS int LANGUAGE sql AS 'SELECT i + 1'",
    ),
    ("service_role_rule_enforced", "UPDATE hardening.service_role_mode SET mode = 'report'"),
    ("security_definer_view", "CREATE VIEW public.plan_names AS SELECT 'basic'::text AS name"),
    (
        "tenant_views_security_invoker",
        "CREATE VIEW public.message_bodies AS SELECT id, body FROM messages",
    ),
    (
        # Through another view, in another schema: still a view over a tenant table.
        "tenant_views_security_invoker",
        "CREATE VIEW public.inbox WITH (security_invoker = on) AS SELECT * FROM messages; "
        "CREATE SCHEMA reporting; CREATE VIEW reporting.inbox_count AS SELECT count(*) FROM "
        "public.inbox",
    ),
    (
        "anon_security_definer_function_executable",
        "CREATE FUNCTION public.tenant_counts() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "SET search_path = '' AS 'SELECT count(*) FROM public.messages'; "
        "REVOKE EXECUTE ON FUNCTION public.tenant_counts() FROM PUBLIC; "
        "GRANT EXECUTE ON FUNCTION public.tenant_counts() TO anon",
    ),
    (
        "authenticated_security_definer_function_executable",
        "CREATE FUNCTION public.tenant_counts() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "SET search_path = '' AS 'SELECT count(*) FROM public.messages'; "
        "REVOKE EXECUTE ON FUNCTION public.tenant_counts() FROM PUBLIC; "
        "GRANT EXECUTE ON FUNCTION public.tenant_counts() TO authenticated",
    ),
    (
        "authenticated_security_definer_function_executable",
        "REVOKE EXECUTE ON FUNCTION hardening.allow_unattributed_write(text, text) "
        "FROM service_role; GRANT EXECUTE ON FUNCTION "
        "hardening.allow_unattributed_write(text, text) TO authenticated",
    ),
    (
        "api_roles_reach_no_tenant_data",
        "CREATE VIEW public.inbox WITH (security_invoker = true) AS SELECT * FROM messages; "
        "GRANT SELECT ON public.inbox TO anon",
    ),
    (
        "api_roles_reach_no_tenant_data",
        "CREATE MATERIALIZED VIEW public.message_counts AS "
        "SELECT tenant_id, count(*) AS n FROM messages GROUP BY tenant_id; "
        "GRANT SELECT ON public.message_counts TO authenticated",
    ),
    ("api_roles_reach_no_tenant_data", "GRANT USAGE ON SEQUENCE audit_events_id_seq TO anon"),
    (
        "api_roles_reach_no_tenant_data",
        "GRANT SELECT ON SEQUENCE audit_events_id_seq TO authenticated",
    ),
    (
        "kit_objects_closed_to_api_roles",
        "GRANT EXECUTE ON FUNCTION hardening.install_audit_capture(regclass, text) TO anon",
    ),
    (
        "kit_objects_closed_to_api_roles",
        "GRANT UPDATE ON SEQUENCE audit_events_id_seq TO service_role",
    ),
    (
        "pg_catalog_untouched",
        "CREATE FUNCTION pg_catalog.sha256_shadow(bytea) RETURNS bytea LANGUAGE sql AS 'SELECT $1'",
    ),
    (
        # A seal claiming a row that is not there (what remains when sealed rows are deleted).
        "audit_seal_chain",
        "INSERT INTO hardening.audit_seals (seq, from_id, to_id, row_count, digest, "
        "previous_digest, fingerprints, sealed_at, sealed_by) VALUES (1, 1, 1, 1, "
        "sha256('x'), decode(repeat('00', 32), 'hex'), decode('01' || repeat('00', 8), 'hex'), "
        "now(), 'forger')",
    ),
]


def red_lines(db_url: str, ctx: CheckContext | None = None) -> list[str]:
    with admin_connect(db_url) as conn:
        return [line.name for line in run_checks(conn, ctx) if not line.passed]


def test_a_hardened_database_is_all_green(db_url):
    report = run_status_check(db_url)
    assert [line.name for line in report.lines] == ALL_LINES
    assert report.passed, [(x.name, x.detail) for x in report.red]
    assert all(line.fix == "" for line in report.lines)


# Lines whose breakage outlives the test database (roles are cluster-wide), broken and cleaned
# up by the tests named here instead.
BROKEN_ELSEWHERE = {
    "audit_owner_unreachable": "tests/test_kit_privileges.py::"
    "test_status_names_a_login_member_of_the_audit_owner",
    # Needs the backup store and a backup, which this file's databases do not have.
    "tenant_key_ledger": "tests/test_tenant_keys.py::"
    "test_a_deleted_entry_that_was_not_an_erasure_is_red_and_recovery_brings_it_back",
}


def test_every_line_is_broken_by_at_least_one_test():
    assert {line for line, _ in BREAKAGES} | {"migrations_applied"} | set(BROKEN_ELSEWHERE) == set(
        ALL_LINES
    )


@pytest.mark.parametrize(
    ("line", "breakage"), BREAKAGES, ids=[f"{i:02d}-{b[0]}" for i, b in enumerate(BREAKAGES)]
)
def test_each_breakage_turns_exactly_its_line_red(db_url, admin, line, breakage):
    admin.execute(breakage)
    admin.commit()
    report = run_status_check(db_url)
    assert [x.name for x in report.red] == [line], [(x.name, x.detail) for x in report.red]
    bad = report.red[0]
    assert bad.detail and bad.fix, "a red line must say why and how to fix it"


def test_an_edited_applied_migration_turns_only_the_migrations_line_red(db_url, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    target = folder / "004_rls_lockdown.sql"
    target.write_text(target.read_text() + "\n-- a harmless-looking edit\n")
    report = run_status_check(db_url, migrations_dir=folder)
    assert [x.name for x in report.red] == ["migrations_applied"]
    assert "changed: 004_rls_lockdown.sql" in report.red[0].detail


def test_a_pending_migration_turns_only_the_migrations_line_red(db_url, tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "999_later.sql").write_text("SELECT 1;\n")
    report = run_status_check(db_url, migrations_dir=folder)
    assert [x.name for x in report.red] == ["migrations_applied"]
    assert "pending: 999_later.sql" in report.red[0].detail


def test_a_check_that_errors_is_red_not_a_crash(empty_db_url):
    report = run_status_check(empty_db_url)  # nothing applied: catalog checks find nothing
    assert not report.passed
    assert "migrations_applied" in [x.name for x in report.red]
    assert len(report.lines) == len(ALL_LINES)


@pytest.mark.parametrize(
    ("expr", "calls"),
    [
        ("(tenant_id = ( SELECT hardening.current_tenant_id() AS current_tenant_id))", []),
        ("(tenant_id = hardening.current_tenant_id())", ["hardening.current_tenant_id"]),
        ("(user_id = auth.uid())", ["auth.uid"]),
        ("(user_id = ( SELECT auth.uid() AS uid))", []),
        (
            "((tenant_id)::text = current_setting('app.tenant_id'::text, true))",
            ["current_setting"],
        ),
        ("(x = ( SELECT nullif(current_setting('a', true), '') AS n))", []),
        (None, []),
    ],
)
def test_per_row_call_detection(expr, calls):
    assert per_row_calls(expr) == calls


# --- report and alert ---------------------------------------------------------------------------


def test_report_files_are_timestamped_markdown_and_json(db_url, admin, tmp_path):
    admin.execute("GRANT DELETE ON audit_events TO service_role")
    admin.commit()
    report = run_status_check(db_url)
    first = write_report(report, tmp_path / "reports")
    second = write_report(report, tmp_path / "reports")  # same second: must not overwrite
    assert re.fullmatch(r"status-\d{8}T\d{6}Z\.md", first.markdown.name)
    assert first.json.name == first.markdown.name.replace(".md", ".json")
    assert second.markdown != first.markdown and second.markdown.exists()
    data = json.loads(first.json.read_text())
    assert data["passed"] is False and data["red"] == ["audit_events_no_write_grants"]
    assert [line["name"] for line in data["lines"]] == ALL_LINES
    red = next(x for x in data["lines"] if x["name"] == "audit_events_no_write_grants")
    assert "service_role: DELETE" in red["detail"] and red["fix"].startswith("REVOKE")
    assert red["runbook_anchor"] == "status-audit-events-no-write-grants"
    md = first.markdown.read_text()
    assert md.startswith("# Hardening status: 1 RED")
    assert md.count("🟢 green") == len(ALL_LINES) - 1 and md.count("🔴 red") == 1


def test_runbook_has_a_section_for_every_line():
    runbook = (MIGRATIONS_DIR.parents[1] / "docs" / "runbook.md").read_text()
    for name in ALL_LINES:
        anchor = "status-" + name.replace("_", "-")
        assert f'<a id="{anchor}"></a>' in runbook, anchor


def test_status_alert_once_when_red_and_resolved_when_green(db_url, admin, slack_receiver):
    notifier = SlackNotifier(slack_receiver.url, timeout=5, max_retries=0)
    assert alert_status(db_url, run_status_check(db_url), notifier).action == "nothing"
    admin.execute("GRANT SELECT ON messages TO anon")
    admin.commit()
    assert alert_status(db_url, run_status_check(db_url), notifier).action == "sent"
    assert alert_status(db_url, run_status_check(db_url), notifier).action == "suppressed"
    payload = slack_receiver.requests[0]
    assert payload["blocks"][0]["text"]["text"] == ":red_circle: Hardening status: 1 check(s) red"
    assert "no_anon_grants" in payload["blocks"][1]["text"]["text"]
    details = payload["blocks"][3]["text"]["text"]
    assert "anon SELECT on messages" in details and "REVOKE ALL" in details
    admin.execute("REVOKE SELECT ON messages FROM anon")
    admin.commit()
    assert alert_status(db_url, run_status_check(db_url), notifier).action == "resolved"
    assert len(slack_receiver.requests) == 2
    assert "all green again" in slack_receiver.requests[1]["blocks"][0]["text"]["text"]


def test_alerts_link_the_published_runbook_when_configured(db_url, admin, tmp_path, slack_receiver):
    from tests.test_cli import run_cli

    admin.execute("GRANT SELECT ON messages TO anon")
    admin.commit()
    env = {
        "HARDENING_DATABASE_URL": db_url,
        "HARDENING_REPORTS_DIR": str(tmp_path / "r"),
        "SLACK_WEBHOOK_URL": slack_receiver.url,
        "HARDENING_RUNBOOK_URL": "https://ops.example.org/runbook.html",
    }
    red = run_cli("status", env=env)
    assert red.returncode == 1, red.stderr
    [payload] = slack_receiver.requests
    text = json.dumps(payload)
    section = "https://ops.example.org/runbook.html#status-no-anon-grants"
    assert f"<{section}|Runbook: what to do>" in text
    assert "docs/runbook.md" not in text


def test_cli_status_exit_codes_and_report(db_url, admin, tmp_path):
    from tests.test_cli import run_cli

    env = {"HARDENING_DATABASE_URL": db_url, "HARDENING_REPORTS_DIR": str(tmp_path / "r")}
    green = run_cli("status", "--no-alert", env=env)
    assert green.returncode == 0, green.stdout + green.stderr
    assert len(list((tmp_path / "r").glob("status-*.md"))) == 1
    admin.execute("CREATE VIEW public.message_bodies AS SELECT id, body FROM messages")
    admin.commit()
    red = run_cli("status", "--no-alert", env=env | {"COLUMNS": "200"})
    assert red.returncode == 1
    assert "security_definer_view" in red.stdout and "security_invoker" in red.stdout
    assert "1 of" in red.stderr and "Traceback" not in red.stderr
    assert len(list((tmp_path / "r").glob("status-*.json"))) == 2
