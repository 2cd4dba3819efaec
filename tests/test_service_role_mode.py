"""The service-role rule's two modes (012): report lets an unattributed service_role write
through and says where it came from; enforce refuses it; only the migration role switches.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.canaries.runner import CanaryThresholds, run_canaries
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.db.service_role_mode import (
    UNATTRIBUTED_ACTOR,
    change_mode,
    prove_service_role_rule,
    read_mode,
    unattributed_sources,
)
from hardening_pipeline.hardening.status import run_status_check
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import acting_as, admin_connect, insert_tenant, set_service_role_mode
from tests.test_cli import run_cli

EDGE_CLAIMS = json.dumps({"role": "service_role", "iss": "supabase"})


@pytest.fixture
def tenant(admin):
    return insert_tenant(admin, "alpha")


def unattributed_update(admin, tenant, *, app: str = "edge-fn:notify", claims=EDGE_CLAIMS):
    """A write the way supabase-js with the service key makes it: role and JWT, no app.actor."""
    with acting_as(admin, "service_role", jwt_claims=claims):
        admin.execute("SELECT set_config('application_name', %s, true)", (app,))
        admin.execute("UPDATE messages SET body = 'raw' WHERE id = %s", (tenant.message,))
        admin.execute("RESET ROLE")
        audit = admin.execute(
            "SELECT actor, db_role FROM audit_events WHERE table_name = 'messages' "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        noted = admin.execute(
            "SELECT table_name, operation, application_name, jwt_role "
            "FROM hardening.unattributed_writes ORDER BY id DESC"
        ).fetchall()
    return audit, noted


def test_a_new_database_starts_in_enforce(admin):
    state = read_mode(admin)
    assert state is not None and state.mode == "enforce"


def test_enforce_refuses_an_unattributed_write_and_notes_nothing(admin, tenant):
    with pytest.raises(errors.InsufficientPrivilege, match="without an actor is refused"):
        unattributed_update(admin, tenant)
    admin.rollback()
    assert admin.execute("SELECT count(*) AS n FROM hardening.unattributed_writes").fetchone() == {
        "n": 0
    }


def test_report_lets_it_through_audited_as_unattributed_with_its_source(admin, tenant):
    set_service_role_mode(admin, "report")
    audit, noted = unattributed_update(admin, tenant)
    assert audit == {"actor": UNATTRIBUTED_ACTOR, "db_role": "service_role"}
    assert noted == [
        {
            "table_name": "messages",
            "operation": "UPDATE",
            "application_name": "edge-fn:notify",
            "jwt_role": "service_role",
        }
    ]


def test_through_postgrest_the_client_header_and_path_tell_callers_apart(admin, tenant):
    set_service_role_mode(admin, "report")
    headers = json.dumps({"x-client-info": "supabase-js-node/2.45.0", "user-agent": "Deno/1.4"})
    with acting_as(admin, "service_role", jwt_claims=EDGE_CLAIMS):
        admin.execute("SELECT set_config('application_name', 'postgrest', true)")
        admin.execute("SELECT set_config('request.headers', %s, true)", (headers,))
        admin.execute("SELECT set_config('request.path', '/messages', true)")
        admin.execute("UPDATE messages SET body = 'via api' WHERE id = %s", (tenant.message,))
        admin.execute("RESET ROLE")
        noted = admin.execute(
            "SELECT client_info, request_path FROM hardening.unattributed_writes"
        ).fetchall()
        [source] = unattributed_sources(admin)
    assert noted == [{"client_info": "supabase-js-node/2.45.0", "request_path": "/messages"}]
    assert "client supabase-js-node/2.45.0" in source.describe()


def readme_pre_request_function() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(
        r"```sql\n(\s*CREATE FUNCTION public\.attribute_service_role.*?\$\$;)", readme, re.S
    )
    assert block, "the README's pre-request pattern is gone"
    return block.group(1)


def test_the_readme_pattern_for_postgrest_callers_passes_enforce(db_url, admin, tenant):
    """A PostgREST request: role and headers set, the pre-request function called, the write."""
    admin.execute(readme_pre_request_function())
    admin.commit()
    assert run_status_check(db_url).passed  # the function itself trips no status line
    with acting_as(admin, "service_role", jwt_claims=EDGE_CLAIMS):
        admin.execute(
            "SELECT set_config('request.headers', %s, true)",
            (json.dumps({"x-caller": "edge:notify"}),),
        )
        admin.execute("SELECT public.attribute_service_role()")
        admin.execute("UPDATE messages SET body = 'named' WHERE id = %s", (tenant.message,))
        admin.execute("RESET ROLE")
        actor = admin.execute("SELECT actor FROM audit_events ORDER BY id DESC LIMIT 1").fetchone()
    assert actor == {"actor": "service_role:edge:notify"}
    # Without the header nothing is set, and enforce refuses as before.
    with pytest.raises(errors.InsufficientPrivilege, match="without an actor"):
        with acting_as(admin, "service_role", jwt_claims=EDGE_CLAIMS):
            admin.execute("SELECT set_config('request.headers', '{}', true)")
            admin.execute("SELECT public.attribute_service_role()")
            admin.execute("UPDATE messages SET body = 'anon' WHERE id = %s", (tenant.message,))


def test_report_mode_keeps_attributed_writes_attributed_and_unnoted(admin, tenant):
    set_service_role_mode(admin, "report")
    with acting_as(admin, "service_role", actor="service_role:billing"):
        admin.execute("UPDATE messages SET body = 'ok' WHERE id = %s", (tenant.message,))
        admin.execute("RESET ROLE")
        actor = admin.execute("SELECT actor FROM audit_events ORDER BY id DESC LIMIT 1").fetchone()
        noted = admin.execute("SELECT count(*) AS n FROM hardening.unattributed_writes").fetchone()
    assert actor == {"actor": "service_role:billing"} and noted == {"n": 0}


def test_report_mode_survives_malformed_claims_and_no_jwt(admin, tenant):
    set_service_role_mode(admin, "report")
    _, noted = unattributed_update(admin, tenant, claims="{not json")
    assert noted[0]["jwt_role"] == "(malformed request.jwt.claims)"
    _, noted = unattributed_update(admin, tenant, claims=None, app="")
    assert noted[0]["jwt_role"] is None and noted[0]["application_name"] == ""


def test_the_source_is_noted_once_per_statement_not_per_row(admin, tenant):
    set_service_role_mode(admin, "report")
    insert_tenant(admin, "gamma")
    with acting_as(admin, "service_role"):
        admin.execute("UPDATE units SET label = label || '-x'")  # both tenants' units
        admin.execute("RESET ROLE")
        audited = admin.execute(
            "SELECT count(*) AS n FROM audit_events "
            "WHERE table_name = 'units' AND actor = 'service_role:unattributed'"
        ).fetchone()
        noted = admin.execute(
            "SELECT count(*) AS n FROM hardening.unattributed_writes WHERE table_name = 'units'"
        ).fetchone()
    assert audited == {"n": 2} and noted == {"n": 1}


def test_naming_yourself_unattributed_does_not_get_past_enforce(admin, tenant):
    with pytest.raises(errors.InsufficientPrivilege, match="without an actor"):
        with acting_as(admin, "service_role", actor=UNATTRIBUTED_ACTOR):
            admin.execute("UPDATE messages SET body = 'x' WHERE id = %s", (tenant.message,))


MODE_ATTACKS = [
    "UPDATE hardening.service_role_mode SET mode = 'report'",
    "DELETE FROM hardening.service_role_mode",
    "TRUNCATE hardening.service_role_mode",
    "INSERT INTO hardening.service_role_mode (singleton, mode, reason) "
    "VALUES (true, 'report', 'x')",
    "ALTER TABLE hardening.service_role_mode DROP CONSTRAINT service_role_mode_mode_check",
    "DROP TABLE hardening.service_role_mode",
    "INSERT INTO hardening.unattributed_writes (table_name, operation, application_name) "
    "VALUES ('messages', 'UPDATE', 'forged')",
    "DELETE FROM hardening.unattributed_writes",
    "SELECT hardening.allow_unattributed_write('messages', 'UPDATE')",
    "CREATE OR REPLACE FUNCTION hardening.allow_unattributed_write(text, text) RETURNS boolean "
    "LANGUAGE sql AS 'SELECT true'",
]


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
@pytest.mark.parametrize("attack", MODE_ATTACKS)
def test_app_roles_cannot_change_the_mode(admin, role, attack):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, role, actor="service_role:attacker"):
            admin.execute(attack)
    assert read_mode(admin).mode == "enforce"


def test_the_source_cannot_be_noted_by_calling_the_function_directly(admin):
    """service_role holds EXECUTE (the guard runs as it), so the function itself refuses."""
    set_service_role_mode(admin, "report")
    with pytest.raises(errors.InsufficientPrivilege, match="audit guard only"):
        with acting_as(admin, "service_role"):
            admin.execute("SELECT hardening.allow_unattributed_write('messages', 'UPDATE')")


def test_a_setting_cannot_switch_the_mode(admin, tenant):
    with pytest.raises(errors.InsufficientPrivilege, match="without an actor"):
        with acting_as(admin, "service_role"):
            admin.execute("SELECT set_config('hardening.service_role_mode', 'report', true)")
            admin.execute("DELETE FROM messages WHERE id = %s", (tenant.message,))


def test_canary_names_the_sources_and_counts(db_url, admin, tenant):
    quiet = {r.name: r for r in run_canaries(db_url)}["unattributed_service_role_writes"]
    assert quiet.passed and quiet.count == 0
    set_service_role_mode(admin, "report")
    for _ in range(3):
        with admin.transaction():
            admin.execute("SET LOCAL ROLE service_role")
            admin.execute("SELECT set_config('application_name', 'edge-fn:notify', true)")
            admin.execute("SELECT set_config('request.jwt.claims', %s, true)", (EDGE_CLAIMS,))
            admin.execute("UPDATE messages SET body = 'raw' WHERE id = %s", (tenant.message,))
    fired = {r.name: r for r in run_canaries(db_url)}["unattributed_service_role_writes"]
    assert not fired.passed and fired.count == 3
    [finding] = fired.findings
    assert finding.subject == "messages"
    assert "'edge-fn:notify'" in finding.detail and "JWT role service_role" in finding.detail
    assert fired.runbook_anchor == "canary-unattributed-service-role-writes"


def test_canary_look_back_is_a_threshold(db_url, admin):
    # In report mode: in enforce mode, notes from before the switch no longer count at all.
    set_service_role_mode(admin, "report")
    admin.execute(
        "INSERT INTO hardening.unattributed_writes (created_at, table_name, operation, "
        "application_name) VALUES (now() - interval '30 hours', 'messages', 'DELETE', 'nightly')"
    )
    admin.commit()
    default = run_canaries(db_url, names=["unattributed_service_role_writes"])[0]
    assert default.passed
    wider = run_canaries(
        db_url,
        names=["unattributed_service_role_writes"],
        thresholds=CanaryThresholds(unattributed_lookback_hours=48),
    )[0]
    assert not wider.passed and "'nightly'" in wider.findings[0].detail


def test_status_line_is_red_in_report_and_names_the_callers(db_url, admin, tenant):
    set_service_role_mode(admin, "report")
    with admin.transaction():
        admin.execute("SET LOCAL ROLE service_role")
        admin.execute("SELECT set_config('application_name', 'webhook:crm', true)")
        admin.execute("DELETE FROM onboarding_attempts WHERE id = %s", (tenant.onboarding,))
    report = run_status_check(db_url)
    assert [x.name for x in report.red] == ["service_role_rule_enforced"]
    line = report.red[0]
    assert "report mode" in line.detail and "webhook:crm" in line.detail
    assert "hardening service-role-mode enforce" in line.fix


def test_switching_to_enforce_refuses_while_callers_are_unattributed(db_url, admin, tenant):
    set_service_role_mode(admin, "report")
    with admin.transaction():
        admin.execute("SET LOCAL ROLE service_role")
        admin.execute("SELECT set_config('application_name', 'edge-fn:notify', true)")
        admin.execute("UPDATE messages SET body = 'raw' WHERE id = %s", (tenant.message,))
    admin.commit()
    refused = change_mode(db_url, "enforce")
    assert not refused.changed and refused.current.mode == "report"
    assert [s.application_name for s in refused.sources] == ["edge-fn:notify"]
    forced = change_mode(db_url, "enforce", force=True)
    assert forced.changed and forced.current.mode == "enforce"
    assert "--force" in forced.current.reason


def test_old_unattributed_writes_do_not_block_enforce(db_url, admin):
    set_service_role_mode(admin, "report")
    admin.execute(
        "INSERT INTO hardening.unattributed_writes (created_at, table_name, operation, "
        "application_name) VALUES (now() - interval '8 days', 'messages', 'UPDATE', 'old-job')"
    )
    admin.commit()
    assert unattributed_sources(admin) == []
    assert change_mode(db_url, "enforce").changed


# --- the starting mode ----------------------------------------------------------------------------

APP_TENANTS_BEFORE_THE_KIT = """
    CREATE TABLE public.tenants (
        id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
        name        text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO public.tenants (slug, name) VALUES ('acme', 'Acme');
"""


def test_an_app_adopting_the_kit_starts_in_report_and_migrate_says_so(empty_db_url):
    with admin_connect(empty_db_url) as conn:
        conn.execute(APP_TENANTS_BEFORE_THE_KIT)
        conn.commit()
    result = run_cli("migrate", env={"HARDENING_DATABASE_URL": empty_db_url})
    assert result.returncode == 0, result.stderr
    assert "service-role rule: report mode" in result.stdout
    assert "hardening service-role-mode enforce" in result.stdout
    with admin_connect(empty_db_url) as conn:
        assert read_mode(conn).mode == "report"


def test_migrate_says_enforce_on_a_new_database(empty_db_url):
    result = run_cli("migrate", env={"HARDENING_DATABASE_URL": empty_db_url})
    assert result.returncode == 0, result.stderr
    assert "service-role rule: enforce mode" in result.stdout


def test_a_database_the_kit_already_guards_stays_in_enforce(empty_db_url, tmp_path):
    """Tenant rows whose writes the audit log saw are the kit's own, not an adopting app's."""
    from hardening_pipeline.db.migrations import MIGRATIONS_DIR

    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "012":
            (earlier / path.name).write_text(path.read_text())
    apply_migrations(empty_db_url, earlier)
    with admin_connect(empty_db_url) as conn:
        insert_tenant(conn, "beta")
    apply_migrations(empty_db_url)
    with admin_connect(empty_db_url) as conn:
        assert read_mode(conn).mode == "enforce"


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_shows_sets_and_refuses(db_url, admin, tenant):
    env = {"HARDENING_DATABASE_URL": db_url}
    shown = run_cli("service-role-mode", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "enforce mode" in shown.stdout
    assert run_cli("service-role-mode", "report", env=env).returncode == 0
    with admin.transaction():
        admin.execute("SET LOCAL ROLE service_role")
        admin.execute("SELECT set_config('application_name', 'cron:digest', true)")
        admin.execute("UPDATE messages SET body = 'raw' WHERE id = %s", (tenant.message,))
    refused = run_cli("service-role-mode", "enforce", env=env)
    assert refused.returncode == 1
    assert "cron:digest" in refused.stdout and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    forced = run_cli("service-role-mode", "enforce", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "report -> enforce" in forced.stdout
    bad = run_cli("service-role-mode", "lenient", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_cli_on_an_unmigrated_database_says_to_migrate(empty_db_url):
    result = run_cli("service-role-mode", env={"HARDENING_DATABASE_URL": empty_db_url})
    assert result.returncode == 2 and "hardening migrate" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_as_an_app_role_cannot_switch(db_url, admin):
    """A login role with service_role's rights (no more) is refused, in one sentence."""
    name = f"app_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE service_role").format(sql.Identifier(name)))
    admin.commit()
    try:
        url = make_conninfo(db_url, user=name)
        result = run_cli("service-role-mode", "report", env={"HARDENING_DATABASE_URL": url})
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert read_mode(admin).mode == "enforce"
    finally:
        admin.rollback()
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        admin.commit()


