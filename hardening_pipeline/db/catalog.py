"""The database's catalog, read two ways, both here so that they are kept side by side.

* ``read_catalog``: per kind (tables with their columns, views, functions with their bodies,
  policies, triggers, constraints, indexes), the sorted descriptions of the objects in some
  schemas. A backup records it in its manifest and a restore must rebuild exactly it, so its
  text is part of the backup format: change a query and old backups no longer compare.
* ``catalog_snapshot``: every object outside the system schemas by key, with its owner,
  grants, RLS flags and definition, as JSON. The migration plan diffs it before and after a
  rehearsal to say what a migration changes, and tests compare databases with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row

CATALOG_KINDS = ("constraints", "functions", "indexes", "policies", "tables", "triggers", "views")

# Extension members are recreated by CREATE EXTENSION, never by the dump: each query leaves
# them out.

DEFINITION_QUERIES = {
    "tables": """
        SELECT n.nspname || '.' || c.relname || ' (' || string_agg(
                 a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
                 || CASE WHEN a.attgenerated = 's' THEN ' generated' ELSE '' END
                 || CASE WHEN a.attidentity <> '' THEN ' identity' ELSE '' END,
                 ', ' ORDER BY a.attnum) || ')'
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
               WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
        GROUP BY n.nspname, c.relname""",
    "views": """
        SELECT n.nspname || '.' || c.relname
               || CASE c.relkind WHEN 'm' THEN ' (materialized)' ELSE '' END
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
               WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')""",
    "functions": """
        SELECT n.nspname || '.' || p.proname || '('
               || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')'
               || CASE WHEN p.prosecdef THEN ' security definer' ELSE '' END
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
               WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')""",
    "policies": """
        SELECT n.nspname || '.' || c.relname || ' ' || p.polname || ' ('
               || CASE p.polcmd WHEN 'r' THEN 'select' WHEN 'a' THEN 'insert'
                  WHEN 'w' THEN 'update' WHEN 'd' THEN 'delete' ELSE 'all' END
               || CASE WHEN p.polpermissive THEN '' ELSE ', restrictive' END
               || ', to ' || coalesce((SELECT string_agg(x, ' ' ORDER BY x) FROM (
                      SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r)
                      END AS x FROM unnest(p.polroles) AS r) AS roles), 'public') || ')'
        FROM pg_catalog.pg_policy p
        JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%s)""",
    "triggers": """
        SELECT n.nspname || '.' || c.relname || ' ' || t.tgname
        FROM pg_catalog.pg_trigger t
        JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND n.nspname = ANY(%s)""",
    "constraints": """
        SELECT n.nspname || '.' || c.relname || ' ' || k.conname || ' (' || k.contype::text || ')'
        FROM pg_catalog.pg_constraint k
        JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype IN ('p', 'u', 'f', 'c', 'x') AND n.nspname = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
               WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')""",
    "indexes": """
        SELECT n.nspname || '.' || c.relname
        FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
               WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indrelid
                 AND d.deptype = 'e')""",
}


