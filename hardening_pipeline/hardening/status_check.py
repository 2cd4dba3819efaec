"""Is the database still hardened? One named green/red line per guarantee, read from the catalog.

The migrations put the guarantees in place once; this checks they are still there, because any
superuser, console click or hand-written migration can quietly undo one (drop a foreign key,
disable a trigger, add a policy for ``anon``). Each check is a plain function taking a read-only
connection and returning a ``CheckLine`` with the reason and the fix when it is red.

Tables are *found*, not listed: every table in ``public`` with a ``tenant_id`` column is
tenant-scoped, so a table added tomorrow is held to the same rules. Besides the project's own
guarantees it covers the RLS-related lints of Supabase's database linter (splinter): RLS disabled
in public, policies on a table whose RLS is off, RLS on with no policy, mutable function
search_path, per-row auth calls in policies (auth_rls_initplan), multiple permissive policies and
security-definer views. Where a lint and a project line would report the same fact, the lint's
scope is narrowed so one breakage turns one line red.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from hardening_pipeline.db.connection import connect, table_exists
from hardening_pipeline.db.migrations import (
    MIGRATIONS_DIR,
    compare,
    discover_migrations,
    read_applied,
)
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.hardening.seals import verify_seal_chain

if TYPE_CHECKING:
    from hardening_pipeline.backup.crypto import Keyring
    from hardening_pipeline.backup.store import BackupStore

SCHEMA = "public"
SYSTEM_SCHEMAS = (
    "pg_catalog",
    "information_schema",
    "pg_toast",
    # Supabase-managed schemas: splinter leaves them to Supabase, so do we.
    "auth",
    "storage",
    "realtime",
    "extensions",
    "graphql",
    "graphql_public",
    "pgbouncer",
    "vault",
    "supabase_functions",
    "supabase_migrations",
    "net",
    "pgsodium",
    "pgsodium_masks",
    "cron",
)


@dataclass(frozen=True)
class CheckLine:
    """One guarantee: green or red, why, and (when red) how to fix it."""

    name: str
    passed: bool
    detail: str
    fix: str = ""
    title: str = ""

    @property
    def runbook_anchor(self) -> str:
        return "status-" + self.name.replace("_", "-")


@dataclass(frozen=True)
class StatusReport:
    """Every line of one run, with when and against what it ran."""

    lines: list[CheckLine]
    started_at: datetime
    seconds: float
    database: str
    migrations_dir: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(line.passed for line in self.lines)

    @property
    def red(self) -> list[CheckLine]:
        return [line for line in self.lines if not line.passed]

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "database": self.database,
            "migrations_dir": self.migrations_dir,
            "red": [line.name for line in self.red],
            "lines": [
                asdict(line) | {"runbook_anchor": line.runbook_anchor} for line in self.lines
            ],
        }


@dataclass(frozen=True)
class CheckContext:
    """What the checks need besides the connection.

    ``store`` and ``keyring`` are optional: given, the audit seal line also compares the
    database's seals with their MAC'd copies in the backup store and checks every MAC.
    """

    migrations_dir: Path = MIGRATIONS_DIR
    store: BackupStore | None = None
    keyring: Keyring | None = None


CheckFn = Callable[[psycopg.Connection, CheckContext], CheckLine]
CHECKS: list[tuple[str, str, CheckFn]] = []


def check(name: str, title: str) -> Callable[[Callable], CheckFn]:
    """Register a check; the order of registration is the order of the checklist."""

    def register(fn: Callable) -> CheckFn:
        def run(conn: psycopg.Connection, ctx: CheckContext) -> CheckLine:
            passed, detail, fix = fn(conn, ctx)
            return CheckLine(name, passed, detail, "" if passed else fix, title)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        CHECKS.append((name, title, run))
        return run

    return register


def _rows(conn: psycopg.Connection, query: str, params: Sequence | None = None) -> list[dict]:
    return conn.execute(query, params).fetchall()


def _names(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


_TENANT_TABLES = """
    SELECT c.oid, c.relname
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
        AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND n.nspname = %s
    ORDER BY c.relname
