"""Adopting the kit on a database that already has an app: never widen access, replace the
app's constraints whatever their names, keep text tenant ids writable.

Each test builds a small pre-existing app (its own tenants, developments, units and messages
with stricter policies of its own, a membership table, CASCADE keys under non-default names, a
table with a text tenant_id) in an empty database, then applies the kit's migrations to it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from psycopg import errors, sql

from hardening_pipeline.cli import main
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.db.tenant_resolver import (
    adoption_changes,
    read_resolver,
    set_claim_resolver,
    set_membership_resolver,
    sync_tenant_policies,
)
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.hardening.status import CheckLine, run_checks, run_status_check
from tests.support.db import FK_REFUSED, acting_as, admin_connect

APP_SCHEMA = """
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END
$roles$;
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid
$$;
GRANT USAGE ON SCHEMA auth TO authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid() TO authenticated, service_role;

CREATE TABLE public.tenants (
    id uuid PRIMARY KEY, slug text NOT NULL UNIQUE, name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.memberships (
    user_id uuid NOT NULL,
    tenant_id uuid NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('editor', 'viewer')),
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tenant_id)
);
CREATE TABLE public.developments (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES public.tenants (id) ON UPDATE CASCADE ON DELETE CASCADE,
    name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.units (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES public.tenants (id) DEFERRABLE INITIALLY DEFERRED,
    development_id uuid NOT NULL CONSTRAINT unit_in_development
        REFERENCES public.developments (id) ON DELETE CASCADE,
    label text NOT NULL, created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.messages (
    id uuid PRIMARY KEY,
    -- The names Postgres would pick (and 003 used to add), and one of the app's own.
    tenant_id uuid NOT NULL CONSTRAINT messages_tenant_id_fkey
        REFERENCES public.tenants (id) ON DELETE CASCADE,
    development_id uuid CONSTRAINT msg_development REFERENCES public.developments (id)
        ON DELETE SET NULL,
    unit_id uuid CONSTRAINT messages_unit_id_fkey REFERENCES public.units (id) ON DELETE CASCADE,
    author_id uuid NOT NULL,
    sender text NOT NULL, body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Names the kit would give an index and a UNIQUE constraint, already taken by the app's own
-- indexes on other columns (index names share one namespace per schema).
CREATE INDEX messages_development_id_idx ON public.messages (created_at);
CREATE INDEX units_id_development_tenant_key ON public.memberships (role);
CREATE TABLE public.legacy_notes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id text NOT NULL,
    note text NOT NULL
);

-- Buildings are managed by staff through the service role: users only read them.
GRANT SELECT ON public.tenants, public.developments, public.units TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.memberships, public.messages, public.legacy_notes
    TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.tenants, public.memberships, public.developments,
    public.units, public.messages, public.legacy_notes TO service_role;

-- The app's own policies: members read their tenants' rows, only editors change them, and a
-- viewer can write nothing.
ALTER TABLE public.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.developments ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.units ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.legacy_notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_memberships ON public.memberships FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.uid()));
CREATE POLICY member_tenants ON public.tenants FOR SELECT TO authenticated
    USING (id IN (SELECT tenant_id FROM public.memberships WHERE user_id = (SELECT auth.uid())));
CREATE POLICY member_developments ON public.developments FOR SELECT TO authenticated
    USING (tenant_id IN (SELECT tenant_id FROM public.memberships
                         WHERE user_id = (SELECT auth.uid())));
CREATE POLICY member_units ON public.units FOR SELECT TO authenticated
    USING (tenant_id IN (SELECT tenant_id FROM public.memberships
                         WHERE user_id = (SELECT auth.uid())));
CREATE POLICY members_read ON public.messages FOR SELECT TO authenticated
    USING (tenant_id IN (SELECT tenant_id FROM public.memberships
                         WHERE user_id = (SELECT auth.uid())));
CREATE POLICY editors_insert ON public.messages FOR INSERT TO authenticated
    WITH CHECK (author_id = (SELECT auth.uid()) AND tenant_id IN (
        SELECT tenant_id FROM public.memberships
        WHERE user_id = (SELECT auth.uid()) AND role = 'editor'));
CREATE POLICY editors_update ON public.messages FOR UPDATE TO authenticated
    USING (tenant_id IN (SELECT tenant_id FROM public.memberships
                         WHERE user_id = (SELECT auth.uid()) AND role = 'editor'));
CREATE POLICY editors_delete ON public.messages FOR DELETE TO authenticated
    USING (tenant_id IN (SELECT tenant_id FROM public.memberships
                         WHERE user_id = (SELECT auth.uid()) AND role = 'editor'));
