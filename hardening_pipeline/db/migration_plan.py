"""``hardening migrate --plan``: what the pending migrations would change, and what blocks them.

The plan is a rehearsal. It runs the pending migrations, statement by statement, inside one
transaction that is always rolled back, with a short ``lock_timeout`` so a busy table makes the
plan fail fast instead of queueing writers. It snapshots the catalog before and after each file
and reports the differences to objects that already existed, grouped the way a reviewer reads
them: policies, foreign keys, constraints, triggers, row-level security, privileges, ownership,
and the writes that will start being refused. The first file that raises is a blocker: it is
reported with the fix (SQL where it can be derived) and later files are not planned, since they
would run against a database that file never produced. A new database is rehearsed from the
baseline's sections, as ``migrate`` applies it (db/baseline.py). Nothing durable changes; a
sequence advanced by a rehearsed statement is the one exception Postgres allows (sequences are
not transactional), and the kit's migrations advance none that exist before them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hardening_pipeline.db.baseline import files_to_apply, ships, stale_definitions
from hardening_pipeline.db.catalog import Snapshot, catalog_snapshot
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.migrations import (
    ADVISORY_LOCK_KEY,
    BOOTSTRAP_SQL,
    MIGRATIONS_DIR,
    MigrationFailed,
    MigrationFailure,
    MigrationRun,
    appliers,
    apply_migrations,
    catch_up_revision,
    compare,
    discover_migrations,
    earlier_texts,
    execute_migration,
    read_applied,
    refuse_drift,
)
from hardening_pipeline.db.open_policies import open_policies
from hardening_pipeline.db.service_role_mode import read_mode
from hardening_pipeline.db.tenant_resolver import ResolverChoice, resolver_lines
from hardening_pipeline.errors import CheckFailed, ConfigError

# Report groups, in the order they are printed.
GROUPS = (
    "may widen access",
    "policies added",
    "policies changed",
    "policies removed",
    "foreign keys replaced",
    "foreign keys added",
    "constraints added",
    "columns made NOT NULL",
    "triggers attached",
    "RLS enabled",
    "RLS forced",
    "privileges revoked",
    "privileges granted",
    "ownership changed",
    "objects created",
    "writes that will start being refused",
    "writes reported, not refused (service-role report mode)",
)
REPORTED_GROUP = GROUPS[-1]


@dataclass(frozen=True)
class Change:
    group: str
    subject: str
    detail: str
    filename: str


@dataclass(frozen=True)
class Blocker:
    failure: MigrationFailure
    fix_sql: list[str]
    not_planned: list[str]


@dataclass
class MigrationPlan:
    """The rehearsal's result; ``ok`` means ``hardening migrate`` would apply cleanly."""

    pending: list[str]
    planned: list[str] = field(default_factory=list)
    # Catch-ups for earlier released texts (sql/revisions/), rehearsed before the pending files.
    caught_up: list[str] = field(default_factory=list)
    # Definitions applied again after the files (sql/definitions/), rehearsed as migrate runs them.
    definitions: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    # The catalog as the rehearsal left it: what a real run of the planned files produces.
    rehearsed: Snapshot | None = None

    @property
    def ok(self) -> bool:
        return not self.blockers

    def grouped(self) -> dict[str, list[Change]]:
        out: dict[str, list[Change]] = {g: [] for g in GROUPS}
        for c in self.changes:
            out[c.group].append(c)
        return {g: cs for g, cs in out.items() if cs}


# --- differences ------------------------------------------------------------------------------

_DELETE_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL",
                   "d": "SET DEFAULT"}  # fmt: skip


def _table_of(key: str) -> str:
    return key.split(" ", 1)[0]