"""


def tenant_tables(conn: psycopg.Connection) -> list[str]:
    """Every table in ``public`` with a ``tenant_id`` column: found, so new ones count too."""
    return [r["relname"] for r in _rows(conn, _TENANT_TABLES, (SCHEMA,))]


def _locked_tables(conn: psycopg.Connection) -> list[str]:
    # tenants has no tenant_id (it is the tenant) but is locked down the same way.
    names = tenant_tables(conn)
    return sorted({*names, "tenants"} if table_exists(conn, "public.tenants") else set(names))


# --- migrations and constraints -------------------------------------------------------------------


@check("migrations_applied", "every migration file applied and unchanged (checksum)")
def check_migrations(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    states = compare(discover_migrations(ctx.migrations_dir), read_applied(conn))
    bad = {
        kind: [s.filename for s in states if s.state == kind]
        for kind in ("pending", "changed", "unknown")
    }
    if not any(bad.values()):
        return True, f"{len(states)} applied, checksums match", ""
    detail = "; ".join(f"{kind}: {_names(files)}" for kind, files in bad.items() if files)
    fix = (
        "changed: restore the applied file(s) from git and put the change in a new numbered "
        "migration; pending: run `hardening migrate`; unknown: update the checkout."
    )
    return False, detail, fix


@check("messages_unit_id_not_null", "messages.unit_id (and development_id) NOT NULL")
def check_not_null(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = _rows(
        conn,
        "SELECT a.attname, a.attnotnull FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = to_regclass('public.messages') "
        "AND a.attname IN ('unit_id', 'development_id') AND NOT a.attisdropped",
    )
    nullable = sorted(r["attname"] for r in rows if not r["attnotnull"])
    missing = sorted({"unit_id", "development_id"} - {r["attname"] for r in rows})
    if not nullable and not missing:
        return True, "both NOT NULL", ""
    detail = "; ".join(
        part
        for part in (
            f"nullable: messages.{', messages.'.join(nullable)}" if nullable else "",
            f"missing column(s): {', '.join(missing)}" if missing else "",
        )
        if part
    )
    fix = (
        "find NULL rows with the orphaned_messages canary and fix them, then "
        "ALTER TABLE public.messages ALTER COLUMN unit_id SET NOT NULL (and development_id)."
    )
    return False, detail, fix


# (table, columns, parent, parent columns): single-column keys here, composite ones below.
REQUIRED_FOREIGN_KEYS: list[tuple[str, tuple[str, ...], str, tuple[str, ...]]] = [
    ("developments", ("tenant_id",), "tenants", ("id",)),
    ("units", ("tenant_id",), "tenants", ("id",)),
    ("messages", ("unit_id",), "units", ("id",)),
    ("messages", ("development_id",), "developments", ("id",)),
    ("messages", ("tenant_id",), "tenants", ("id",)),
    ("onboarding_attempts", ("tenant_id",), "tenants", ("id",)),
]
TENANT_CONSISTENCY_KEYS: list[tuple[str, tuple[str, ...], str, tuple[str, ...]]] = [
    ("units", ("development_id", "tenant_id"), "developments", ("id", "tenant_id")),
    (
        "messages",
        ("unit_id", "development_id", "tenant_id"),
        "units",
        ("id", "development_id", "tenant_id"),
    ),
]

_FOREIGN_KEYS = """
    SELECT c.conname, ch.relname AS tbl, pa.relname AS parent, c.convalidated, c.confdeltype,
           ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(num, pos)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
                 ORDER BY k.pos) AS cols,
           ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(num, pos)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num
                 ORDER BY k.pos) AS parent_cols,
           -- ALTER TABLE ... DISABLE TRIGGER ALL switches a key off while it still "exists"
           NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                       WHERE t.tgconstraint = c.oid AND t.tgenabled = 'D') AS enforced
    FROM pg_catalog.pg_constraint c
    JOIN pg_catalog.pg_class ch ON ch.oid = c.conrelid
    JOIN pg_catalog.pg_class pa ON pa.oid = c.confrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = ch.relnamespace
    WHERE c.contype = 'f' AND n.nspname = %s
