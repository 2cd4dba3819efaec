"""Three ways to today's schema end with the same catalog.

A database migrated fresh, one migrated a file at a time from 001, and one migrated first by the
earliest release's files (the texts of 001, 002, 003, 006 and 010 that were revised after release,
whose checksums ``EARLIER_REVISIONS`` still accepts; ``tests/fixtures/earliest_release``) and
then by this checkout's: every table, column, constraint, index, trigger, policy, function
body and grant in ``public`` and ``hardening`` must be the same in all three.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardening_pipeline.db.catalog import catalog_snapshot, read_catalog
from hardening_pipeline.db.migration_plan import plan_migrations
from hardening_pipeline.db.migrations import (
    EARLIER_REVISIONS,
    MIGRATIONS_DIR,
    apply_migrations,
    discover_migrations,
)
from tests.support.db import admin_connect, create_database, drop_database

REVISED_TEXTS = Path(__file__).parent / "fixtures" / "earliest_release" / "migrations"
SCHEMAS = ("public", "hardening")


def catalog(url: str) -> dict[str, set[str]]:
    """Definitions (bodies, constraints, policies, ...), owners, grants and RLS flags, and the
    kit's own bookkeeping rows, as comparable text."""
    with admin_connect(url) as conn:
        summary = {kind: set(found) for kind, found in read_catalog(conn, SCHEMAS).items()}
        with conn.transaction():
            for kind, entries in catalog_snapshot(conn).items():
                summary[f"plan {kind}"] = {
                    f"{key} = {json.dumps(value, sort_keys=True)}" for key, value in entries.items()
                }
        summary["managed tables"] = {
            repr(tuple(row.values()))
            for row in conn.execute(
                "SELECT table_name, created_by_kit, rls_was_enabled, tenant_policy "
                "FROM hardening.managed_tables"
            )
        }
    return summary


def differences(
    reference: dict[str, set[str]], other: dict[str, set[str]]
) -> dict[str, tuple[list[str], list[str]]]:
    """Per kind: (only in the reference, only in the other)."""
    return {
        kind: (
            sorted(reference[kind] - other.get(kind, set())),
            sorted(other.get(kind, set()) - reference[kind]),
        )
        for kind in reference.keys() | other.keys()
        if reference.get(kind) != other.get(kind)
    }


def earliest_release(folder: Path) -> list[str]:
    """The earliest release's 001 to 010 in ``folder``: the five revised texts as released, the
    others as they still are (unchanged since, which the frozen-migrations test keeps true)."""
    folder.mkdir()
    names = [m.filename for m in discover_migrations(MIGRATIONS_DIR)][:10]
    for name in names:
        revised = REVISED_TEXTS / name
        shutil.copy(revised if revised.exists() else MIGRATIONS_DIR / name, folder / name)
    assert sorted(p.name for p in REVISED_TEXTS.iterdir()) == sorted(EARLIER_REVISIONS)
    return names


@pytest.fixture
def three_databases(pg_server_url: str) -> Iterator[tuple[str, str, str]]:
    urls = tuple(create_database(pg_server_url) for _ in range(3))
    yield urls  # type: ignore[misc]
    for url in urls:
        drop_database(pg_server_url, url)


def test_fresh_file_by_file_and_upgraded_from_the_earliest_release_end_the_same(
    three_databases: tuple[str, str, str], tmp_path: Path
) -> None:
    fresh, stepwise, upgraded = three_databases
    apply_migrations(fresh)
    # As a user who upgraded at every release would have: the files known then, one more each time.
    for migration in discover_migrations(MIGRATIONS_DIR):
        shutil.copy(MIGRATIONS_DIR / migration.filename, tmp_path / migration.filename)
        assert apply_migrations(stepwise, tmp_path).applied == [migration.filename]
    released = earliest_release(tmp_path / "earliest")
    assert apply_migrations(upgraded, tmp_path / "earliest").applied == released
    # The plan rehearses the catch-ups before the pending files, as migrate runs them.
    plan = plan_migrations(upgraded)
    assert plan.ok, [b.failure for b in plan.blockers]
    assert len(plan.caught_up) == len(EARLIER_REVISIONS) and plan.planned == plan.pending
    later = apply_migrations(upgraded).applied
    assert later and not set(later) & set(released)  # the revised texts count as applied

    reference = catalog(fresh)
    assert differences(reference, catalog(stepwise)) == {}
    assert differences(reference, catalog(upgraded)) == {}
