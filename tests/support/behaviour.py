"""Record what each kind of caller can do to an app's tables, so two moments can be compared.

For each context (anon, a signed-in user with PostgREST's claims, service_role, the owner) and
each table: which rows a SELECT returns, whether an INSERT of a probe row succeeds, and, row by
row, whether an UPDATE (of a column to its own value) or a DELETE succeeds, finds nothing
(filtered by RLS) or raises (with its SQLSTATE). Named queries (a view, a function call) record
their result. Every probe runs in a savepoint of a transaction that is rolled back, so capturing
changes nothing.

Contexts are set as PostgREST sets them: ``set_config('request.jwt.claims', ..., true)`` and
``SET LOCAL ROLE``, both transaction-local. The capturing connection must be able to switch to
each role and read every row (on Supabase: ``postgres``, BYPASSRLS and a member of the API roles).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

Capture = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """A caller: a database role (None = the connecting role) and the JWT claims it carries."""

    name: str
    role: str | None
    claims: Mapping[str, Any] | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class Change:
    key: str
    before: Any
    after: Any


@dataclass
class _Table:
    name: str
    pk: list[str]
    columns: list[str]
    insertable: list[str]
    uuid_pk: bool
    unique_text: list[str] = field(default_factory=list)


def _tables(conn: psycopg.Connection, names: Iterable[str] | None) -> list[_Table]:
    rows = conn.execute(
        """
        SELECT c.relname,
               (SELECT array_agg(a.attname::text ORDER BY k.ord)
                  FROM pg_constraint p
                  CROSS JOIN unnest(p.conkey) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = p.conrelid AND a.attnum = k.attnum
                 WHERE p.conrelid = c.oid AND p.contype = 'p') AS pk,
               (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
               (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attidentity <> 'a' AND a.attgenerated = '') AS insertable,
               (SELECT array_agg(a.attname::text) FROM pg_constraint p
                  JOIN pg_attribute a ON a.attrelid = p.conrelid AND a.attnum = p.conkey[1]
                 WHERE p.conrelid = c.oid AND p.contype = 'u' AND cardinality(p.conkey) = 1
                   AND a.atttypid = 'text'::regtype) AS unique_text,
               (SELECT a.atttypid = 'uuid'::regtype FROM pg_constraint p
                  JOIN pg_attribute a ON a.attrelid = p.conrelid AND a.attnum = p.conkey[1]
                 WHERE p.conrelid = c.oid AND p.contype = 'p' AND cardinality(p.conkey) = 1)
                   AS uuid_pk
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
        ORDER BY c.relname
        """
    ).fetchall()
    wanted = set(names) if names is not None else None
    tables = []
    for name, pk, columns, insertable, unique_text, uuid_pk in rows:
        if (wanted is not None and name not in wanted) or not pk:
            continue
        tables.append(_Table(name, pk, columns, insertable or [], bool(uuid_pk), unique_text or []))
    return tables


def _row_id(table: _Table) -> sql.Composable:
    return sql.SQL("concat_ws('/', {})").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in table.pk)
    )


def _qualified(table: _Table) -> sql.Composable:
    return sql.Identifier("public", table.name)


def _outcome(conn: psycopg.Connection, query: sql.Composable, params: Any = None) -> str:
    try:
        with conn.transaction(force_rollback=True):
            cur = conn.execute(query, params)
            return "ok" if cur.rowcount > 0 else "none"
    except psycopg.Error as exc:
        return f"error:{exc.sqlstate}"


def _rows(conn: psycopg.Connection, query: sql.Composable | str, params: Any = None) -> Any:
    try:
        with conn.transaction(force_rollback=True):
            return [
                [None if v is None else str(v) for v in row] for row in conn.execute(query, params)
            ]
    except psycopg.Error as exc:
        return f"error:{exc.sqlstate}"


def _enter(conn: psycopg.Connection, ctx: Context) -> None:
    if ctx.claims is not None:
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(dict(ctx.claims)),)
        )
    if ctx.role is not None:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(ctx.role)))


ProbeRow = Callable[[Context, dict[str, Any]], dict[str, Any]]


def capture(
    url: str,
    contexts: Iterable[Context],
    *,
    tables: Iterable[str] | None = None,
    queries: Mapping[str, str] | None = None,
    probe_rows: Mapping[str, ProbeRow] | None = None,
) -> Capture:
    """What each context can do, as ``{"<context> <table> <action> [row]": outcome}``.

    ``tables`` defaults to every table in ``public`` with a primary key; pass the list taken
    before a change to compare like with like. ``probe_rows[table](context, template)`` may
    adjust the row an INSERT probe tries (by default: the table's first row with a new key).
    """
    contexts = list(contexts)
    probe_rows = probe_rows or {}
    result: Capture = {}
    with psycopg.connect(url) as conn:
        found = _tables(conn, tables)
        ids: dict[str, list[str]] = {}
        templates: dict[str, dict[str, Any]] = {}
        for t in found:
            ids[t.name] = [
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT {} FROM {} ORDER BY 1").format(_row_id(t), _qualified(t))
                )
            ]
            first = conn.execute(
                sql.SQL("SELECT to_jsonb(x) FROM {} AS x ORDER BY {} LIMIT 1").format(
                    _qualified(t), sql.SQL(", ").join(sql.Identifier(c) for c in t.pk)
                )
            ).fetchone()
            if first:
                templates[t.name] = first[0]
        conn.rollback()
        for ctx in contexts:
            with conn.transaction(force_rollback=True):
                _enter(conn, ctx)
                for t in found:
                    prefix = f"{ctx.name} {t.name}"
                    result[f"{prefix} select"] = _select(conn, t)
                    if t.name in templates:
                        row = _probe_row(t, templates[t.name])
                        if t.name in probe_rows:
                            row = probe_rows[t.name](ctx, row)
                        result[f"{prefix} insert"] = _outcome(conn, *_insert(t, row))
                    for row_id in ids[t.name]:
                        where = sql.SQL("{} = %s").format(_row_id(t))
                        first_col = sql.Identifier(next(c for c in t.insertable if c not in t.pk))
                        result[f"{prefix} update {row_id}"] = _outcome(
                            conn,
                            sql.SQL("UPDATE {} SET {} = {} WHERE {}").format(
                                _qualified(t), first_col, first_col, where
                            ),
                            (row_id,),
                        )
                        result[f"{prefix} delete {row_id}"] = _outcome(
                            conn,
                            sql.SQL("DELETE FROM {} WHERE {}").format(_qualified(t), where),
                            (row_id,),
                        )
                for label, query in (queries or {}).items():
                    result[f"{ctx.name} {label}"] = _rows(conn, query)
    return result


def _select(conn: psycopg.Connection, t: _Table) -> Any:
    rows = _rows(conn, sql.SQL("SELECT {} FROM {} ORDER BY 1").format(_row_id(t), _qualified(t)))
    return rows if isinstance(rows, str) else [r[0] for r in rows]


def _probe_row(t: _Table, template: dict[str, Any]) -> dict[str, Any]:
    row = {c: template.get(c) for c in t.insertable}
    if t.uuid_pk:
        row[t.pk[0]] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"probe:{t.name}"))
    elif len(t.pk) == 1 and t.pk[0] not in t.insertable:
        pass  # GENERATED ALWAYS identity: the database picks the key
    elif len(t.pk) == 1 and isinstance(row.get(t.pk[0]), int):
        row.pop(t.pk[0])  # identity BY DEFAULT or serial: let the default pick
    text_pk = [t.pk[0]] if len(t.pk) == 1 and isinstance(row.get(t.pk[0]), str) else []
    for column in [*t.unique_text, *text_pk]:
        if row.get(column) is not None and not t.uuid_pk:
            row[column] = f"{row[column]}-probe"
    return row


def _insert(t: _Table, row: dict[str, Any]) -> tuple[sql.Composable, dict[str, Any]]:
    columns = list(row)
    query = sql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM jsonb_populate_record(NULL::{}, %(row)s) AS r"
    ).format(
        _qualified(t),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Identifier("r", c) for c in columns),
        _qualified(t),
    )
    return query, {"row": psycopg.types.json.Jsonb(row)}


def diff(before: Capture, after: Capture) -> list[Change]:
    """Every key whose outcome differs (a key present on one side only counts as a change)."""
    keys = sorted(set(before) | set(after))
    return [Change(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]