"""


def _check_keys(
    conn: psycopg.Connection, required: list[tuple[str, tuple[str, ...], str, tuple[str, ...]]]
) -> tuple[bool, str, list[str]]:
    present = _rows(conn, _FOREIGN_KEYS, (SCHEMA,))
    problems: list[str] = []
    for table, cols, parent, parent_cols in required:
        label = f"{table}({', '.join(cols)}) -> {parent}({', '.join(parent_cols)})"
        matches = [
            r
            for r in present
            if r["tbl"] == table
            and tuple(r["cols"]) == cols
            and r["parent"] == parent
            and tuple(r["parent_cols"]) == parent_cols
        ]
        if not matches:
            problems.append(f"missing {label}")
            continue
        good = [r for r in matches if r["convalidated"] and r["confdeltype"] == "r"]
        if not good:
            r = matches[0]
            why = []
            if not r["convalidated"]:
                why.append("NOT VALID")
            if r["confdeltype"] != "r":
                action = {"a": "NO ACTION", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
                why.append(f"ON DELETE {action.get(r['confdeltype'], r['confdeltype'])}")
            problems.append(f"{r['conname']} ({label}) is {' and '.join(why)}")
        elif not any(r["enforced"] for r in good):
            problems.append(f"{good[0]['conname']} ({label}) has its triggers disabled")
    return not problems, f"{len(required)} present, validated, ON DELETE RESTRICT", problems


@check("foreign_keys_restrict", "required foreign keys present, validated, ON DELETE RESTRICT")
def check_foreign_keys(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    ok, good, problems = _check_keys(conn, REQUIRED_FOREIGN_KEYS)
    fix = (
        "recreate the key as ADD CONSTRAINT ... FOREIGN KEY ... ON DELETE RESTRICT NOT VALID, "
        "then VALIDATE CONSTRAINT (run the orphaned_messages canary first), in a new migration; "
        "re-enable disabled triggers with ALTER TABLE ... ENABLE TRIGGER ALL."
    )
    return ok, good if ok else "; ".join(problems), fix


@check("tenant_consistency_keys", "composite tenant-consistency keys present and validated")
def check_composite_keys(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    ok, good, problems = _check_keys(conn, TENANT_CONSISTENCY_KEYS)
    fix = (
        "run the tenant_misalignment canary and fix what it finds, then re-add the composite key "
        "(it needs the matching UNIQUE on the parent, e.g. units (id, development_id, tenant_id)) "
        "with ON DELETE RESTRICT NOT VALID + VALIDATE CONSTRAINT in a new migration."
    )
    return ok, good if ok else "; ".join(problems), fix


# --- audit log ------------------------------------------------------------------------------------

_TRIGGERS = """
    SELECT c.relname, t.tgname, p.proname, t.tgenabled, t.tgtype
    FROM pg_catalog.pg_trigger t
    JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
    JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
    WHERE NOT t.tgisinternal AND n.nspname = %s AND pn.nspname = 'hardening'