# --- evidence B -----------------------------------------------------------------------------------


def test_proof_shows_the_raw_write_refused_in_enforce(admin, tenant):
    proof = prove_service_role_rule(admin)
    assert proof.passed and proof.refused and proof.mode == "enforce"
    assert proof.table == "public.messages"
    assert "refused" in proof.describe()


def test_proof_is_red_in_report_mode_and_changes_nothing(admin, tenant):
    set_service_role_mode(admin, "report")
    before = admin.execute("SELECT count(*) AS n FROM audit_events").fetchone()
    proof = prove_service_role_rule(admin)
    assert not proof.passed and not proof.refused and "1 row(s) updated" in proof.error
    assert admin.execute("SELECT count(*) AS n FROM audit_events").fetchone() == before
    assert admin.execute("SELECT count(*) AS n FROM hardening.unattributed_writes").fetchone() == {
        "n": 0
    }


def test_proof_is_red_when_the_guard_is_off(admin, tenant):
    admin.execute("ALTER TABLE messages DISABLE TRIGGER messages_audit_guard")
    admin.commit()
    proof = prove_service_role_rule(admin)
    assert proof.mode == "enforce" and not proof.refused and not proof.passed


def test_proof_does_not_count_a_missing_grant_as_the_rule(admin, tenant):
    admin.execute("REVOKE UPDATE ON messages FROM service_role")
    admin.commit()
    proof = prove_service_role_rule(admin)
    assert not proof.refused and "permission denied" in proof.error


# --- backups ------------------------------------------------------------------------------------


def test_a_database_in_report_mode_still_passes_its_restore_drill(
    db_url, admin, s3_server, s3_bucket
):
    """The restored copy keeps the source's mode; that is how it is run, not a restore fault."""
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)
    set_service_role_mode(admin, "report")
    store, keyring = s3_server.store(s3_bucket), Keyring(bytes(range(32)))
    run_backup(db_url, store, keyring)
    result = run_restore_drill(store, keyring)
    assert result.passed, (result.failure, result.invariants)
    [status] = [i for i in result.invariants if i.name.startswith("status check")]
    assert "service_role_rule_enforced red as in the source" in status.detail