def describe_changes(before: Snapshot, after: Snapshot, filename: str) -> list[Change]:
    """Changes to what existed before, plus a one-line summary of what was created."""
    out: list[Change] = []

    def add(group: str, subject: str, detail: str) -> None:
        out.append(Change(group, subject, detail, filename))

    existed = set(before["relations"])
    rel_before, rel_after = before["relations"], after["relations"]

    for key, value in after["policies"].items():
        if _table_of(key) not in existed:
            continue  # a policy on a table this file created is part of "objects created"
        permissive, cmd, roles, qual, check = value
        text = f"{permissive} FOR {cmd} TO {', '.join(roles)}"
        text += f" USING ({qual})" if qual else ""
        text += f" WITH CHECK ({check})" if check else ""
        if key not in before["policies"]:
            add("policies added", key, text)
            table = key.split(" ", 1)[0]
            others = [
                k
                for k, v in before["policies"].items()
                if k.split(" ", 1)[0] == table and v[0] == "PERMISSIVE"
            ]
            if permissive == "PERMISSIVE" and others:
                # Permissive policies are ORed: this one can let through what the app's refused.
                add(
                    "may widen access",
                    key,
                    f"PERMISSIVE FOR {cmd} TO {', '.join(roles)} is ORed with the table's "
                    f"{len(others)} existing permissive policies, so it can allow what they "
                    "did not",
                )
        elif before["policies"][key] != value:
            add("policies changed", key, text)
    for key in before["policies"].keys() - after["policies"].keys():
        add("policies removed", key, "dropped")

    fk_before = {k: v for k, v in before["constraints"].items() if v[0] == "f"}
    for key, value in sorted(after["constraints"].items()):
        if key in before["constraints"] and before["constraints"][key] == value:
            continue
        contype, definition, deltype, _parent, columns = value
        table = _table_of(key)
        if table not in existed:
            continue
        if contype == "f":
            same_columns = [
                (k, v)
                for k, v in fk_before.items()
                if _table_of(k) == table and v[4] == columns and k not in after["constraints"]
            ]
            beside = [
                (k, v)
                for k, v in fk_before.items()
                if _table_of(k) == table and v[4] == columns and k in after["constraints"]
            ]
            detail = definition
            if key in fk_before:  # the same name rebuilt (011 keeps the app's key names)
                old = fk_before[key]
                add("foreign keys replaced", key, f"{old[1]} -> {definition}")
            elif same_columns:
                old_key, old = same_columns[0]
                add("foreign keys replaced", key,
                    f"{old_key.split(' ', 1)[1]} ({old[1]}) -> {definition}")  # fmt: skip
            else:
                if beside:
                    other_key, other = beside[0]
                    detail += (
                        f" (beside the existing {other_key.split(' ', 1)[1]}, ON DELETE "
                        f"{_DELETE_ACTIONS.get(other[2], other[2])})"
                    )
                add("foreign keys added", key, detail)
            if deltype in ("r", "a"):
                parent = value[3]
                add(
                    "writes that will start being refused",
                    f"DELETE on {parent}",
                    f"a {parent} row still referenced by {table} ({', '.join(columns)}) "
                    f"can no longer be deleted ({key.split(' ', 1)[1]}, ON DELETE "
                    f"{_DELETE_ACTIONS[deltype]})",
                )
        elif contype in ("c", "u", "x"):
            add("constraints added", key, definition)
            # A key that contains an existing unique key refuses nothing new.
            implied = contype == "u" and any(
                _table_of(k) == table and v[0] in ("p", "u") and set(v[4] or ()) <= set(columns)
                for k, v in before["constraints"].items()
            )
            if not implied:
                add("writes that will start being refused", f"INSERT/UPDATE on {table}",
                    f"rows breaking {key.split(' ', 1)[1]}: {definition}")  # fmt: skip
    for key, value in after["not_null"].items():
        if value and before["not_null"].get(key) is False:
            add("columns made NOT NULL", key, "SET NOT NULL")
            add("writes that will start being refused", f"INSERT/UPDATE on {key.rsplit('.', 1)[0]}",
                f"a NULL in {key}")  # fmt: skip

    guarded: list[str] = []
    for key, (definition, enabled, function) in sorted(after["triggers"].items()):
        table = _table_of(key)
        if key in before["triggers"] or table not in existed:
            continue
        timing = re.search(r" (BEFORE|AFTER|INSTEAD OF) (.+?) ON ", definition)
        detail = f"{timing.group(1)} {timing.group(2)}" if timing else definition
        detail += f" -> {function}"
        if enabled == "A":
            detail += " (ENABLE ALWAYS: also under session_replication_role = replica)"
        add("triggers attached", key, detail)
        if function.startswith("hardening.audit_write_guard"):
            guarded.append(table)
    for table in guarded:
        add(
            "writes that will start being refused",
            f"service_role writes on {table}",
            "INSERT/UPDATE/DELETE/TRUNCATE as service_role without app.actor (supabase-js with "
            "the service key, edge functions, database webhooks) raise "
            "insufficient_privilege; write through TenantScopedClient or set app.actor",
        )

    for key, value in rel_after.items():
        if key not in rel_before:
            continue
        if value[2] and not rel_before[key][2]:
            add("RLS enabled", key, "ENABLE ROW LEVEL SECURITY")
        if value[3] and not rel_before[key][3]:
            add("RLS forced", key, "FORCE ROW LEVEL SECURITY (the owner is filtered too, "
                "unless it has BYPASSRLS)")  # fmt: skip
        if value[1] != rel_before[key][1]:
            add("ownership changed", key, f"{rel_before[key][1]} -> {value[1]}")

    _privileges(before, after, "relation_privileges", existed, add)
    _privileges(before, after, "function_privileges", set(before["functions"]), add)
    for key, value in after["functions"].items():
        if key in before["functions"] and before["functions"][key][0] != value[0]:
            add(
                "ownership changed",
                f"function {key}",
                f"{before['functions'][key][0]} -> {value[0]}",
            )

    created = sorted(set(rel_after) - existed)
    functions = sorted(set(after["functions"]) - set(before["functions"]))
    roles = sorted(set(after["roles"]) - set(before["roles"]))
    if created or functions or roles:
        parts = []
        if created:
            parts.append("relations " + ", ".join(created))
        if functions:
            parts.append(f"{len(functions)} function(s)")
        if roles:
            parts.append("roles " + ", ".join(roles))
        add("objects created", filename, "; ".join(parts))
    return out