def read_catalog(conn: psycopg.Connection, schemas: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The catalog summary of ``schemas``: sorted object descriptions per kind."""
    cur = conn.cursor(row_factory=tuple_row)
    summary = {}
    for kind in CATALOG_KINDS:
        rows = cur.execute(DEFINITION_QUERIES[kind], (list(schemas),)).fetchall()  # type: ignore[arg-type]
        summary[kind] = tuple(sorted(str(r[0]) for r in rows))
    return summary


SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")

Snapshot = dict[str, dict[str, Any]]


SNAPSHOT_QUERIES: Mapping[str, str] = {
    # relation -> kind, owner, RLS enabled, RLS forced
    "relations": """
        SELECT c.oid::regclass::text AS key,
               json_build_array(c.relkind, c.relowner::regrole::text,
                                c.relrowsecurity, c.relforcerowsecurity) AS value
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL (%(system)s) AND n.nspname NOT LIKE 'pg_temp%%'
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    """,
    "policies": """
        SELECT format('%%I.%%I %%s', schemaname, tablename, policyname) AS key,
               json_build_array(permissive, cmd, roles::text[], qual, with_check) AS value
        FROM pg_policies WHERE schemaname <> ALL (%(system)s)
    """,
    "constraints": """
        SELECT format('%%s %%s', con.conrelid::regclass, con.conname) AS key,
               json_build_array(con.contype, pg_get_constraintdef(con.oid), con.confdeltype,
                                con.confrelid::regclass::text,
                                (SELECT array_agg(a.attname::text ORDER BY a.attnum)
                                   FROM pg_attribute a WHERE a.attrelid = con.conrelid
                                    AND a.attnum = ANY (con.conkey))) AS value
        FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
        WHERE n.nspname <> ALL (%(system)s) AND con.conrelid <> 0
    """,
    "not_null": """
        SELECT format('%%s.%%I', c.oid::regclass, a.attname) AS key, to_json(a.attnotnull) AS value
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL (%(system)s) AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "triggers": """
        SELECT format('%%s %%s', t.tgrelid::regclass, t.tgname) AS key,
               json_build_array(pg_get_triggerdef(t.oid), t.tgenabled,
                                t.tgfoid::regprocedure::text) AS value
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND n.nspname <> ALL (%(system)s)
    """,
    "relation_privileges": """
        SELECT format('%%s %%s', c.oid::regclass,
                      CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                           ELSE a.grantee::regrole::text END) AS key,
               to_json(array_agg(a.privilege_type ORDER BY a.privilege_type)) AS value
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault(
            CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
        WHERE n.nspname <> ALL (%(system)s) AND n.nspname NOT LIKE 'pg_temp%%'
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
        GROUP BY 1
    """,
    "functions": """
        SELECT p.oid::regprocedure::text AS key,
               json_build_array(p.proowner::regrole::text, p.prosecdef) AS value
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname <> ALL (%(system)s)
    """,
    "function_privileges": """
        SELECT format('%%s %%s', p.oid::regprocedure,
                      CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                           ELSE a.grantee::regrole::text END) AS key,
               to_json(array_agg(a.privilege_type ORDER BY a.privilege_type)) AS value
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE n.nspname <> ALL (%(system)s)
        GROUP BY 1
    """,
    "schemas": """
        SELECT n.nspname::text AS key,
               json_build_array(n.nspowner::regrole::text, n.nspacl::text[]) AS value
        FROM pg_namespace n WHERE n.nspname <> ALL (%(system)s) AND n.nspname NOT LIKE 'pg_temp%%'
    """,
    "roles": """
        SELECT r.rolname::text AS key,
               json_build_array(r.rolsuper, r.rolbypassrls, r.rolinherit, r.rolcanlogin,
                   (SELECT array_agg(m.roleid::regrole::text ORDER BY 1)
                      FROM pg_auth_members m WHERE m.member = r.oid)) AS value
        FROM pg_roles r WHERE r.rolname NOT LIKE 'pg\\_%%'
    """,
}


def catalog_snapshot(conn: psycopg.Connection) -> Snapshot:
    """What the plan compares: policies, constraints, triggers, RLS, grants, owners, roles."""
    snapshot: Snapshot = {}
    cur = psycopg.ClientCursor(conn)
    # An empty search_path makes regclass, regprocedure and pg_get_*def schema-qualify every name,
    # so keys do not depend on the caller's path; restored afterwards (transaction-local).
    saved = _get(cur.execute("SELECT current_setting('search_path') AS p").fetchone(), "p", 0)
    cur.execute("SELECT set_config('search_path', '', true)")
    try:
        for name, query in SNAPSHOT_QUERIES.items():
            rows = cur.execute(query, {"system": list(SYSTEM_SCHEMAS)}).fetchall()
            snapshot[name] = {_get(r, "key", 0): _get(r, "value", 1) for r in rows}
    finally:
        cur.execute("SELECT set_config('search_path', %s, true)", (saved,))
    return snapshot


def _get(row: Any, name: str, index: int) -> Any:
    return row[name] if isinstance(row, Mapping) else row[index]
