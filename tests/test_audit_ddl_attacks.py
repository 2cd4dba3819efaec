"""DDL that changes an audited table without naming it is on the record too (016).

Each case is something the owner of ``messages`` (a non-superuser with CREATE on the database,
as an app's migration role has) can do to change tenant rows, or what reads of them return,
through another object: a type, a function, a child table, a cascade, a rename before a drop.
"""

from __future__ import annotations

import pytest
from psycopg import errors, sql

from hardening_pipeline.hardening.seals import seal_audit_log, verify_audit_seals
from tests.support.db import acting_as, ensure_nologin_role, insert_tenant

OWNER = "ddl_reach_table_owner"


@pytest.fixture
def owner(admin):
    """A NOLOGIN role that owns messages and may create schemas and types."""
    ensure_nologin_role(admin, OWNER)
    role = sql.Identifier(OWNER)
    admin.execute(sql.SQL("ALTER TABLE messages OWNER TO {}").format(role))
    admin.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(admin.info.dbname), role)
    )
    admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role))
    admin.commit()
    insert_tenant(admin, "alpha")
    return OWNER


def ddl_after(admin, statements: list[str]) -> list[dict]:
    """Run the statements as the owner in one rolled-back transaction; the DDL rows they left
    behind, beyond those of the first statement (the setup)."""
    with acting_as(admin, OWNER):
        admin.execute(statements[0])
        admin.execute("RESET ROLE")
        start = admin.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
        admin.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER)))
        for statement in statements[1:]:
            admin.execute(statement)
        admin.execute("RESET ROLE")
        return admin.execute(
            "SELECT table_name, db_role, after FROM audit_events "
            "WHERE operation = 'DDL' AND id > %s ORDER BY id",
            (start,),
        ).fetchall()


ENUM_COLUMN = (
    "CREATE TYPE public.mood AS ENUM ('calm', 'angry'); "
    "ALTER TABLE messages ADD COLUMN mood public.mood DEFAULT 'calm'"
)


@pytest.mark.parametrize(
    ("statements", "table", "tag", "objects"),
    [
        pytest.param(
            [ENUM_COLUMN, "ALTER TYPE public.mood RENAME VALUE 'calm' TO 'angry_now'"],
            "messages",
            "ALTER TYPE",
            ["public.mood"],
            id="enum-value-renamed-under-every-row",
        ),
        pytest.param(
            [ENUM_COLUMN, "DROP TYPE public.mood CASCADE"],
            "messages",
            "DROP TYPE",
            ["table column public.messages.mood"],
            id="column-dropped-by-cascade",
        ),
        pytest.param(
            [
                "CREATE TYPE public.mood AS ENUM ('calm'); "
                "ALTER TABLE messages ADD COLUMN moods public.mood[]",
                "ALTER TYPE public.mood RENAME VALUE 'calm' TO 'angry'",
            ],
            "messages",
            "ALTER TYPE",
            ["public.mood"],
            id="enum-array-column",
        ),
        pytest.param(
            [
                "CREATE DOMAIN public.short_text AS text; "
                "ALTER TABLE messages ADD COLUMN note public.short_text",
                "ALTER DOMAIN public.short_text SET DEFAULT 'forged'",
            ],
            "messages",
            "ALTER DOMAIN",
            ["public.short_text"],
            id="domain-of-a-column",
        ),
        pytest.param(
            ["CREATE SCHEMA shadow", "CREATE TABLE shadow.extra () INHERITS (public.messages)"],
            ("messages", "shadow.extra"),
            "CREATE TABLE",
            ["shadow.extra"],
            id="uncaptured-child-table-created",
        ),
        pytest.param(
            [
                "CREATE SCHEMA shadow; CREATE TABLE shadow.extra (LIKE public.messages)",
                "ALTER TABLE shadow.extra INHERIT public.messages",
            ],
            ("messages", "shadow.extra"),
            "ALTER TABLE",
            ["shadow.extra"],
            id="uncaptured-child-table-attached",
        ),
        pytest.param(
            [
                "CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql "
                "AS 'BEGIN RETURN NEW; END'; CREATE TRIGGER stamp BEFORE UPDATE ON messages "
                "FOR EACH ROW EXECUTE FUNCTION public.stamp()",
                "CREATE OR REPLACE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql "
                "AS 'BEGIN NEW.body := ''forged''; RETURN NEW; END'",
            ],
            "messages",
            "CREATE FUNCTION",
            ["public.stamp()"],
            id="trigger-function-replaced",
        ),
        pytest.param(
            [
                "CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql "
                "AS 'BEGIN RETURN NEW; END'; CREATE TRIGGER stamp BEFORE UPDATE ON messages "
                "FOR EACH ROW EXECUTE FUNCTION public.stamp()",
                "DROP FUNCTION public.stamp() CASCADE",
            ],
            "messages",
            "DROP FUNCTION",
            ["trigger stamp on public.messages"],
            id="trigger-dropped-by-cascade",
        ),
    ],
)
def test_a_change_through_another_object_is_recorded(admin, owner, statements, table, tag, objects):
    rows = ddl_after(admin, statements)
    # A child that inherits tenant_id is a tenant table itself (019), with its own record.
    tables = (table,) if isinstance(table, str) else table
    assert [(r["table_name"], r["db_role"]) for r in rows] == [(t, owner) for t in tables], rows
    after = rows[0]["after"]
    assert after["command_tags"] == [tag]
    assert after["objects"] == objects
    assert after["statement"] == statements[-1]