def _privileges(
    before: Snapshot, after: Snapshot, kind: str, existed: Iterable[str], add: Any
) -> None:
    existed = set(existed)
    keys = set(before[kind]) | set(after[kind])
    for key in sorted(keys):
        obj, grantee = key.rsplit(" ", 1)
        if obj not in existed:
            continue
        old, new = set(before[kind].get(key, [])), set(after[kind].get(key, []))
        if old - new:
            add("privileges revoked", obj, f"{', '.join(sorted(old - new))} from {grantee}")
            if kind == "relation_privileges" and old - new - {"TRUNCATE", "REFERENCES",
                                                               "TRIGGER"}:  # fmt: skip
                add(
                    "writes that will start being refused",
                    f"{grantee} on {obj}",
                    f"{', '.join(sorted(old - new))} now raise permission denied",
                )
        if new - old:
            add("privileges granted", obj, f"{', '.join(sorted(new - old))} to {grantee}")
            if grantee in ("PUBLIC", "anon", "authenticated"):
                add("may widen access", obj, f"grants {', '.join(sorted(new - old))} to {grantee}")


# --- blockers ---------------------------------------------------------------------------------


# The rows 003's pre-flight counts, one query per kind in the order and with the words of its
# report, so the fix SQL lists exactly the ids (and counts) the blocker names.
_MESSAGE_SAFETY_ROWS = [
    "-- the rows 003 reports, one per line (read-only; fix or remove them):",
    "SELECT 'message(s) without a unit or development' AS problem, 'messages' AS in_table,",
    "       m.id::text, m.tenant_id::text, m.development_id::text, m.unit_id::text",
    "FROM public.messages m WHERE m.unit_id IS NULL OR m.development_id IS NULL",
    "UNION ALL",
    "SELECT 'orphaned message(s) whose unit, development or tenant is missing', 'messages',",
    "       m.id::text, m.tenant_id::text, m.development_id::text, m.unit_id::text",
    "FROM public.messages m",
    "WHERE NOT EXISTS (SELECT 1 FROM public.tenants t WHERE t.id = m.tenant_id)",
    "   OR (m.development_id IS NOT NULL AND NOT EXISTS",
    "          (SELECT 1 FROM public.developments d WHERE d.id = m.development_id))",
    "   OR (m.unit_id IS NOT NULL AND NOT EXISTS",
    "          (SELECT 1 FROM public.units u WHERE u.id = m.unit_id))",
    "UNION ALL",
    "SELECT 'misaligned message(s) whose unit belongs to another development or tenant',",
    "       'messages', m.id::text, m.tenant_id::text, m.development_id::text, m.unit_id::text",
    "FROM public.messages m JOIN public.units u ON u.id = m.unit_id",
    "WHERE u.tenant_id <> m.tenant_id OR u.development_id <> m.development_id",
    "UNION ALL",
    "SELECT 'misplaced unit(s) whose development belongs to another tenant', 'units',",
    "       u.id::text, u.tenant_id::text, u.development_id::text, NULL",
    "FROM public.units u JOIN public.developments d ON d.id = u.development_id",
    "WHERE d.tenant_id <> u.tenant_id",
    "UNION ALL",
    "SELECT 'message(s) in a unit whose development belongs to another tenant', 'messages',",
    "       m.id::text, m.tenant_id::text, m.development_id::text, m.unit_id::text",
    "FROM public.messages m JOIN public.units u ON u.id = m.unit_id",
    "JOIN public.developments d ON d.id = u.development_id",
    "WHERE d.tenant_id <> u.tenant_id",
    "ORDER BY 1, 3;",
]


