"""Status lines on the schema itself: migrations applied, the message keys NOT NULL, the
foreign and tenant-consistency keys, and the tenant_id index on every tenant table.
"""

from __future__ import annotations

import psycopg

from hardening_pipeline.db.migrations import compare, discover_migrations, read_applied
from hardening_pipeline.db.tenant_tables import find_tenant_tables
from hardening_pipeline.hardening.status.catalog import SCHEMA, listed, query_rows
from hardening_pipeline.hardening.status.model import CheckContext, check


@check("migrations_applied", "every migration file applied and unchanged (checksum)")
def check_migrations(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    states = compare(discover_migrations(ctx.migrations_dir), read_applied(conn))
    bad = {
        kind: [s.filename for s in states if s.state == kind]
        for kind in ("pending", "changed", "unknown")
    }
    if not any(bad.values()):
        return True, f"{len(states)} applied, checksums match", ""
    detail = "; ".join(f"{kind}: {listed(files)}" for kind, files in bad.items() if files)
    fix = (
        "changed: restore the applied file(s) from git and put the change in a new numbered "
        "migration; pending: run `hardening migrate`; unknown: update the checkout."
    )
    return False, detail, fix


@check("messages_unit_id_not_null", "messages.unit_id (and development_id) NOT NULL")
def check_not_null(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = query_rows(conn, "messages_key_columns")
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


def _keys_line(
    conn: psycopg.Connection, required: list[tuple[str, tuple[str, ...], str, tuple[str, ...]]]
) -> tuple[bool, str]:
    """Whether every required key is present, validated, RESTRICT and enforced, and the detail."""
    present = query_rows(conn, "foreign_keys", (SCHEMA,))
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
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(required)} present, validated, ON DELETE RESTRICT"


@check("foreign_keys_restrict", "required foreign keys present, validated, ON DELETE RESTRICT")
def check_foreign_keys(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    fix = (
        "recreate the key as ADD CONSTRAINT ... FOREIGN KEY ... ON DELETE RESTRICT NOT VALID, "
        "then VALIDATE CONSTRAINT (run the orphaned_messages canary first), in a new migration; "
        "re-enable disabled triggers with ALTER TABLE ... ENABLE TRIGGER ALL."
    )
    return (*_keys_line(conn, REQUIRED_FOREIGN_KEYS), fix)


@check("tenant_consistency_keys", "composite tenant-consistency keys present and validated")
def check_composite_keys(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    fix = (
        "run the tenant_misalignment canary and fix what it finds, then re-add the composite key "
        "(it needs the matching UNIQUE on the parent, e.g. units (id, development_id, tenant_id)) "
        "with ON DELETE RESTRICT NOT VALID + VALIDATE CONSTRAINT in a new migration."
    )
    return (*_keys_line(conn, TENANT_CONSISTENCY_KEYS), fix)


@check("tenant_id_indexed", "tenant_id is the leading column of a valid index on every table")
def check_tenant_index(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = {t.oid: t for t in find_tenant_tables(conn)}
    rows = query_rows(conn, "tables_with_tenant_id_index", (list(tables),))
    bad = [tables[r["oid"]].display for r in rows if not r["indexed"]]
    if not bad:
        return True, f"{len(rows)} tables", ""
    fix = (
        "CREATE INDEX CONCURRENTLY <table>_tenant_id_idx ON <schema>.<table> (tenant_id) "
        "(policies filter on tenant_id; without it every query scans the table)."
    )
    return False, f"no usable tenant_id index on {listed(bad)}", fix
