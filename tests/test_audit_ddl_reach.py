"""DDL that changes an audited table without naming it is on the record too (017).

Each case is something the owner of ``messages`` (a non-superuser with CREATE on the database,
as an app's migration role has) can do to change tenant rows, or what reads of them return,
through another object: a type, a function, a child table, a cascade, a rename before a drop.
"""

from __future__ import annotations

import pytest
from psycopg import sql

from tests.support.db import acting_as, insert_tenant

OWNER = "ddl_reach_table_owner"


@pytest.fixture
def owner(admin):
    """A NOLOGIN role that owns messages and may create schemas and types."""
    admin.execute(
        sql.SQL(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) THEN "
            "CREATE ROLE {} NOLOGIN; END IF; END $$"
        ).format(sql.Literal(OWNER), sql.Identifier(OWNER))
    )
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
            "messages",
            "CREATE TABLE",
            ["shadow.extra"],
            id="uncaptured-child-table-created",
        ),
        pytest.param(
            [
                "CREATE SCHEMA shadow; CREATE TABLE shadow.extra (LIKE public.messages)",
                "ALTER TABLE shadow.extra INHERIT public.messages",
            ],
            "messages",
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
    assert [(r["table_name"], r["db_role"]) for r in rows] == [(table, owner)], rows
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
