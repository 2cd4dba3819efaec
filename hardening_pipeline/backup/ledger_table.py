"""Where the key ledger's database copy lives, found by what the table is, not by its name.

The copy is ``hardening.tenant_key_ledger`` (migration 021). Its owner, or a superuser, can
rename it, move it to another schema or copy it; a backup that looked for the ledger by name
alone would then carry every wrapped tenant key into the shared object, which is locked and
could never be erased again. So the ledger is recognised by its exact columns (a rename, ``SET
SCHEMA`` and ``CREATE TABLE ... AS`` all keep them), wherever it is: a backup never exports
such a table, and refuses to run while one is anywhere but at its place. A table dropped after
021 was applied is a lost copy, never "021 not applied".
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from hardening_pipeline.backup.tenant_keys import LEDGER_TABLE, RECOVER_COMMAND
from hardening_pipeline.db.sql_statements import split_statements
from hardening_pipeline.sql_files import MIGRATIONS_DIR

LEDGER_MIGRATION = "021_tenant_key_ledger.sql"
LEDGER_HOME = ("hardening", "tenant_key_ledger")
# The table's columns as 021 creates them, sorted by name, as format_type() spells the types.
LEDGER_COLUMNS = (
    "document text",
    "id smallint",
    "version bigint",
    "written_at timestamp with time zone",
)

# A session's temporary copy is left out: no backup reads it, and it goes with its session.
_LEDGER_SHAPED = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (SELECT array_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
                        ORDER BY a.attname)
       FROM pg_catalog.pg_attribute a
       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) = %s::text[]
ORDER BY 1, 2
"""


def ledger_shaped_tables(conn: psycopg.Connection) -> set[tuple[str, str]]:
    """Every table, in any schema and under any name, with exactly the ledger's columns."""
    cur = conn.cursor(row_factory=tuple_row)
    return {(s, t) for s, t in cur.execute(_LEDGER_SHAPED, (list(LEDGER_COLUMNS),)).fetchall()}


def ledger_migrated(conn: psycopg.Connection) -> bool:
    """Whether the migration record says 021 (or a later migration) was applied."""
    cur = conn.cursor(row_factory=tuple_row)
    (recorded,) = cur.execute(
        "SELECT pg_catalog.to_regclass('hardening.schema_migrations') IS NOT NULL"
    ).fetchone()
    if not recorded:
        return False
    (applied,) = cur.execute(
        "SELECT EXISTS (SELECT FROM hardening.schema_migrations WHERE filename >= %s)",
        (LEDGER_MIGRATION[:3],),
    ).fetchone()
    return bool(applied)


def _qualified(table: tuple[str, str]) -> str:
    """Quoted for SQL a user pastes: any name, however spelt, stays that one table."""
    return sql.Identifier(*table).as_string(None)


@dataclass(frozen=True)
class LedgerPlacement:
    """Where the database's copy is, and where copies of it are that should not be."""

    migrated: bool
    at_home: bool
    elsewhere: tuple[tuple[str, str], ...]

    @property
    def lost(self) -> bool:
        """021 was applied, the table is gone, and no table elsewhere holds it."""
        return self.migrated and not self.at_home and not self.elsewhere

    @property
    def problem(self) -> str | None:
        if self.elsewhere:
            names = ", ".join(".".join(t) for t in self.elsewhere)
            where = (
                f"besides {LEDGER_TABLE} itself"
                if self.at_home
                else f"which belongs at {LEDGER_TABLE} and is not there"
            )
            return (
                f"{names} has exactly the columns of the tenant key ledger's table ({where}), so "
                "it may hold every wrapped tenant key and a backup would lock them into its "
                "shared object"
            )
        if self.lost:
            return (
                f"the table {LEDGER_TABLE} is gone although migration {LEDGER_MIGRATION} is "
                "applied: the database's copy of the tenant key ledger is lost"
            )
        return None

    @property
    def fix(self) -> str:
        if self.elsewhere and not self.at_home and len(self.elsewhere) == 1:
            schema, name = self.elsewhere[0]
            steps = []
            if schema != "hardening":
                steps.append(f"ALTER TABLE {_qualified((schema, name))} SET SCHEMA hardening;")
            if name != "tenant_key_ledger":
                moved = _qualified(("hardening", name))
                steps.append(f"ALTER TABLE {moved} RENAME TO tenant_key_ledger;")
            return f"move it back with {' '.join(steps)} then run `{RECOVER_COMMAND}`."
        if self.elsewhere:
            return (
                "check what each table named holds; drop the copies (DROP TABLE <name>;) so that "
                f"only {LEDGER_TABLE} remains, then run `{RECOVER_COMMAND}`."
            )
        return (
            f"run `{RECOVER_COMMAND}`: it creates the table again and writes the ledger into it "
            "from the store's copy; then find out who dropped it."
        )


def find_ledger_placement(conn: psycopg.Connection) -> LedgerPlacement:
    shaped = ledger_shaped_tables(conn)
    at_home = bool(
        conn.cursor(row_factory=tuple_row)
        .execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,))
        .fetchone()[0]
    )
    elsewhere = tuple(sorted(shaped - {LEDGER_HOME}))
    return LedgerPlacement(ledger_migrated(conn), at_home, elsewhere)


def create_ledger_table(conn: psycopg.Connection) -> None:
    """Create the table again as 021 defines it, closed to every role but its owner (committed).

    The statement comes from the shipped migration file, so the two cannot drift apart.
    """
    text = (MIGRATIONS_DIR / LEDGER_MIGRATION).read_text(encoding="utf-8")
    create = next(
        s.text for s in split_statements(text) if s.text.lstrip().startswith("CREATE TABLE")
    )
    cur = conn.cursor(row_factory=tuple_row)
    api_roles = [
        r
        for (r,) in cur.execute(
            "SELECT rolname FROM pg_catalog.pg_roles "
            "WHERE rolname IN ('anon', 'authenticated', 'service_role') ORDER BY 1"
        ).fetchall()
    ]
    with conn.transaction():
        cur.execute(create)
        cur.execute(
            sql.SQL("REVOKE ALL ON {} FROM {}").format(
                sql.Identifier(*LEDGER_HOME),
                sql.SQL(", ").join([sql.SQL("PUBLIC"), *map(sql.Identifier, api_roles)]),
            )
        )
    conn.commit()