def _fix_sql(conn: psycopg.Connection, failure: MigrationFailure) -> list[str]:
    """SQL that fixes the blocker, where the catalog tells us exactly what it is."""
    if "apply to anon or PUBLIC" in failure.message:
        # Only the policies 004 stops on: one outside tenant data is set aside, not refused.
        return [
            f"{policy.alter_to(['authenticated'])};"
            for policy in open_policies(conn)
            if policy.tenant_data
        ]
    if failure.sqlstate == "42501" and failure.message.startswith("permission denied for schema"):
        schema = failure.message.rsplit(" ", 1)[1]
        return [
            f"-- as the owner of schema {schema}, for the role the statement hands objects to:",
            f"GRANT CREATE ON SCHEMA {schema} TO <role>;",
        ]
    if failure.filename.startswith("003_") and failure.sqlstate == "23514":
        return list(_MESSAGE_SAFETY_ROWS)
    return []


# --- the rehearsal ----------------------------------------------------------------------------


def plan_migrations(
    url: str, directory: Path = MIGRATIONS_DIR, *, lock_timeout: str = "3s"
) -> MigrationPlan:
    """Rehearse every pending migration in a transaction that is rolled back; see the module."""
    files = discover_migrations(directory)
    with connect(url) as conn:
        try:
            got = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s) AS ok", (ADVISORY_LOCK_KEY,)
            ).fetchone()
            if not got["ok"]:
                raise ConfigError(
                    "another hardening migrate is running on this database; wait for it to "
                    "finish, then plan again."
                )
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
            role = conn.execute("SELECT current_user AS r").fetchone()["r"]
            states = compare(files, read_applied(conn))
            refuse_drift(states)
            pending = {s.filename for s in states if s.state == "pending"}
            revised = earlier_texts(states)
            plan = MigrationPlan(pending=[f.filename for f in files if f.filename in pending])
            shipped = ships(directory)
            if not plan.pending and not revised and not (shipped and stale_definitions(conn)):
                return plan
            conn.execute(BOOTSTRAP_SQL)
            snapshot = catalog_snapshot(conn)
            for state in revised:  # first, as in migrate: the pending files may need them
                with conn.transaction():
                    name = catch_up_revision(conn, state, role, "plan")
                after = catalog_snapshot(conn)
                plan.changes.extend(describe_changes(snapshot, after, name))
                plan.caught_up.append(name)
                snapshot = after
            todo = files_to_apply(
                [f for f in files if f.filename in pending], appliers(states), directory
            )
            for index, f in enumerate(todo):
                try:
                    with conn.transaction():
                        execute_migration(conn, f, role)
                except MigrationFailed as exc:
                    plan.blockers.append(
                        Blocker(
                            failure=exc.failure,
                            fix_sql=_fix_sql(conn, exc.failure),
                            not_planned=[later.filename for later in todo[index + 1 :]],
                        )
                    )
                    break
                after = catalog_snapshot(conn)
                plan.changes.extend(describe_changes(snapshot, after, f.filename))
                plan.planned.append(f.filename)
                snapshot = after
            for definition in stale_definitions(conn) if shipped and plan.ok else []:
                try:
                    with conn.transaction():
                        execute_migration(conn, definition, role)
                except MigrationFailed as exc:
                    plan.blockers.append(Blocker(exc.failure, _fix_sql(conn, exc.failure), []))
                    break
                after = catalog_snapshot(conn)
                plan.changes.extend(describe_changes(snapshot, after, definition.filename))
                plan.definitions.append(definition.filename)
                snapshot = after
            plan.rehearsed = snapshot
            _soften_for_report_mode(conn, plan)
            return plan
        finally:
            if not conn.closed:
                conn.rollback()


