"""No module writes tenant data except through TenantScopedClient (which lives in db/).

The scan reads every Python module under hardening_pipeline/ outside db/ and flags any statement
text that writes to a tenant-scoped table, and any dynamically built write (``INSERT INTO {}``)
whose target it cannot see. It is tested against planted offenders so it cannot pass by
matching nothing.
"""

from __future__ import annotations

import pytest

from hardening_pipeline.db.write_paths import (
    PACKAGE,
    PROBE_MARKER,
    direct_tenant_writes,
    modules_outside_db,
    offending_lines,
)
from hardening_pipeline.seed import seed_demo_data


def test_no_module_outside_db_writes_tenant_tables_directly():
    assert direct_tenant_writes() == {}


@pytest.mark.parametrize(
    "planted",
    [
        'conn.execute("INSERT INTO messages (body) VALUES (%s)", x)',
        "cur.execute('update public.units set label = 1')",
        'sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(t))',
        '"COPY onboarding_attempts FROM STDIN"',
        '"truncate table tenants"',
        'f"INSERT INTO {table} VALUES (1)"',
        '"DELETE FROM \\"messages\\" WHERE true"',
    ],
)
def test_the_scan_catches_planted_writes(planted):
    assert offending_lines(planted)
    # A probe marker exempts its own line only, not the next one.
    marked = f"{planted}  {PROBE_MARKER}\n{planted}"
    assert [line.split(":", 1)[0] for line in offending_lines(marked)] == ["2"]


def test_only_the_restore_drill_probes_refused_writes():
    marked = {
        str(path.relative_to(PACKAGE))
        for path in modules_outside_db()
        if PROBE_MARKER in path.read_text(encoding="utf-8")
    }
    assert marked == {"restore/drill_checks.py", "restore/drill_probe_rows.py"}


@pytest.mark.parametrize(
    "harmless",
    [
        '"SELECT count(*) FROM messages"',
        '"COPY (SELECT * FROM messages) TO STDOUT"',
        "# we never update the audit log",
        'tx.insert("messages", row)',
    ],
)
def test_the_scan_leaves_reads_alone(harmless):
    assert offending_lines(harmless) == []


def test_seed_writes_only_through_the_client_with_its_actor(db_url, admin):
    result = seed_demo_data(db_url, tenants=2, messages_per_unit=3, random_seed=7)
    assert (result.tenants, result.units, result.messages) == (2, 20, 60)
    actors = admin.execute(
        "SELECT DISTINCT actor, db_role FROM audit_events WHERE actor LIKE '%seed%'"
    ).fetchall()
    assert actors == [{"actor": "service_role:seed", "db_role": "service_role"}]
    counted = admin.execute(
        "SELECT (SELECT count(*) FROM messages) AS m, "
        "(SELECT count(*) FROM audit_events WHERE table_name = 'messages') AS a, "
        "(SELECT count(*) FROM onboarding_attempts WHERE status = 'failed') AS failed"
    ).fetchone()
    assert counted == {"m": 60, "a": 60, "failed": 2}


def test_seeding_twice_continues_numbering(db_url, admin):
    seed_demo_data(db_url, tenants=1, messages_per_unit=0)
    seed_demo_data(db_url, tenants=1, messages_per_unit=0)
    slugs = [r["slug"] for r in admin.execute("SELECT slug FROM tenants ORDER BY slug")]
    assert slugs == ["demo-00001", "demo-00002"]


def test_a_planted_module_outside_db_is_reported(tmp_path):
    package = tmp_path / "pkg"
    (package / "db").mkdir(parents=True)
    (package / "db" / "ok.py").write_text('Q = "INSERT INTO messages VALUES (1)"\n')
    (package / "jobs").mkdir()
    (package / "jobs" / "sneaky.py").write_text('Q = "UPDATE units SET label = 1"\n')
    assert direct_tenant_writes(package) == {
        "jobs/sneaky.py": ['1: Q = "UPDATE units SET label = 1"']
    }


def test_the_restore_loader_is_the_only_sanctioned_writer_outside_db(tmp_path):
    package = tmp_path / "pkg"
    (package / "restore").mkdir(parents=True)
    (package / "restore" / "bulk_load.py").write_text('Q = "COPY messages FROM STDIN"\n')
    (package / "restore" / "drill.py").write_text('Q = "DELETE FROM units"\n')
    assert direct_tenant_writes(package) == {"restore/drill.py": ['1: Q = "DELETE FROM units"']}