"""
_ENABLED = {"O": "enabled (skipped in replica mode)", "D": "disabled", "R": "replica only"}
# pg_trigger.tgtype bits: BEFORE 2, DELETE 8, UPDATE 16, TRUNCATE 32.
_GUARD_BITS = 2 | 8 | 16 | 32
CAPTURE_FUNCTIONS = (
    "audit_write_guard",
    "audit_capture_insert",
    "audit_capture_update",
    "audit_capture_delete",
    "audit_capture_truncate",
)


@check("audit_append_only_guard", "audit_events append-only guard present and ENABLE ALWAYS")
def check_append_only(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    guards = [
        r
        for r in _rows(conn, _TRIGGERS, (SCHEMA,))
        if r["relname"] == "audit_events" and r["proname"] == "audit_events_append_only"
    ]
    fix = (
        "ALTER TABLE public.audit_events ENABLE ALWAYS TRIGGER audit_events_append_only "
        "(recreate it from 002_audit_events.sql if it is gone)."
    )
    if not guards:
        return False, "no append-only guard trigger on audit_events", fix
    good = [g for g in guards if g["tgenabled"] == "A" and g["tgtype"] & _GUARD_BITS == _GUARD_BITS]
    if good:
        return True, f"{good[0]['tgname']} BEFORE UPDATE/DELETE/TRUNCATE, ALWAYS", ""
    g = guards[0]
    state = _ENABLED.get(g["tgenabled"], "ALWAYS")
    if g["tgtype"] & _GUARD_BITS != _GUARD_BITS:
        state += ", but not BEFORE UPDATE OR DELETE OR TRUNCATE"
    return False, f"{g['tgname']} is {state}", fix


@check(
    "audit_capture_triggers",
    "audit guard and capture triggers on every tenant-scoped table, ENABLE ALWAYS",
)
def check_capture(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = [t for t in _locked_tables(conn) if t != "audit_events"]
    triggers = _rows(conn, _TRIGGERS, (SCHEMA,))
    problems = []
    for table in tables:
        have = {r["proname"]: r for r in triggers if r["relname"] == table}
        missing = [f for f in CAPTURE_FUNCTIONS if f not in have]
        off = [
            f"{have[f]['tgname']} {_ENABLED[have[f]['tgenabled']]}"
            for f in CAPTURE_FUNCTIONS
            if f in have and have[f]["tgenabled"] != "A"
        ]
        if missing:
            problems.append(f"{table}: missing {', '.join(missing)}")
        if off:
            problems.append(f"{table}: {', '.join(off)}")
    if not problems:
        return True, f"5 triggers ALWAYS on each of {len(tables)} tables", ""
    fix = (
        "for a missing set: SELECT hardening.install_audit_capture('public.<table>'::regclass, "
        "'tenant_id') in a new migration; for a disabled one: ALTER TABLE public.<table> "
        "ENABLE ALWAYS TRIGGER <trigger>."
    )
    return False, "; ".join(problems), fix


_AUDIT_WRITE_GRANTS = """
    SELECT coalesce(r.rolname, 'PUBLIC') AS grantee, x.privilege_type, NULL::text AS column_name
    FROM pg_catalog.pg_class c
    CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE c.oid = to_regclass('public.audit_events')
      AND x.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
    UNION ALL
    SELECT coalesce(r.rolname, 'PUBLIC'), x.privilege_type, a.attname::text
    FROM pg_catalog.pg_attribute a
    CROSS JOIN LATERAL aclexplode(a.attacl) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE a.attrelid = to_regclass('public.audit_events') AND a.attacl IS NOT NULL
      AND x.privilege_type = 'UPDATE'
    ORDER BY 1, 2