def _soften_for_report_mode(conn: psycopg.Connection, plan: MigrationPlan) -> None:
    """A database that starts in report mode lets unattributed service_role writes through.

    The guard's trigger is attached by 002, but 012 decides the mode (report when the app's
    rows predate the kit), so the plan says what the rehearsed database will really do.
    """
    state = read_mode(conn)
    if state is not None:
        if state.mode != "report":
            return
        why = ""
    elif MODE_MIGRATION in plan.pending and _holds_unaudited_tenant_data(conn):
        # A blocker stopped the rehearsal before 012: say what 012 will decide, as it decides it.
        why = (
            " (012 starts it in report mode: it already holds tenant data the audit log never saw)"
        )
    else:
        return
    prefix = "service_role writes on "
    for index, change in enumerate(plan.changes):
        if change.group == "writes that will start being refused" and change.subject.startswith(
            prefix
        ):
            plan.changes[index] = Change(
                REPORTED_GROUP,
                change.subject,
                f"allowed while the database is in report mode{why}, audited as "
                "service_role:unattributed and listed by the unattributed_service_role_writes "
                "canary under the source the writer sends (not verified); refused once you run "
                "hardening service-role-mode enforce",
                change.filename,
            )


MODE_MIGRATION = "012_service_role_mode.sql"

_TENANT_DATA_TABLES = """
    SELECT n.nspname, c.relname
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public' AND c.relname <> 'audit_events'
      AND (c.relname = 'tenants'
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                        AND NOT a.attisdropped))
"""


def _holds_rows(conn: psycopg.Connection, schema: str, table: str) -> bool | None:
    """Whether the table has a row with row security off; None when the role may not read it."""
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {}) AS e").format(sql.Identifier(schema, table))
    try:
        with conn.transaction():
            prior = conn.execute(
                "SELECT current_setting('row_security') AS v, "
                "set_config('row_security', 'off', true)"
            ).fetchone()["v"]
            held = bool(conn.execute(query).fetchone()["e"])
            conn.execute("SELECT set_config('row_security', %s, true)", (prior,))
            return held
    except psycopg.errors.InsufficientPrivilege:
        return None


