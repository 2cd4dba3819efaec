"""Find code that writes tenant tables without going through ``hardening_pipeline/db/``.

TenantScopedClient (in db/) and the restore loader (restore/bulk_load.py, which puts backed-up
rows back exactly as they were) are the only sanctioned writers. This
scanner reads every other Python module of the package as text and flags statement text that
writes to a tenant-scoped table, and any dynamically built write (``INSERT INTO {}``) whose
target it cannot see. It lints this package in the test suite; it says nothing about an app's
own writers (evidence item B asks the database instead, see ``db/service_role_mode.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
TENANT_TABLES = "tenants|developments|units|messages|onboarding_attempts|audit_events"
_WRITE_VERB = r"(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|COPY|TRUNCATE(?:\s+TABLE)?|MERGE\s+INTO)"
_QUOTE = r'\\?"?'  # a quote, possibly escaped inside a Python string
_TARGET = rf"(?:{_QUOTE}public{_QUOTE}\s*\.\s*)?{_QUOTE}(?:{TENANT_TABLES}){_QUOTE}\b"
NAMED_WRITE = re.compile(rf"\b{_WRITE_VERB}\s+(?:ONLY\s+)?{_TARGET}", re.IGNORECASE)
DYNAMIC_WRITE = re.compile(rf"\b{_WRITE_VERB}\s+(?:ONLY\s+)?\{{\w*\}}", re.IGNORECASE)


# The restore drill sends a few writes to prove the restored database refuses them (always in a
# rolled-back transaction). Each such line carries this marker, so it stays visible in review
# and the exemption covers that line alone.
PROBE_MARKER = "# refused-write probe"


def offending_lines(text: str) -> list[str]:
    """``"<line number>: <line>"`` for every line that looks like a direct tenant write."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if PROBE_MARKER in line:
            continue
        if NAMED_WRITE.search(line) or DYNAMIC_WRITE.search(line):
            found.append(f"{number}: {line.strip()}")
    return found


# Relative to the package: a folder sanctions everything in it, a file only itself.
SANCTIONED_WRITERS = ("db", "restore/bulk_load.py")


def modules_outside_db(package: Path = PACKAGE) -> list[Path]:
    """Every module except the sanctioned writers (db/ and the restore loader)."""
    allowed = [package / place for place in SANCTIONED_WRITERS]
    return sorted(p for p in package.rglob("*.py") if not any(p.is_relative_to(a) for a in allowed))


def direct_tenant_writes(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Module path (relative to the package) -> offending lines; empty when all is well."""
    return {
        str(p.relative_to(package)): lines
        for p in modules_outside_db(package)
        if (lines := offending_lines(p.read_text(encoding="utf-8")))
    }