"""


@check("audit_events_no_write_grants", "no role holds UPDATE, DELETE or TRUNCATE on audit_events")
def check_audit_grants(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = _rows(conn, _AUDIT_WRITE_GRANTS)
    if not rows:
        return True, "only SELECT/INSERT granted (superusers aside)", ""
    held = [
        f"{r['grantee']}: {r['privilege_type']}"
        + (f" ({r['column_name']})" if r["column_name"] else "")
        for r in rows
    ]
    fix = "REVOKE UPDATE, DELETE, TRUNCATE ON public.audit_events FROM <role> (column grants too)."
    return False, "; ".join(held), fix


@check(
    "audit_seal_chain",
    "audit_events matches its hash-chain seals (no sealed row changed, deleted or back-dated)",
)
def check_audit_seals(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # The database alone cannot reveal a rewrite of rows and seals together; with the store and
    # key (ctx.store, ctx.keyring) it can. See hardening_pipeline/hardening/seals.py.
    result = verify_seal_chain(conn, store=ctx.store, keyring=ctx.keyring)
    return result.passed, result.detail, result.fix


# --- row-level security ---------------------------------------------------------------------------

_RLS = """
    SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
           EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) AS has_policy,
           EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
                   AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS tenant_scoped,
           (has_table_privilege('authenticated', c.oid, 'SELECT, INSERT, UPDATE, DELETE')
            OR has_table_privilege('anon', c.oid, 'SELECT, INSERT, UPDATE, DELETE'))
               AS api_facing,
           n.nspname
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT (n.nspname = ANY (%s))
      AND n.nspname NOT LIKE 'pg\\_%%'
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.objid = c.oid AND d.deptype = 'e')
    ORDER BY n.nspname, c.relname
"""


def _rls_rows(conn: psycopg.Connection) -> list[dict]:
    roles = {r["rolname"] for r in _rows(conn, "SELECT rolname FROM pg_catalog.pg_roles")}
    if not {"anon", "authenticated"} <= roles:
        # has_table_privilege on a missing role raises; this is not a Supabase-style database.
        raise RuntimeError("roles anon and authenticated are missing; apply 001_core_schema.sql")
    return _rows(conn, _RLS, (list(SYSTEM_SCHEMAS),))


@check(
    "rls_tenant_tables", "RLS enabled and forced on every tenant-scoped table (found, not listed)"
)
def check_rls_tenant(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    locked = set(_locked_tables(conn))
    rows = [r for r in _rls_rows(conn) if r["nspname"] == SCHEMA and r["relname"] in locked]
    problems = []
    for r in rows:
        if not r["relrowsecurity"]:
            problems.append(
                f"{r['relname']}: RLS disabled"
                + (" (its policies are not enforced)" if r["has_policy"] else "")
            )
        elif not r["relforcerowsecurity"]:
            problems.append(f"{r['relname']}: RLS not forced (the owner bypasses it)")
    if not problems:
        return True, f"{len(rows)} tables: {_names([r['relname'] for r in rows])}", ""
    # Name each table, so the fix can be pasted as it is.
    statements = [
        f"ALTER TABLE public.{r['relname']} {what} ROW LEVEL SECURITY;"
        for r in rows
        for what, missing in (
            ("ENABLE", not r["relrowsecurity"]),
            ("FORCE", not r["relforcerowsecurity"]),
        )
        if missing
    ]
    fix = " ".join(statements) + " and keep a tenant_isolation policy TO authenticated (see 001)."
    return False, "; ".join(problems), fix


@check("rls_disabled_in_public", "splinter rls_disabled_in_public: other public tables have RLS")
def check_rls_public(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    locked = set(_locked_tables(conn))
    bad = [
        r["relname"]
        for r in _rls_rows(conn)
        if r["nspname"] == SCHEMA and r["relname"] not in locked and not r["relrowsecurity"]
    ]
    if not bad:
        return True, "no table in public without RLS", ""
    fix = (
        "public is what PostgREST exposes: "
        + " ".join(f"ALTER TABLE public.{name} ENABLE ROW LEVEL SECURITY;" for name in bad)
        + " and add policies, or move the table to a private schema."
    )
    return False, f"RLS disabled on {_names(bad)}", fix


@check(
    "policy_exists_rls_disabled",
    "splinter policy_exists_rls_disabled: no policies on a table with RLS off (other schemas)",
)
def check_policy_rls_off(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # Tables in public are covered by the two lines above, which name this case in their detail.
    bad = [
        f"{r['nspname']}.{r['relname']}"
        for r in _rls_rows(conn)
        if r["nspname"] != SCHEMA and r["has_policy"] and not r["relrowsecurity"]
    ]
    if not bad:
        return True, "every table with policies has RLS on", ""
    fix = (
        " ".join(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY;" for name in bad)
        + " (or drop the unused policies)."
    )
    return False, f"policies exist but RLS is off on {_names(bad)}", fix


@check(
    "rls_enabled_no_policy",
    "splinter rls_enabled_no_policy: API-facing tables with RLS on have a policy",
)
def check_rls_no_policy(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = [
        f"{r['nspname']}.{r['relname']}"
        for r in _rls_rows(conn)
        if r["relrowsecurity"] and not r["has_policy"] and r["api_facing"]
    ]
    if not bad:
        return True, "every API-facing table with RLS has a policy", ""
    fix = (
        "RLS with no policy denies every row to authenticated: add the intended policy, or "
        "REVOKE the grants if the table is not meant for the API."
    )
    return False, f"RLS on but no policy: {_names(bad)}", fix


_POLICIES = """
    SELECT n.nspname, c.relname, p.polname, p.polcmd, p.polpermissive,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r)::text END
                 FROM unnest(p.polroles) r) AS roles,
           pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual,
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
    FROM pg_catalog.pg_policy p
    JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT (n.nspname = ANY (%s))
    ORDER BY n.nspname, c.relname, p.polname