CREATE POLICY legacy_by_claim ON public.legacy_notes FOR ALL TO authenticated
    USING (tenant_id = (nullif(current_setting('request.jwt.claims', true), '')::jsonb
                        ->> 'legacy_tenant'))
    WITH CHECK (tenant_id = (nullif(current_setting('request.jwt.claims', true), '')::jsonb
                             ->> 'legacy_tenant'));
"""


@dataclass
class App:
    url: str
    tenant_a: uuid.UUID
    tenant_b: uuid.UUID
    editor: uuid.UUID  # editor in A
    viewer: uuid.UUID  # viewer in A
    both: uuid.UUID  # viewer in A and in B
    message_a: uuid.UUID  # written by the editor, in A
    message_b: uuid.UUID
    development_b: uuid.UUID
    unit_a: uuid.UUID


def build_app(url: str) -> App:
    ids = [uuid.uuid4() for _ in range(12)]
    app = App(url, *ids[:7], development_b=ids[7], unit_a=ids[8])
    development_a = ids[9]
    unit_b = ids[10]
    with admin_connect(url) as conn:
        conn.execute(APP_SCHEMA)
        conn.execute(
            "INSERT INTO tenants (id, slug, name) "
            "VALUES (%s, 'acme', 'Acme'), (%s, 'bolt', 'Bolt')",
            (app.tenant_a, app.tenant_b),
        )
        conn.execute(
            "INSERT INTO memberships (user_id, tenant_id, role) VALUES (%s, %s, 'editor'), "
            "(%s, %s, 'viewer'), (%s, %s, 'viewer'), (%s, %s, 'viewer')",
            (
                *(app.editor, app.tenant_a),
                *(app.viewer, app.tenant_a),
                *(app.both, app.tenant_a),
                *(app.both, app.tenant_b),
            ),
        )
        conn.execute(
            "INSERT INTO developments (id, tenant_id, name) VALUES (%s, %s, 'A'), (%s, %s, 'B')",
            (development_a, app.tenant_a, app.development_b, app.tenant_b),
        )
        conn.execute(
            "INSERT INTO units (id, tenant_id, development_id, label) "
            "VALUES (%s, %s, %s, '1A'), (%s, %s, %s, '1B')",
            (app.unit_a, app.tenant_a, development_a, unit_b, app.tenant_b, app.development_b),
        )
        conn.execute(
            "INSERT INTO messages "
            "(id, tenant_id, development_id, unit_id, author_id, sender, body) VALUES "
            "(%s, %s, %s, %s, %s, 'editor', 'a'), (%s, %s, %s, %s, %s, 'other', 'b')",
            (
                *(app.message_a, app.tenant_a, development_a, app.unit_a, app.editor),
                *(app.message_b, app.tenant_b, app.development_b, unit_b, uuid.uuid4()),
            ),
        )
        conn.execute(
            "INSERT INTO legacy_notes (tenant_id, note) VALUES ('acme-legacy-42', 'kept'), "
            "('bolt-legacy-7', 'theirs')"
        )
        conn.commit()
    return app


@pytest.fixture
def app(empty_db_url: str) -> App:
    return build_app(empty_db_url)


@pytest.fixture
def plain_app(empty_db_url: str) -> App:
    """The same app without foreign keys on messages, so 003 alone never stands in the way."""
    app = build_app(empty_db_url)
    with admin_connect(app.url) as conn:
        conn.execute(
            "ALTER TABLE messages DROP CONSTRAINT messages_tenant_id_fkey, "
            "DROP CONSTRAINT msg_development, DROP CONSTRAINT messages_unit_id_fkey"
        )
        conn.commit()
    return app


def claims(user: uuid.UUID, **extra: object) -> str:
    return json.dumps({"sub": str(user), "role": "authenticated", **extra})


def behaviour(app: App) -> dict[str, object]:
    """What each user may read and write, as the app's own tests would see it."""
    seen: dict[str, object] = {}
    with admin_connect(app.url) as conn:
        for name in ("editor", "viewer", "both"):
            user = getattr(app, name)
            with acting_as(conn, "authenticated", jwt_claims=claims(user)):
                seen[f"{name} reads"] = sorted(
                    str(r["tenant_id"]) for r in conn.execute("SELECT tenant_id FROM messages")
                )
            for verb, statement in (
                ("updates", "UPDATE messages SET body = 'changed' WHERE id = %s"),
                ("deletes", "DELETE FROM messages WHERE id = %s"),
            ):
                with acting_as(conn, "authenticated", jwt_claims=claims(user)):
                    seen[f"{name} {verb}"] = conn.execute(statement, (app.message_a,)).rowcount
    return seen


