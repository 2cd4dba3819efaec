"""No module writes tenant data except through TenantScopedClient (which lives in db/).

The scan reads every Python module under hardening_pipeline/ outside db/ and flags any statement
text that writes to a tenant-scoped table, and any dynamically built write (``INSERT INTO {}``)
whose target it cannot see. It is tested against planted offenders so it cannot pass by
matching nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hardening_pipeline.seed import seed_demo_data

PACKAGE = Path(__file__).resolve().parents[1] / "hardening_pipeline"
ALLOWED = {PACKAGE / "db"}
TENANT_TABLES = "tenants|developments|units|messages|onboarding_attempts|audit_events"
_WRITE_VERB = r"(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|COPY|TRUNCATE(?:\s+TABLE)?|MERGE\s+INTO)"
_QUOTE = r'\\?"?'  # a quote, possibly escaped inside a Python string
_TARGET = rf"(?:{_QUOTE}public{_QUOTE}\s*\.\s*)?{_QUOTE}(?:{TENANT_TABLES}){_QUOTE}\b"
NAMED_WRITE = re.compile(rf"\b{_WRITE_VERB}\s+(?:ONLY\s+)?{_TARGET}", re.IGNORECASE)
DYNAMIC_WRITE = re.compile(rf"\b{_WRITE_VERB}\s+(?:ONLY\s+)?\{{\w*\}}", re.IGNORECASE)


def offending_lines(text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if NAMED_WRITE.search(line) or DYNAMIC_WRITE.search(line):
            found.append(f"{number}: {line.strip()}")
    return found


def modules_outside_db() -> list[Path]:
    return [
        p
        for p in PACKAGE.rglob("*.py")
        if not any(p.is_relative_to(allowed) for allowed in ALLOWED)
    ]


def test_no_module_outside_db_writes_tenant_tables_directly():
    problems = {
        str(p.relative_to(PACKAGE)): lines
        for p in modules_outside_db()
        if (lines := offending_lines(p.read_text()))
    }
    assert problems == {}


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