"""


def _policies(conn: psycopg.Connection) -> list[dict]:
    return _rows(conn, _POLICIES, (list(SYSTEM_SCHEMAS),))


@check("no_anon_or_public_policies", "no policy applies to anon or PUBLIC")
def check_anon_policies(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = [
        f"{p['polname']} on {p['nspname']}.{p['relname']} (to {', '.join(p['roles'])})"
        for p in _policies(conn)
        if {"anon", "PUBLIC"} & set(p["roles"])
    ]
    if not bad:
        return True, "policies name authenticated or internal roles only", ""
    fix = "DROP POLICY <name> ON <table>; recreate it TO authenticated if it is needed."
    return False, _names(bad), fix


_ANON_GRANTS = """
    SELECT c.relname, coalesce(r.rolname, 'PUBLIC') AS grantee, x.privilege_type,
           NULL::text AS column_name
    FROM pg_catalog.pg_class c
    CROSS JOIN LATERAL aclexplode(c.relacl) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE c.oid = ANY (%(tables)s::regclass[]) AND (x.grantee = 0 OR r.rolname = 'anon')
    UNION ALL
    SELECT c.relname, coalesce(r.rolname, 'PUBLIC'), x.privilege_type, a.attname::text
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    CROSS JOIN LATERAL aclexplode(a.attacl) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE c.oid = ANY (%(tables)s::regclass[]) AND a.attacl IS NOT NULL
      AND (x.grantee = 0 OR r.rolname = 'anon')
    ORDER BY 1, 2, 3
"""


@check("no_anon_grants", "anon and PUBLIC hold no privileges on tenant tables")
def check_anon_grants(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = [f"public.{t}" for t in _locked_tables(conn)]
    rows = _rows(conn, _ANON_GRANTS, {"tables": tables})
    if not rows:
        return True, f"none on {len(tables)} tables", ""
    held = [
        f"{r['grantee']} {r['privilege_type']} on {r['relname']}"
        + (f"({r['column_name']})" if r["column_name"] else "")
        for r in rows
    ]
    fix = "REVOKE ALL ON public.<table> FROM anon, PUBLIC (and column grants: REVOKE ... (col))."
    return False, _names(held), fix


_TENANT_INDEXED = """
    SELECT c.relname,
           EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                   JOIN pg_catalog.pg_attribute ia
                     ON ia.attrelid = i.indrelid AND ia.attnum = i.indkey[0]
                   WHERE i.indrelid = c.oid AND ia.attname = 'tenant_id'
                     AND i.indisvalid AND i.indpred IS NULL) AS indexed
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
        AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND n.nspname = %s
    ORDER BY c.relname