def _holds_unaudited_tenant_data(conn: psycopg.Connection) -> bool:
    """012's starting-mode rule: tenant rows the audit log never saw mean report mode.

    Mirrors the ``DO $mode$`` block of 012 on the rehearsed database, inside the plan's
    transaction: an unreadable audit log counts as empty, an unreadable tenant table as holding
    data (an adopting app's, most likely).
    """
    audit = conn.execute("SELECT to_regclass('public.audit_events') IS NOT NULL AS e").fetchone()
    if audit["e"] and _holds_rows(conn, "public", "audit_events"):
        return False
    return any(
        _holds_rows(conn, row["nspname"], row["relname"]) is not False
        for row in conn.execute(_TENANT_DATA_TABLES).fetchall()
    )


class MigrationBlocked(CheckFailed):
    """The rehearsal found blockers, so nothing was applied; ``plan`` holds them."""

    def __init__(self, plan: MigrationPlan) -> None:
        first = plan.blockers[0].failure
        super().__init__(
            f"nothing was applied: {first.filename} would fail ({first.message.splitlines()[0]}); "
            "fix the blocker above, then run hardening migrate again (hardening migrate --plan "
            "shows every change first)."
        )
        self.plan = plan


def apply_after_rehearsal(
    url: str,
    directory: Path = MIGRATIONS_DIR,
    *,
    on_applied: Callable[[str, float], None] | None = None,
) -> MigrationRun:
    """Rehearse first and apply only when nothing blocks.

    Applying file by file up to a blocker would leave a live app half-adopted (001's policies
    and 002's guards in force) while the team fixes the blocker; this refuses before any change.
    """
    plan = plan_migrations(url, directory)
    if not plan.ok:
        raise MigrationBlocked(plan)
    return apply_migrations(url, directory, on_applied=on_applied)


def blocker_fix_sql(url: str, failure: MigrationFailure) -> list[str]:
    """The fix SQL for a failure ``hardening migrate`` hit (read-only)."""
    with connect(url) as conn:
        try:
            return _fix_sql(conn, failure)
        finally:
            conn.rollback()


def render_plan(plan: MigrationPlan, choice: ResolverChoice | None = None) -> list[str]:
    """The plan as plain text lines, blockers first; ``choice`` is a resolver set after it."""
    lines: list[str] = []
    if not plan.pending and not plan.definitions:
        return ["nothing to plan: every migration is applied", *resolver_lines([], choice)]
    lines.append(f"pending: {', '.join(plan.pending) or 'none'}")
    if plan.definitions:
        lines.append(f"definitions applied again: {', '.join(plan.definitions)}")
    for b in plan.blockers:
        lines += render_blocker(b.failure, b.fix_sql)
        if b.not_planned:
            lines.append(f"  not planned (they run after it): {', '.join(b.not_planned)}")
    if plan.changes:
        lines.append(f"changes ({', '.join(plan.planned + plan.definitions)}):")
    for group, changes in plan.grouped().items():
        lines.append(f"  {group} ({len(changes)}):")
        for c in changes:
            lines.append(f"    {c.subject}: {c.detail}  [{c.filename}]")
    lines += resolver_lines(plan.pending, choice)
    if plan.ok:
        lines.append("no blockers: hardening migrate would apply cleanly")
    return lines


def render_blocker(failure: MigrationFailure, fix_sql: list[str]) -> list[str]:
    where = f" {failure.location} ({failure.statement})" if failure.line else ""
    lines = [f"BLOCKER {failure.filename}{where}:"]
    lines += [f"  {line}" for line in failure.message.splitlines()]
    lines.append(f"  fix: {failure.fix}")
    if fix_sql:
        lines.append("  fix SQL:")
        lines += [f"    {s}" for s in fix_sql]
    return lines