@pytest.mark.parametrize(
    ("statements", "table"),
    [
        pytest.param(
            ["ALTER TABLE messages RENAME TO old_messages", "DROP TABLE old_messages CASCADE"],
            "old_messages",
            id="renamed-then-dropped",
        ),
        pytest.param(
            [
                "CREATE SCHEMA shadow; ALTER TABLE messages SET SCHEMA shadow",
                "DROP TABLE shadow.messages CASCADE",
            ],
            "shadow.messages",
            id="moved-then-dropped",
        ),
        pytest.param(
            [
                "CREATE SCHEMA shadow; ALTER TABLE messages SET SCHEMA shadow",
                "DROP SCHEMA shadow CASCADE",
            ],
            "shadow.messages",
            id="moved-then-dropped-with-its-schema",
        ),
    ],
)
def test_a_tenant_table_dropped_under_another_name_is_recorded(admin, owner, statements, table):
    rows = ddl_after(admin, statements)
    assert [r["table_name"] for r in rows] == [table], rows
    assert f"table {table if '.' in table else 'public.' + table}" in rows[0]["after"]["objects"]
    assert rows[0]["after"]["event"] == "sql_drop"


def test_dropping_a_table_in_a_schema_the_audit_owner_cannot_use_is_not_blocked(admin, owner):
    """The drop record's lookup must not need USAGE on the dropped table's schema."""
    rows = ddl_after(
        admin,
        ["CREATE SCHEMA private; CREATE TABLE private.notes (id int)", "DROP TABLE private.notes"],
    )
    assert rows == []


def test_foreign_keys_pointing_at_a_table_do_not_count_as_touched(admin):
    """A parent's DDL is one row: the children's foreign keys depend on it but did not change."""
    with acting_as(admin, None):
        admin.execute("RESET ROLE")
        start = admin.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
        admin.execute("ALTER TABLE tenants ALTER COLUMN id SET STATISTICS 200")
        admin.execute("CREATE TABLE public.scratch_child (id uuid REFERENCES public.tenants (id))")
        admin.execute("DROP TABLE public.scratch_child")
        rows = admin.execute(
            "SELECT table_name FROM audit_events WHERE operation = 'DDL' AND id > %s", (start,)
        ).fetchall()
    assert [r["table_name"] for r in rows] == ["tenants"]


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER EVENT TRIGGER hardening_record_ddl DISABLE",
        "ALTER EVENT TRIGGER hardening_record_ddl_drop ENABLE REPLICA",
        "DROP EVENT TRIGGER hardening_record_ddl",
        "ALTER EVENT TRIGGER hardening_record_ddl OWNER TO ddl_reach_table_owner",
        "CREATE OR REPLACE FUNCTION hardening.record_ddl() RETURNS event_trigger "
        "LANGUAGE plpgsql AS 'BEGIN END'",
        "ALTER FUNCTION hardening.record_ddl() RENAME TO record_nothing",
        "ALTER FUNCTION hardening.ddl_audited_table(oid) SET search_path = public",
        "SELECT hardening.install_ddl_recording()",
        "CREATE FUNCTION hardening.ddl_object_table(catalog regclass, object oid) RETURNS oid "
        "LANGUAGE sql AS 'SELECT NULL::oid'",
        "COMMENT ON FUNCTION hardening.record_ddl() IS 'not installed: faked'",
        "CREATE EVENT TRIGGER a_first ON ddl_command_end EXECUTE FUNCTION hardening.record_ddl()",
    ],
)
@pytest.mark.parametrize("as_member", [False, True], ids=["table-owner", "member-of-owner"])
def test_the_table_owner_cannot_switch_recording_off_or_replace_it(
    admin, owner, statement, as_member
):
    role = owner
    if as_member:
        role = "ddl_reach_owner_member"
        ensure_nologin_role(admin, role, member_of=owner)
        admin.commit()
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, role):
            admin.execute(statement)


