"""The drill's checks of the restored database: it must equal the backup and keep its guarantees.

Each returns ``Invariant``s: the rows and digests equal the manifest, the catalog equals the one
recorded at backup time, the schema rebuilt and its constraints hold, RLS isolates the backed-up
tenants, the canaries are clean and the status check has no red line the source did not have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psycopg
from psycopg import sql

from hardening_pipeline.backup.export import (
    DEFAULT_SCHEMAS,
    TableStream,
    discover_layout,
    pin_text_output,
)
from hardening_pipeline.backup.manifest import AppSchemaEntry, Manifest
from hardening_pipeline.backup.tenant_key_use import ObjectKeys
from hardening_pipeline.canaries.runner import run_canaries
from hardening_pipeline.db.catalog import read_catalog
from hardening_pipeline.db.connection import connect
from hardening_pipeline.hardening.status import run_status_check
from hardening_pipeline.restore.drill_checks import run_drill_checks, tables_scoped_by_kit_policy
from hardening_pipeline.restore.drill_result import Invariant
from hardening_pipeline.restore.schema import SchemaRebuild


def rebuild_invariants(rebuild: SchemaRebuild) -> list[Invariant]:
    """The schema came back whole, and every constraint holds on the restored rows."""
    violations = [v.describe() for v in rebuild.violations]
    return [
        Invariant(
            "the backup's schema rebuilt without errors",
            not rebuild.failed,
            "; ".join(rebuild.failed[:10])
            if rebuild.failed
            else "pre-data, rows, post-data"
            + (
                f"; roles created: {', '.join(rebuild.roles_created)}"
                if rebuild.roles_created
                else ""
            ),
        ),
        Invariant(
            "every constraint holds on the restored rows",
            not violations,
            "; ".join(violations[:10])
            + (" (kept NOT VALID or left out; fix the rows at the source)" if violations else "")
            if violations
            else "all keys, foreign keys and checks validated",
        ),
    ]


def compare_catalog(url: str, app_schema: AppSchemaEntry) -> Invariant:
    """The restored app's tables, views, functions, policies... equal the backup's catalog."""
    with connect(url) as conn:
        restored = read_catalog(conn, app_schema.schemas)
        conn.rollback()
    differences = []
    for kind, recorded in sorted(app_schema.catalog.items()):
        now = set(restored.get(kind, ()))
        missing = sorted(set(recorded) - now)
        extra = sorted(now - set(recorded))
        if missing:
            differences.append(f"{kind} missing: {', '.join(missing[:5])}")
        if extra:
            differences.append(f"{kind} not in the backup: {', '.join(extra[:5])}")
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(app_schema.catalog.items()))
    return Invariant(
        "the app's schema equals the backup's catalog",
        not differences,
        "; ".join(differences) if differences else counts,
    )


def compare_with_manifest(url: str, manifest: Manifest, keys: ObjectKeys) -> list[Invariant]:
    """Re-export the restored database and compare every table's count and (keyed) digest."""
    mismatches: list[str] = []
    checked = 0
    with connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        pin_text_output(conn)
        layout = discover_layout(
            conn, manifest.app_schema.schemas if manifest.app_schema else DEFAULT_SCHEMAS
        )
        tenant = {t.qualified: t for t in layout.tenant_tables}
        shared = {t.qualified: t for t in layout.shared_tables}
        for entry in manifest.objects:  # the audit log is in both, split differently
            specs = {**shared, **tenant} if entry.tenant_id else {**tenant, **shared}
            wanted = [specs.get(t.name) for t in entry.tables]
            missing = [t.name for t, s in zip(entry.tables, wanted, strict=True) if s is None]
            if missing:
                mismatches.append(f"{entry.name}: tables {', '.join(missing)} missing")
                continue
            stream = TableStream(conn, wanted, entry.tenant_id, keys.digest_key(entry))  # type: ignore[arg-type]
            for _ in stream:
                pass
            for recorded, restored in zip(entry.tables, stream.entries, strict=True):
                checked += 1
                if (recorded.row_count, recorded.sha256) != (restored.row_count, restored.sha256):
                    mismatches.append(
                        f"{entry.name}/{recorded.name}: {restored.row_count} rows vs "
                        f"{recorded.row_count} in the manifest"
                        + ("" if recorded.row_count != restored.row_count else " (content differs)")
                    )
        conn.rollback()
    return [
        Invariant(
            "row counts and digests equal the manifest",
            not mismatches,
            f"{checked} tables compared" if not mismatches else "; ".join(mismatches[:10]),
        )
    ]


