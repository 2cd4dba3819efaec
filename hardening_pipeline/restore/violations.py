"""Naming the rows that break a constraint, for the drill's red report.

A restore keeps a foreign key its rows break ``NOT VALID`` (a unique key stays out) and goes on;
what the report then shows is the constraint, its table and the first rows that break it, each
named by its primary key (or its ``ctid`` when the table has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

_MAX_LISTED_ROWS = 20


@dataclass
class ConstraintViolation:
    """A constraint the restored rows break: kept NOT VALID (or left out), reported red."""

    constraint: str
    table: str
    rows: list[str]
    detail: str

    def describe(self) -> str:
        listed = ", ".join(self.rows[:_MAX_LISTED_ROWS]) or self.detail
        return f"{self.table} breaks {self.constraint}: {listed}"


def _row_label(conn: psycopg.Connection, table: str) -> sql.Composable:
    """How to name a row of ``table`` in a report: its primary key, else its ctid."""
    cols = conn.cursor(row_factory=tuple_row).execute(
        "SELECT a.attname FROM pg_catalog.pg_index i "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = pg_catalog.to_regclass(%s) AND i.indisprimary ORDER BY a.attnum",
        (_quoted(table),),
    )
    names = [r[0] for r in cols.fetchall()]
    if not names:
        return sql.SQL("'ctid=' || c.ctid::text")
    parts = [
        sql.SQL("{} || '=' || coalesce(c.{}::text, 'NULL')").format(
            sql.Literal(name), sql.Identifier(name)
        )
        for name in names
    ]
    return sql.SQL(" || ',' || ").join(parts)


def _quoted(table: str) -> str:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name).as_string(None)


def foreign_key_rows(conn: psycopg.Connection, table: str, constraint: str) -> list[str]:
    """The rows of ``table`` whose key has no parent under foreign key ``constraint``."""
    row = (
        conn.cursor(row_factory=tuple_row)
        .execute(
            "SELECT k.confrelid::regclass::text, "
            "ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, o) "
            "  JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n "
            "  ORDER BY u.o), "
            "ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, o) "
            "  JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n "
            "  ORDER BY u.o) "
            "FROM pg_catalog.pg_constraint k "
            "WHERE k.conrelid = pg_catalog.to_regclass(%s) AND k.conname = %s",
            (_quoted(table), constraint),
        )
        .fetchone()
    )
    if row is None:
        return []
    parent, child_cols, parent_cols = row
    matches = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc))
        for cc, pc in zip(child_cols, parent_cols, strict=True)
    )
    present = sql.SQL(" AND ").join(
        sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc)) for cc in child_cols
    )
    schema, _, name = table.partition(".")
    query = sql.SQL(
        "SELECT {} FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {}) LIMIT {}"
    ).format(
        _row_label(conn, table),
        sql.Identifier(schema, name),
        present,
        sql.SQL(parent),  # regclass text: already quoted by Postgres
        matches,
        sql.Literal(_MAX_LISTED_ROWS + 1),
    )
    return [str(r[0]) for r in conn.cursor(row_factory=tuple_row).execute(query).fetchall()]