"""


@check("tenant_id_indexed", "tenant_id is the leading column of a valid index on every table")
def check_tenant_index(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = _rows(conn, _TENANT_INDEXED, (SCHEMA,))
    bad = [r["relname"] for r in rows if not r["indexed"]]
    if not bad:
        return True, f"{len(rows)} tables", ""
    fix = (
        "CREATE INDEX CONCURRENTLY <table>_tenant_id_idx ON public.<table> (tenant_id) "
        "(policies filter on tenant_id; without it every query scans the table)."
    )
    return False, f"no usable tenant_id index on {_names(bad)}", fix


_POLICY_CALLS = re.compile(
    r"\b(current_setting|auth\.(?:uid|jwt|role|email)|hardening\.current_tenant_id)\s*\(",
    re.IGNORECASE,
)


def _strip_subselects(expr: str) -> str:
    """Remove every ``(SELECT ...)`` subquery, so what is left is evaluated once per row."""
    out, i = [], 0
    while i < len(expr):
        if expr[i] == "(" and re.match(r"\(\s*SELECT\b", expr[i:], re.IGNORECASE):
            depth = 0
            while i < len(expr):
                depth += {"(": 1, ")": -1}.get(expr[i], 0)
                i += 1
                if depth == 0:
                    break
            out.append("(subquery)")
            continue
        out.append(expr[i])
        i += 1
    return "".join(out)


def per_row_calls(expr: str | None) -> list[str]:
    """Function calls in a policy expression that Postgres re-evaluates for every row."""
    if not expr:
        return []
    return sorted({m.group(1) for m in _POLICY_CALLS.finditer(_strip_subselects(expr))})


@check(
    "auth_rls_initplan",
    "splinter auth_rls_initplan: policies call current_setting/auth functions via (select ...)",
)
def check_initplan(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = []
    for p in _policies(conn):
        calls = per_row_calls(p["qual"]) + per_row_calls(p["with_check"])
        if calls:
            bad.append(f"{p['polname']} on {p['relname']} calls {', '.join(sorted(set(calls)))}")
    if not bad:
        return True, "tenant lookups run once per statement", ""
    fix = (
        "wrap the call as (SELECT hardening.current_tenant_id()) so it runs once per statement "
        "(an initplan), not once per row; recreate the policy in a new migration."
    )
    return False, _names(bad), fix


@check(
    "multiple_permissive_policies",
    "splinter multiple_permissive_policies: one permissive policy per table, role and action",
)
def check_permissive(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    actions = {"r": ["SELECT"], "a": ["INSERT"], "w": ["UPDATE"], "d": ["DELETE"]}
    every = ["SELECT", "INSERT", "UPDATE", "DELETE"]
    seen: dict[tuple[str, str, str], list[str]] = {}
    for p in _policies(conn):
        if not p["polpermissive"]:
            continue
        for role in p["roles"]:
            for action in actions.get(p["polcmd"], every):
                key = (f"{p['nspname']}.{p['relname']}", role, action)
                seen.setdefault(key, []).append(p["polname"])
    bad = [
        f"{table} {role} {action}: {', '.join(names)}"
        for (table, role, action), names in sorted(seen.items())
        if len(names) > 1
    ]
    if not bad:
        return True, "no overlapping permissive policies", ""
    fix = (
        "merge the policies into one (permissive policies are OR-ed, each evaluated per row), "
        "or make the extra one AS RESTRICTIVE if it is meant to narrow access."
    )
    return False, _names(bad, 5), fix


@check(
    "function_search_path_fixed",
    "SECURITY DEFINER functions have a fixed search_path",
)
def check_definer_path(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = _mutable_path_functions(conn, definer=True)
    if not bad:
        return True, "every SECURITY DEFINER function sets search_path", ""
    fix = (
        "ALTER FUNCTION <name>(<args>) SET search_path = '' and schema-qualify every name in "
        "its body; otherwise a caller's objects can hijack it with the owner's rights."
    )
    return False, _names(bad), fix


@check(
    "function_search_path_mutable",
    "splinter function_search_path_mutable: other functions have a fixed search_path",
)
def check_invoker_path(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = _mutable_path_functions(conn, definer=False)
    if not bad:
        return True, "every function sets search_path", ""
    fix = "ALTER FUNCTION <name>(<args>) SET search_path = '' (and schema-qualify its body)."
    return False, _names(bad), fix


def _mutable_path_functions(conn: psycopg.Connection, *, definer: bool) -> list[str]:
    rows = _rows(
        conn,
        """
        SELECT n.nspname || '.' || p.proname
               || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')' AS fn
        FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE NOT (n.nspname = ANY (%s)) AND n.nspname NOT LIKE 'pg\\_%%'
          AND p.prosecdef = %s
          AND p.prokind IN ('f', 'p')
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.objid = p.oid AND d.deptype = 'e')
          AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) cfg
                          WHERE cfg LIKE 'search\\_path=%%')
        ORDER BY 1
        """,
        (list(SYSTEM_SCHEMAS), definer),
    )
    return [r["fn"] for r in rows]


@check("security_definer_view", "splinter security_definer_view: API views use security_invoker")
def check_views(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = _rows(
        conn,
        """
        SELECT n.nspname || '.' || c.relname AS view
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND n.nspname = %s
          AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(c.reloptions, '{}')) o
                          WHERE lower(o) IN ('security_invoker=true', 'security_invoker=on',
                                             'security_invoker=1'))
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1
        """,
        (SCHEMA,),
    )
    bad = [r["view"] for r in rows]
    if not bad:
        return True, "no views in public run with their owner's rights", ""
    fix = (
        "ALTER VIEW <view> SET (security_invoker = true): a view otherwise reads its tables as "
        "its owner, bypassing the caller's RLS."
    )
    return False, f"{_names(bad)} run as their owner", fix


# --- running --------------------------------------------------------------------------------------


def describe_database(url: str) -> str:
    """Host and database name for the report, never the password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparseable URL)"
    host = info.get("host") or "localhost"
    if host.startswith("/"):
        host = "local socket"
    return f"{info.get('dbname') or info.get('user') or '?'} on {host}:{info.get('port') or 5432}"