def check_rls_isolation(url: str, manifest: Manifest, sample: int = 5) -> Invariant:
    """As ``authenticated`` in each sampled tenant: no other tenant's rows, and all of its own
    where the kit's permissive policy is what grants them (see ``tables_scoped_by_kit_policy``).
    """
    problems = []
    tenants = [o for o in manifest.objects if o.tenant_id is not None][:sample]
    with connect(url) as conn:
        sees_own = tables_scoped_by_kit_policy(conn)
        for obj in tenants:
            with conn.transaction(force_rollback=True):
                conn.execute("SET LOCAL ROLE authenticated")
                conn.execute("SELECT set_config('app.tenant_id', %s, true)", (obj.tenant_id,))
                for table in obj.tables:
                    if table.name in ("tenants", "audit_events"):
                        continue
                    query = sql.SQL(
                        "SELECT count(*) FILTER (WHERE tenant_id = %s) AS own, "
                        "count(*) FILTER (WHERE tenant_id <> %s) AS other FROM {}"
                    ).format(sql.Identifier("public", table.name))
                    row = conn.execute(query, (obj.tenant_id, obj.tenant_id)).fetchone()
                    own_expected = table.row_count if table.name in sees_own else row["own"]
                    if row["other"] or row["own"] != own_expected:
                        problems.append(
                            f"tenant {obj.tenant_id} sees {row['own']} own / {row['other']} "
                            f"foreign rows in {table.name} (expected {table.row_count} / 0)"
                        )
    if not tenants:
        # A new or single-customer install: isolation is proved on synthetic probe tenants by
        # the drill checks, which always run (a drill without them is not passed).
        return Invariant(
            "RLS isolates tenants on the restored database",
            True,
            "no tenant in the backup; the drill checks prove isolation on probe tenants",
        )
    return Invariant(
        "RLS isolates tenants on the restored database",
        not problems,
        "; ".join(problems) if problems else f"{len(tenants)} tenant(s) checked as authenticated",
    )


def check_canaries(url: str) -> Invariant:
    results = run_canaries(url, names=["orphaned_messages", "tenant_misalignment"])
    bad = [f"{r.name}: {r.error or r.count}" for r in results if not r.passed]
    return Invariant(
        "zero orphaned and misaligned rows",
        not bad,
        "; ".join(bad) if bad else "orphaned_messages = 0, tenant_misalignment = 0",
    )


def run_drill_tests(url: str) -> tuple[int, int, str]:
    """Run the packaged drill checks against the restored database: (passed, failed, output)."""
    checks = run_drill_checks(url)
    return checks.passed, checks.failed, checks.output


# Status lines about how the source database is run, not about whether its backup restores: the
# restored copy carries the source's service-role mode, and a team still in report mode must be
# able to prove its backups (the live database's own status shows that line red). DDL recording
# is event triggers, which a schema dump does not carry and the drill does not put back: they
# would run the backup's own function on every later DDL as the drill's superuser.
NOT_ABOUT_THE_RESTORE = frozenset({"service_role_rule_enforced", "audit_ddl_recorded"})


def status_invariants(
    url: str, source_red: Sequence[str] | None = None, erased: Mapping[int, bytes] | None = None
) -> list[Invariant]:
    """The status check on the restored database has no red line the source did not have.

    ``source_red`` are the lines red on the source at backup time (recorded in the manifest):
    those are the app's own findings, shown as inherited. A backup that did not record them
    must be all green. ``erased`` tenants' audit rows are missing (their hashes are used).
    """
    report = run_status_check(url, erased_rows=erased)
    inherited = set(source_red or ()) | NOT_ABOUT_THE_RESTORE
    red = [line.name for line in report.lines if not line.passed and line.name not in inherited]
    noted = [line.name for line in report.lines if not line.passed and line.name not in red]
    green = f"{len(report.lines) - len(noted)} checks green" + (
        f" ({', '.join(noted)} red as in the source: inherited, not a restore problem)"
        if noted
        else ""
    )
    return [
        Invariant(
            "status check has no red line the source did not have",
            not red,
            "red on the restored copy only: " + ", ".join(red) if red else green,
        )
    ]