def test_ddl_done_inside_a_function_names_the_table_and_the_trigger_state(admin, owner):
    """The statement is only the call; the record still says which table and what it left."""
    rows = ddl_after(
        admin,
        [
            "CREATE FUNCTION public.tidy() RETURNS void LANGUAGE plpgsql AS "
            "'BEGIN ALTER TABLE public.messages DISABLE TRIGGER USER; END'",
            "SELECT public.tidy()",
        ],
    )
    assert [r["table_name"] for r in rows] == ["messages"], rows
    after = rows[0]["after"]
    assert after["statement"] == "SELECT public.tidy()"
    assert after["command_tags"] == ["ALTER TABLE"]


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param(
            [
                "CREATE FUNCTION public.tidy() RETURNS void LANGUAGE plpgsql AS "
                "'BEGIN ALTER TABLE public.messages DISABLE TRIGGER USER; "
                "ALTER TABLE public.messages NO FORCE ROW LEVEL SECURITY; END'",
                "SELECT public.tidy()",
            ],
            id="inside-a-function",
        ),
        pytest.param(
            [
                "SELECT 1",
                "/* " + "routine maintenance " * 250 + "*/ ALTER TABLE messages "
                "DISABLE TRIGGER USER, NO FORCE ROW LEVEL SECURITY",
            ],
            id="pushed-past-the-cut",
        ),
        pytest.param(
            [
                "SELECT 1",
                "/* ALTER TABLE messages ENABLE ALWAYS TRIGGER messages_audit_delete */ "
                "ALTER TABLE messages DISABLE TRIGGER USER, NO FORCE ROW LEVEL SECURITY",
            ],
            id="comment-says-otherwise",
        ),
    ],
)
def test_the_record_says_what_the_statement_left_whatever_its_text(admin, owner, statements):
    rows = ddl_after(admin, statements)
    assert {(r["table_name"], *r["after"]["command_tags"]) for r in rows} == {
        ("messages", "ALTER TABLE")
    }, rows
    after = rows[-1]["after"]  # the function's two statements leave a row each
    assert set(after["triggers_off"]) >= {
        "messages_audit_guard",
        "messages_audit_delete",
        "messages_audit_insert",
    }
    assert after["row_security"] == "enabled"


def test_a_healthy_table_records_no_trigger_off_and_forced_row_security(admin, owner):
    rows = ddl_after(admin, ["SELECT 1", "COMMENT ON TABLE messages IS 'tenant messages'"])
    assert [(r["after"]["triggers_off"], r["after"]["row_security"]) for r in rows] == [
        ([], "forced")
    ]


@pytest.mark.parametrize(
    "tampering",
    [
        "UPDATE audit_events SET after = jsonb_set(after, '{statement}', "
        "'\"COMMENT ON TABLE messages IS ''x''\"') WHERE id = %s",
        "UPDATE audit_events SET after = jsonb_set(after, '{triggers_off}', '[]') WHERE id = %s",
        "DELETE FROM audit_events WHERE id = %s",
    ],
    ids=["statement-rewritten", "trigger-state-rewritten", "deleted"],
)
def test_a_sealed_ddl_row_cannot_be_rewritten_or_removed_unseen(db_url, admin, owner, tampering):
    """A superuser hiding the owner's switch-off after the seal: the seal names the row."""
    admin.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
    admin.execute("ALTER TABLE messages DISABLE TRIGGER USER")
    admin.execute("RESET ROLE")
    [target] = (
        admin.execute(
            "SELECT id FROM audit_events WHERE operation = 'DDL' ORDER BY id DESC LIMIT 1"
        )
        .fetchone()
        .values()
    )
    admin.commit()
    assert seal_audit_log(db_url).seals and verify_audit_seals(db_url).passed
    with admin.transaction():
        admin.execute("ALTER EVENT TRIGGER hardening_record_ddl DISABLE")  # no trail of this
        admin.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        admin.execute(tampering, (target,))
        admin.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")
        admin.execute("ALTER EVENT TRIGGER hardening_record_ddl ENABLE ALWAYS")
    result = verify_audit_seals(db_url)
    assert not result.passed and result.first_bad_id == target, result.detail


def test_replacing_the_tenant_resolver_is_recorded_on_every_table_whose_policy_calls_it(admin):
    """The migration role owns hardening.current_tenant_id(); a new body changes RLS for every
    tenant table at once without touching any of them."""
    definition = admin.execute(
        "SELECT pg_get_functiondef('hardening.current_tenant_id()'::regprocedure) AS d"
    ).fetchone()["d"]
    with acting_as(admin, None):
        start = admin.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
        admin.execute(definition)
        tables = {
            r["table_name"]
            for r in admin.execute(
                "SELECT table_name FROM audit_events WHERE operation = 'DDL' AND id > %s",
                (start,),
            ).fetchall()
        }
        policed = {
            r["relname"]
            for r in admin.execute(
                "SELECT DISTINCT c.relname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid "
                "JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid "
                "WHERE d.refobjid = 'hardening.current_tenant_id()'::regprocedure"
            ).fetchall()
        }
    assert "messages" in policed and tables == policed