def run_checks(
    conn: psycopg.Connection, ctx: CheckContext | None = None, names: Sequence[str] | None = None
) -> list[CheckLine]:
    """Run the checks in checklist order; a check that errors is a red line, not a crash."""
    ctx = ctx or CheckContext()
    lines = []
    for name, title, fn in CHECKS:
        if names is not None and name not in names:
            continue
        try:
            with conn.transaction():  # a savepoint: one broken check does not abort the rest
                lines.append(fn(conn, ctx))
        except (psycopg.Error, HardeningError, RuntimeError, OSError, ValueError) as exc:
            lines.append(
                CheckLine(
                    name,
                    False,
                    f"check could not run: {type(exc).__name__}: {str(exc).strip()[:300]}",
                    "fix the error above (is the database migrated? is the role a superuser or "
                    "the schema owner?) and run the status check again.",
                    title,
                )
            )
    return lines


def run_status_check(
    url: str,
    migrations_dir: Path = MIGRATIONS_DIR,
    *,
    store: BackupStore | None = None,
    keyring: Keyring | None = None,
) -> StatusReport:
    """Run every check in one read-only transaction against ``url``.

    ``store``/``keyring`` let the audit seal line check the store copies and MACs too.
    """
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    ctx = CheckContext(migrations_dir=migrations_dir, store=store, keyring=keyring)
    with connect(url) as conn:
        conn.read_only = True
        with conn.transaction():
            conn.execute("SELECT set_config('statement_timeout', '30s', true)")
            lines = run_checks(conn, ctx)
    return StatusReport(
        lines=lines,
        started_at=started_at,
        seconds=time.perf_counter() - started,
        database=describe_database(url),
        migrations_dir=str(migrations_dir),
    )