def test_kit_policies_on_adopted_tables_only_narrow(app: App) -> None:
    before = behaviour(app)
    # The app's own rules, as a sanity check that the capture can tell them apart.
    assert before["viewer updates"] == 0 and before["viewer deletes"] == 0
    assert before["editor updates"] == 1 and before["editor deletes"] == 1
    assert before["both reads"] == sorted([str(app.tenant_a), str(app.tenant_b)])

    apply_migrations(app.url, applied_by="test")
    set_membership_resolver(app.url, "public.memberships", "user_id", "tenant_id")

    assert behaviour(app) == before


def test_kit_policies_are_restrictive_on_adopted_and_permissive_on_created(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    with admin_connect(plain_app.url) as conn:
        managed = {
            r["table_name"]: r
            for r in conn.execute("SELECT * FROM hardening.managed_tables").fetchall()
        }
        policies = {
            (r["relname"], r["polname"]): r["polpermissive"]
            for r in conn.execute(
                "SELECT c.relname, p.polname, p.polpermissive FROM pg_policy p "
                "JOIN pg_class c ON c.oid = p.polrelid"
            ).fetchall()
        }
    assert {t for t, r in managed.items() if r["created_by_kit"]} == {"onboarding_attempts"}
    for table in ("tenants", "developments", "units", "messages"):
        assert managed[table]["adopted_at"] is not None
        assert policies[(table, managed[table]["tenant_policy"])] is False, table
    assert policies[("onboarding_attempts", "onboarding_attempts_tenant_isolation")] is True


def _privileges(url: str) -> set[tuple[str, str, str]]:
    with admin_connect(url) as conn:
        rows = conn.execute(
            "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_schema = 'public' AND grantee IN ('anon', 'authenticated', "
            "'service_role', 'PUBLIC') AND table_name IN ('tenants', 'memberships', "
            "'developments', 'units', 'messages', 'legacy_notes')"
        ).fetchall()
    return {(r["grantee"], r["table_name"], r["privilege_type"]) for r in rows}


def test_migrations_grant_nothing_on_adopted_tables(plain_app: App) -> None:
    """001 and 004 touch every tenant table: they may revoke (TRUNCATE, anon) but never grant."""
    before = _privileges(plain_app.url)
    apply_migrations(plain_app.url, applied_by="test")
    after = _privileges(plain_app.url)
    assert after - before == set()
    assert ("authenticated", "developments", "SELECT") in after


@pytest.mark.parametrize("membership", [False, True])
def test_kit_policies_read_the_tenant_once_per_statement(plain_app: App, membership: bool) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    if membership:
        set_membership_resolver(plain_app.url, "public.memberships", "user_id", "tenant_id")
    jwt = claims(plain_app.editor, tenant_id=str(plain_app.tenant_a))
    with admin_connect(plain_app.url) as conn:
        with acting_as(conn, "authenticated", jwt_claims=jwt):
            plan = "\n".join(
                r["QUERY PLAN"]
                for r in conn.execute("EXPLAIN (COSTS OFF, VERBOSE) SELECT * FROM messages")
            )
    # The resolver runs in an InitPlan (once), and no per-row filter calls it.
    function = "current_tenant_ids()" if membership else "current_tenant_id()"
    assert "InitPlan" in plan and plan.count(function) == 1, plan


def test_viewer_cannot_gain_writes_with_a_tenant_claim(plain_app: App) -> None:
    """The claim resolver (the default) narrows too: a viewer with a valid tenant claim still
    cannot update or delete a colleague's message."""
    apply_migrations(plain_app.url, applied_by="test")
    jwt = claims(plain_app.viewer, app_metadata={"tenant_id": str(plain_app.tenant_a)})
    with admin_connect(plain_app.url) as conn:
        with acting_as(conn, "authenticated", jwt_claims=jwt):
            assert conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 1
            update = "UPDATE messages SET body = 'x' WHERE id = %s"
            assert conn.execute(update, (plain_app.message_a,)).rowcount == 0
            assert (
                conn.execute("DELETE FROM messages WHERE id = %s", (plain_app.message_a,)).rowcount
                == 0
            )
        # The user in two tenants, with a claim naming one, sees only that one.
        jwt = claims(plain_app.both, app_metadata={"tenant_id": str(plain_app.tenant_b)})
        with acting_as(conn, "authenticated", jwt_claims=jwt):
            rows = conn.execute("SELECT tenant_id FROM messages").fetchall()
            assert [r["tenant_id"] for r in rows] == [plain_app.tenant_b]


def test_tenant_isolation_holds_on_the_kits_own_tables(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    set_membership_resolver(plain_app.url, "public.memberships", "user_id", "tenant_id")
    with admin_connect(plain_app.url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:fixture', false)")
        conn.execute(
            "INSERT INTO onboarding_attempts (tenant_id, email) VALUES (%s, 'a@x'), (%s, 'b@x')",
            (plain_app.tenant_a, plain_app.tenant_b),
        )
        conn.commit()
        with acting_as(conn, "authenticated", jwt_claims=claims(plain_app.editor)):
            rows = conn.execute("SELECT tenant_id FROM onboarding_attempts").fetchall()
            assert [r["tenant_id"] for r in rows] == [plain_app.tenant_a]
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            with acting_as(conn, "authenticated", jwt_claims=claims(plain_app.editor)):
                conn.execute(
                    "INSERT INTO onboarding_attempts (tenant_id, email) VALUES (%s, 'c@x')",
                    (plain_app.tenant_b,),
                )
        # A stranger with no membership sees nothing, even though the table was the kit's.
        with acting_as(conn, "authenticated", jwt_claims=claims(uuid.uuid4())):
            assert (
                conn.execute("SELECT count(*) AS n FROM onboarding_attempts").fetchone()["n"] == 0
            )


def test_malformed_tenant_claim_sees_nothing_and_app_paths_keep_working(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    jwt = claims(plain_app.editor, tenant_id="acme-legacy-42")
    with admin_connect(plain_app.url) as conn:
        with acting_as(conn, "authenticated", jwt_claims=jwt):
            # The kit's policies see nothing, and nothing raises.
            assert conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
            assert conn.execute("SELECT hardening.current_tenant_ids() AS t").fetchone()["t"] == []
            # A table the kit put no policy on still answers what the app's policies allow.
            rows = conn.execute("SELECT tenant_id FROM memberships").fetchall()
            assert [r["tenant_id"] for r in rows] == [plain_app.tenant_a]


def test_jwt_claims_win_over_app_tenant_id(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    jwt = claims(plain_app.editor, tenant_id=str(plain_app.tenant_a))
    with admin_connect(plain_app.url) as conn:
        with acting_as(conn, "authenticated", tenant=plain_app.tenant_b, jwt_claims=jwt):
            rows = conn.execute("SELECT hardening.current_tenant_ids() AS t").fetchone()
            assert rows["t"] == [plain_app.tenant_a]


def test_claim_resolver_path_is_configurable(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    set_claim_resolver(plain_app.url, ["org.id"])
    assert read_resolver(plain_app.url).claim_paths == ["org.id"]
    with admin_connect(plain_app.url) as conn:
        # The default paths no longer count once another is configured.
        jwt = claims(plain_app.both, tenant_id=str(plain_app.tenant_a))
        with acting_as(conn, "authenticated", jwt_claims=jwt):
            assert conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
        jwt = claims(plain_app.both, org={"id": str(plain_app.tenant_b)})
        with acting_as(conn, "authenticated", jwt_claims=jwt):
            rows = conn.execute("SELECT tenant_id FROM messages").fetchall()
            assert [r["tenant_id"] for r in rows] == [plain_app.tenant_b]


def test_membership_resolver_ignores_a_sub_that_is_not_a_uuid(app: App) -> None:
    apply_migrations(app.url, applied_by="test")
    set_membership_resolver(app.url, "memberships", "user_id", "tenant_id")
    with admin_connect(app.url) as conn:
        with acting_as(conn, "authenticated", jwt_claims=json.dumps({"sub": "service-bot"})):
            assert conn.execute("SELECT hardening.current_tenant_ids() AS t").fetchone()["t"] == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["membership", "public.nope", "user_id", "tenant_id"], "does not exist"),
        (["membership", "public.memberships", "uid", "tenant_id"], "no column 'uid'"),
        (["membership", "public.memberships", "user_id", "joined_at"], "must be"),
        (["membership", "public.memberships", "user_id", "org"], "no column 'org'"),
        (["claim", "app_metadata..tenant_id"], "dot-separated"),
    ],
)
def test_tenant_resolver_cli_refuses_bad_names(app: App, monkeypatch, args, needle) -> None:
    apply_migrations(app.url, applied_by="test")
    monkeypatch.setenv("HARDENING_DATABASE_URL", app.url)
    result = CliRunner().invoke(main, ["tenant-resolver", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert read_resolver(app.url).kind == "claim"


def test_membership_table_authenticated_cannot_read_is_refused(app: App) -> None:
    apply_migrations(app.url, applied_by="test")
    with admin_connect(app.url) as conn:
        conn.execute("REVOKE SELECT ON memberships FROM authenticated")
        conn.commit()
    with pytest.raises(ConfigError, match="GRANT SELECT ON public.memberships TO authenticated"):
        set_membership_resolver(app.url, "public.memberships", "user_id", "tenant_id")
    assert read_resolver(app.url).kind == "claim"


def test_membership_lookup_goes_through_the_apps_own_rls(app: App) -> None:
    """No definer rights: if the app's policy hides a membership row, the kit does not see it."""
    apply_migrations(app.url, applied_by="test")
    set_membership_resolver(app.url, "public.memberships", "user_id", "tenant_id")
    with admin_connect(app.url) as conn:
        with acting_as(conn, "authenticated", jwt_claims=claims(app.both)):
            ids = conn.execute("SELECT hardening.current_tenant_ids() AS t").fetchone()["t"]
            assert sorted(ids) == sorted([app.tenant_a, app.tenant_b])
        conn.execute(
            sql.SQL(
                "DROP POLICY own_memberships ON memberships; "
                "CREATE POLICY own_memberships ON memberships FOR SELECT TO authenticated "
                "USING (user_id = (SELECT auth.uid()) AND tenant_id = {})"
            ).format(sql.Literal(str(app.tenant_b)))
        )
        conn.commit()
        with acting_as(conn, "authenticated", jwt_claims=claims(app.both)):
            ids = conn.execute("SELECT hardening.current_tenant_ids() AS t").fetchone()["t"]
            assert ids == [app.tenant_b]
        with pytest.raises(errors.InsufficientPrivilege):
            with acting_as(conn, "anon", jwt_claims=claims(app.both)):
                conn.execute("SELECT hardening.membership_tenant_ids()")


def test_tenant_resolver_cli_sets_and_shows(app: App, monkeypatch) -> None:
    apply_migrations(app.url, applied_by="test")
    monkeypatch.setenv("HARDENING_DATABASE_URL", app.url)
    runner = CliRunner()
    result = runner.invoke(
        main, ["tenant-resolver", "membership", "public.memberships", "user_id", "tenant_id"]
    )
    assert result.exit_code == 0, result.output
    shown = runner.invoke(main, ["tenant-resolver"])
    assert shown.exit_code == 0 and "membership public.memberships" in shown.output
    result = runner.invoke(main, ["tenant-resolver", "claim", "app_metadata.tenant_id"])
    assert result.exit_code == 0, result.output
    assert read_resolver(app.url).claim_paths == ["app_metadata.tenant_id"]


def test_resolver_before_migrate_is_a_usage_error(empty_db_url: str) -> None:
    with pytest.raises(ConfigError, match="run hardening migrate first"):
        set_claim_resolver(empty_db_url, ["tenant_id"])


def _message_foreign_keys(url: str) -> dict[str, tuple[str, str]]:
    with admin_connect(url) as conn:
        rows = conn.execute(
            "SELECT conname, confdeltype, pg_get_constraintdef(oid) AS d FROM pg_constraint "
            "WHERE conrelid = 'public.messages'::regclass AND contype = 'f'"
        ).fetchall()
    return {r["conname"]: (r["confdeltype"], r["d"]) for r in rows}


def test_existing_foreign_keys_are_replaced_with_restrict_and_reported(app: App) -> None:
    apply_migrations(app.url, applied_by="test")
    keys = _message_foreign_keys(app.url)
    assert {rule for rule, _ in keys.values()} == {"r"}, keys
    assert "msg_development" not in keys
    # One key per column (no CASCADE twin left behind) plus the composite one.
    for column in ("unit_id", "development_id", "tenant_id"):
        assert sum(d.startswith(f"FOREIGN KEY ({column})") for _, d in keys.values()) == 1
    assert any(
        d.startswith("FOREIGN KEY (unit_id, development_id, tenant_id)") for _, d in keys.values()
    )

    replaced = {
        c.object: c.detail for c in adoption_changes(app.url) if c.action == "replaced foreign key"
    }
    assert set(replaced) == {
        "public.messages.messages_tenant_id_fkey",
        "public.messages.msg_development",
        "public.messages.messages_unit_id_fkey",
        "public.developments.developments_tenant_id_fkey",
        "public.units.units_tenant_id_fkey",
        "public.units.unit_in_development",
    }
    assert "ON DELETE SET NULL" in replaced["public.messages.msg_development"]
    assert "ON DELETE CASCADE" in replaced["public.messages.messages_unit_id_fkey"]

    # The tenant chain above messages too: the app's CASCADE keys now RESTRICT, names kept.
    with admin_connect(app.url) as conn:
        chain = {
            (r["t"], r["conname"]): r["confdeltype"]
            for r in conn.execute(
                "SELECT conrelid::regclass::text AS t, conname, confdeltype FROM pg_constraint "
                "WHERE contype = 'f' AND conrelid IN ('public.units'::regclass, "
                "'public.developments'::regclass) AND cardinality(conkey) = 1"
            )
        }
    assert chain == {
        ("developments", "developments_tenant_id_fkey"): "r",
        ("units", "units_tenant_id_fkey"): "r",
        ("units", "unit_in_development"): "r",
    }
    # Everything but the delete rule is kept.
    rebuilt = {
        c.object: c.detail.split("; now ")[1]
        for c in adoption_changes(app.url)
        if c.action == "replaced foreign key" and c.migration.startswith("011")
    }
    assert rebuilt == {
        "public.developments.developments_tenant_id_fkey": "FOREIGN KEY (tenant_id) REFERENCES "
        "tenants(id) ON UPDATE CASCADE ON DELETE RESTRICT",
        "public.units.units_tenant_id_fkey": "FOREIGN KEY (tenant_id) REFERENCES tenants(id) "
        "ON DELETE RESTRICT DEFERRABLE INITIALLY DEFERRED",
        "public.units.unit_in_development": "FOREIGN KEY (development_id) REFERENCES "
        "developments(id) ON DELETE RESTRICT",
    }
    # Deleting a unit that still has messages is refused, not cascaded.
    with admin_connect(app.url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:fixture', false)")
        with pytest.raises(FK_REFUSED):
            conn.execute("DELETE FROM units WHERE id = %s", (app.unit_a,))
        conn.rollback()
        # The kit's index on messages.development_id exists although the app held its name.
        indexed = conn.execute(
            "SELECT count(*) AS n FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = 'public.messages'::regclass AND a.attname = 'development_id'"
        ).fetchone()["n"]
        assert indexed == 1


def test_kit_names_taken_by_the_app_are_left_alone(app: App) -> None:
    apply_migrations(app.url, applied_by="test")
    with admin_connect(app.url) as conn:
        taken = conn.execute(
            "SELECT indrelid::regclass::text AS t FROM pg_index "
            "WHERE indexrelid = 'public.units_id_development_tenant_key'::regclass"
        ).fetchone()
        assert taken == {"t": "memberships"}
        unique = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'public.units'::regclass "
            "AND contype = 'u' AND pg_get_constraintdef(oid) = "
            "'UNIQUE (id, development_id, tenant_id)'"
        ).fetchall()
        assert [r["conname"] for r in unique] == ["units_id_development_tenant_key_2"]


def test_an_adopted_tenant_column_that_is_not_a_uuid_is_refused_by_name(empty_db_url: str) -> None:
    build_app(empty_db_url)
    with admin_connect(empty_db_url) as conn:
        conn.execute(
            "ALTER TABLE messages DROP CONSTRAINT messages_tenant_id_fkey; "
            "DROP POLICY members_read ON messages; DROP POLICY editors_insert ON messages; "
            "DROP POLICY editors_update ON messages; DROP POLICY editors_delete ON messages; "
            "ALTER TABLE messages ALTER COLUMN tenant_id TYPE text"
        )
        conn.commit()
    with pytest.raises(CheckFailed) as failed:
        apply_migrations(empty_db_url, applied_by="test")
    text = str(failed.value)
    assert "001_core_schema.sql" in text and "public.messages.tenant_id is text, not uuid" in text
    assert "ALTER COLUMN" in text  # the fix
    with admin_connect(empty_db_url) as conn:
        # Refused before anything changed.
        assert conn.execute("SELECT to_regclass('public.onboarding_attempts') AS r").fetchone() == {
            "r": None
        }


def test_migrate_prints_what_it_changed_on_adopted_objects(app: App, monkeypatch) -> None:
    monkeypatch.setenv("HARDENING_DATABASE_URL", app.url)
    result = CliRunner().invoke(main, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "public.messages.msg_development: replaced foreign key" in result.output
    assert "public.messages: adopted table" in result.output
    # A second run applies nothing and repeats nothing.
    again = CliRunner().invoke(main, ["migrate"])
    assert again.exit_code == 0 and "changed" not in again.output, again.output


def _misplace_a_unit(app: App) -> uuid.UUID:
    """A unit of tenant A inside tenant B's development, with a message that agrees with it."""
    unit = uuid.uuid4()
    with admin_connect(app.url) as conn:
        conn.execute(
            "INSERT INTO units (id, tenant_id, development_id, label) VALUES (%s, %s, %s, 'X')",
            (unit, app.tenant_a, app.development_b),
        )
        conn.execute(
            "INSERT INTO messages (id, tenant_id, development_id, unit_id, author_id, sender, "
            "body) VALUES (%s, %s, %s, %s, %s, 's', 'misplaced')",
            (uuid.uuid4(), app.tenant_a, app.development_b, unit, app.editor),
        )
        conn.commit()
    return unit


def test_preflight_reports_units_in_another_tenants_development(plain_app: App) -> None:
    unit = _misplace_a_unit(plain_app)
    with pytest.raises(CheckFailed) as failed:
        apply_migrations(plain_app.url, applied_by="test")
    text = str(failed.value)
    assert "1 misplaced unit(s) whose development belongs to another tenant" in text
    assert str(unit) in text
    assert "1 message(s) in a unit whose development belongs to another tenant" in text


def test_unit_development_tenant_consistency_is_enforced_on_adopted_tables(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    with admin_connect(plain_app.url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:fixture', false)")
        with pytest.raises(FK_REFUSED):
            conn.execute(
                "INSERT INTO units (id, tenant_id, development_id, label) VALUES (%s, %s, %s, 'X')",
                (uuid.uuid4(), plain_app.tenant_a, plain_app.development_b),
            )
        conn.rollback()
        convalidated = conn.execute(
            "SELECT bool_and(convalidated) AS v, count(*) AS n FROM pg_constraint "
            "WHERE conrelid = 'public.units'::regclass AND contype = 'f' "
            "AND confrelid = 'public.developments'::regclass AND cardinality(conkey) = 2"
        ).fetchone()
        assert convalidated == {"v": True, "n": 1}


def test_kit_database_keeps_one_unit_development_key(db_url: str) -> None:
    """On a database the kit created, 011 finds 001's key and adds no second one."""
    with admin_connect(db_url) as conn:
        n = conn.execute(
            "SELECT count(*) AS n FROM pg_constraint WHERE conrelid = 'public.units'::regclass "
            "AND confrelid = 'public.developments'::regclass"
        ).fetchone()["n"]
        assert n == 1
        assert conn.execute("SELECT count(*) AS n FROM hardening.adoption_log").fetchone()["n"] == 0


def test_writes_to_a_text_tenant_table_keep_working_and_are_audited(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    jwt = claims(plain_app.editor, legacy_tenant="acme-legacy-42")
    with admin_connect(plain_app.url) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('role', 'authenticated', true)")
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (jwt,))
            conn.execute(
                "INSERT INTO legacy_notes (tenant_id, note) VALUES ('acme-legacy-42', 'new')"
            )
            assert conn.execute("UPDATE legacy_notes SET note = note || '!'").rowcount == 2
            assert conn.execute("DELETE FROM legacy_notes WHERE note = 'new!'").rowcount == 1
        events = conn.execute(
            "SELECT operation, tenant_id, coalesce(after, before) ->> 'tenant_id' AS t "
            "FROM audit_events WHERE table_name = 'legacy_notes' ORDER BY id"
        ).fetchall()
    assert [e["operation"] for e in events] == ["INSERT", "UPDATE", "UPDATE", "DELETE"]
    assert {e["t"] for e in events} == {"acme-legacy-42"}
    assert {e["tenant_id"] for e in events} == {None}
    # A text tenant id that reads as a uuid still lands in audit_events.tenant_id.
    with admin_connect(plain_app.url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:fixture', false)")
        conn.execute(
            "INSERT INTO legacy_notes (tenant_id, note) VALUES (%s, 'migrated')",
            (str(plain_app.tenant_a),),
        )
        last = conn.execute(
            "SELECT tenant_id FROM audit_events WHERE table_name = 'legacy_notes' "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert last == {"tenant_id": plain_app.tenant_a}


def _capture_line(url: str) -> CheckLine:
    with admin_connect(url, autocommit=True) as conn:
        (line,) = run_checks(conn, names=["audit_capture_triggers"])
    return line


def test_status_capture_line_is_red_while_text_tenant_writes_fail(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    assert _capture_line(plain_app.url).passed
    with admin_connect(plain_app.url) as conn:
        # What 002 alone installs: the uuid cast on a text column.
        conn.execute(
            "DROP TRIGGER legacy_notes_audit_insert ON legacy_notes; "
            "CREATE TRIGGER legacy_notes_audit_insert AFTER INSERT ON legacy_notes "
            "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            "EXECUTE FUNCTION hardening.audit_capture_insert('tenant_id'); "
            "ALTER TABLE legacy_notes ENABLE ALWAYS TRIGGER legacy_notes_audit_insert"
        )
        conn.commit()
        with pytest.raises(errors.InvalidTextRepresentation):
            conn.execute(
                "INSERT INTO legacy_notes (tenant_id, note) VALUES ('acme-legacy-42', 'x')"
            )
        conn.rollback()
    line = _capture_line(plain_app.url)
    assert not line.passed
    assert "legacy_notes" in line.detail and "casts tenant_id (text) to uuid" in line.detail


def test_status_names_a_permissive_kit_policy_on_an_adopted_table(plain_app: App) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    with admin_connect(plain_app.url, autocommit=True) as conn:
        (line,) = run_checks(conn, names=["adopted_tables_policies_narrow"])
        assert line.passed, line.detail
        conn.execute(
            "DROP POLICY messages_tenant_isolation ON messages; "
            "CREATE POLICY messages_tenant_isolation ON messages FOR ALL TO authenticated "
            "USING (tenant_id = (SELECT hardening.current_tenant_id()))"
        )
        (line,) = run_checks(conn, names=["adopted_tables_policies_narrow"])
    assert not line.passed
    assert "messages: messages_tenant_isolation is permissive" in line.detail


def test_adopted_table_without_rls_gets_a_policy_that_narrows_every_row_to_the_tenant(
    plain_app: App,
) -> None:
    """RLS off meant every row was open to the app's grants; the kit's policy (the only one, so
    permissive) narrows that to the tenant's rows instead of closing the table."""
    with admin_connect(plain_app.url) as conn:
        conn.execute("ALTER TABLE developments DISABLE ROW LEVEL SECURITY")
        conn.commit()
        with acting_as(conn, "authenticated", jwt_claims=claims(plain_app.editor)):
            assert conn.execute("SELECT count(*) AS n FROM developments").fetchone()["n"] == 2
    apply_migrations(plain_app.url, applied_by="test")
    jwt = claims(plain_app.editor, tenant_id=str(plain_app.tenant_a))
    with admin_connect(plain_app.url) as conn:
        policy = conn.execute(
            "SELECT p.polpermissive FROM pg_policy p JOIN hardening.managed_tables m "
            "ON p.polname = m.tenant_policy WHERE m.table_name = 'developments' "
            "AND p.polrelid = 'public.developments'::regclass"
        ).fetchone()
        assert policy == {"polpermissive": True}
        with acting_as(conn, "authenticated", jwt_claims=jwt):
            rows = conn.execute("SELECT tenant_id FROM developments").fetchall()
            assert [r["tenant_id"] for r in rows] == [plain_app.tenant_a]
        # Still no write the app's grants did not allow.
        with pytest.raises(errors.InsufficientPrivilege):
            with acting_as(conn, "authenticated", jwt_claims=jwt):
                conn.execute("DELETE FROM developments")


def test_policies_follow_the_stored_resolver_after_a_restore_loads_it(plain_app: App) -> None:
    """A restore loads the resolver row onto policies fresh from the migrations (one-tenant
    form); the drill then calls sync_tenant_policies, which must bring back the set form."""
    apply_migrations(plain_app.url, applied_by="test")
    set_membership_resolver(plain_app.url, "public.memberships", "user_id", "tenant_id")

    def tenants_seen(conn) -> list[uuid.UUID]:
        with acting_as(conn, "authenticated", jwt_claims=claims(plain_app.both)):
            rows = conn.execute("SELECT DISTINCT tenant_id FROM messages").fetchall()
        return sorted(r["tenant_id"] for r in rows)

    both = sorted([plain_app.tenant_a, plain_app.tenant_b])
    with admin_connect(plain_app.url) as conn:
        assert tenants_seen(conn) == both
        conn.execute("SELECT hardening.use_tenant_policies(false)")  # what migrations leave
        assert tenants_seen(conn) == []
        sync_tenant_policies(conn)
        assert tenants_seen(conn) == both


def test_a_table_under_the_kits_own_tenant_policy_cannot_be_the_membership_table(
    plain_app: App,
) -> None:
    apply_migrations(plain_app.url, applied_by="test")
    with pytest.raises(ConfigError, match="tenant policy"):
        set_membership_resolver(plain_app.url, "public.onboarding_attempts", "email", "tenant_id")


def test_status_after_adoption_is_red_only_on_the_apps_own_finding(app: App) -> None:
    apply_migrations(app.url, applied_by="test")
    report = run_status_check(app.url)
    # Every kit line is green but one: the app's rows predate the kit, so 012 started the
    # service-role rule in report mode, red until the team switches to enforce. The other red
    # line is the app's own per-row policy call.
    assert sorted((line.name, "legacy_notes" in line.detail) for line in report.red) == [
        ("auth_rls_initplan", True),
        ("service_role_rule_enforced", False),
    ]
