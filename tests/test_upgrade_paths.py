"""Every way to today's schema ends with the same catalog.

A database migrated fresh (from the baseline, ``sql/baseline``), one migrated a file at a time
from 001, and one migrated first by the earliest release's files (the texts of 001, 002, 003,
006 and 010 that were revised after release, whose checksums ``EARLIER_REVISIONS`` still
accepts; ``tests/fixtures/earliest_release``) and then by this checkout's: every table, column,
constraint, index, trigger, policy, function body and grant in ``public`` and ``hardening``
must be the same in all three. On Supabase's own database, adopting a realistic app as the
non-superuser ``postgres``, the baseline and the versioned files must also leave the same
catalog and the same adoption log.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardening_pipeline.db.baseline import FROM_BASELINE, definitions
from hardening_pipeline.db.catalog import catalog_snapshot, read_catalog
from hardening_pipeline.db.migration_plan import plan_migrations
from hardening_pipeline.db.migrations import (
    EARLIER_REVISIONS,
    MIGRATIONS_DIR,
    MigrationFailed,
    MigrationFailure,
    apply_migrations,
    discover_migrations,
)
from hardening_pipeline.db.shipped_functions import (
    definitions_in,
    functions_defined,
    shipped_functions,
)
from tests.support.db import admin_connect, create_database, drop_database
from tests.support.supabase_db import (
    APP_TEMPLATE,
    SupabaseServer,
    apply_blocker_fixes,
    supabase_server_each_major,
)

supabase_server = supabase_server_each_major

REVISED_TEXTS = Path(__file__).parent / "fixtures" / "earliest_release" / "migrations"
SCHEMAS = ("public", "hardening", "crm")


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
        for kind, query in BOOKKEEPING.items():
            summary[kind] = {repr(tuple(row.values())) for row in conn.execute(query)}
    return summary


BOOKKEEPING = {
    "managed tables": "SELECT table_name, created_by_kit, rls_was_enabled, tenant_policy "
    "FROM hardening.managed_tables",
    "adoption log": "SELECT migration, object, action, detail FROM hardening.adoption_log",
    "service role mode": "SELECT mode, reason FROM hardening.service_role_mode",
    "job locks": "SELECT job FROM hardening.job_locks",
    "tenant resolver": "SELECT kind, claim_paths FROM hardening.tenant_resolver",
}


def changed_definitions() -> list[str]:
    """The definition files whose function is not as the versioned files last left it: another
    body or form, or another owner."""
    last = functions_defined(m.sql for m in discover_migrations())
    today = shipped_functions()
    return [
        d.filename
        for d in definitions()
        if any(last.get(name) != today[name] for name in definitions_in(d.sql))
    ]


def from_baseline(url: str) -> list[bool]:
    with admin_connect(url) as conn:
        rows = conn.execute("SELECT applied_by FROM hardening.schema_migrations").fetchall()
    return [f"{FROM_BASELINE} as " in row["applied_by"] for row in rows]


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
    run = apply_migrations(fresh)
    assert run.applied == [m.filename for m in discover_migrations()] and not run.definitions
    assert set(from_baseline(fresh)) == {True}
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
    assert plan.definitions == changed_definitions()  # rehearsed too, after the files
    later = apply_migrations(upgraded)
    assert later.applied and not set(later.applied) & set(released)  # revised texts count
    assert not any(from_baseline(upgraded)) and not any(from_baseline(stepwise))
    # The versioned files end with the functions as they last defined them: the definitions
    # changed since are applied again, once.
    assert later.definitions == changed_definitions()
    assert apply_migrations(stepwise).definitions == changed_definitions()
    assert apply_migrations(upgraded).definitions == apply_migrations(fresh).definitions == []

    reference = catalog(fresh)
    assert differences(reference, catalog(stepwise)) == {}
    assert differences(reference, catalog(upgraded)) == {}


# A tenant table outside public (019), keyed on two columns (018), next to the app's own.
OTHER_SCHEMA_TABLE = """
CREATE SCHEMA crm;
CREATE TABLE crm.notes (
    tenant_id uuid NOT NULL, note_no integer NOT NULL, body text NOT NULL,
    PRIMARY KEY (tenant_id, note_no)
);
"""


def adopt_after_the_blocker(url: str, directory: Path) -> MigrationFailure:
    """Migrate the app as its team would without the plan: stopped by 003's pre-flight, the
    legacy rows fixed (001 and 002 already audit those writes), then migrated again."""
    with admin_connect(url, autocommit=True) as conn:
        assert not conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()["rolsuper"]
        conn.execute(OTHER_SCHEMA_TABLE)
    with pytest.raises(MigrationFailed) as stopped:
        apply_migrations(url, directory)
    # Where the run stopped, the app still answers its signed-in users (001's policies call
    # today's current_tenant_id, which needs the resolver).
    claims = json.dumps({"sub": str(uuid.uuid4()), "tenant_id": str(uuid.uuid4())})
    with admin_connect(url) as conn:
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
        assert conn.execute("SELECT count(*) AS n FROM public.messages").fetchone()["n"] == 0
    apply_blocker_fixes(url)
    assert apply_migrations(url, directory).applied[0] == "003_message_safety.sql"
    return stopped.value.failure


def test_the_baseline_and_the_versioned_files_adopt_a_supabase_app_alike(
    supabase_server: SupabaseServer, tmp_path: Path
) -> None:
    versioned = tmp_path / "versioned"  # a copy of the files: the baseline stands in only for
    shutil.copytree(MIGRATIONS_DIR, versioned)  # the shipped folder
    by_baseline = supabase_server.clone(APP_TEMPLATE)  # legacy rows not fixed yet
    by_files = supabase_server.clone(APP_TEMPLATE)
    try:
        # The baseline names its own line; a second run goes on with the baseline.
        failure = adopt_after_the_blocker(by_baseline, MIGRATIONS_DIR)
        assert (failure.filename, failure.source) == (
            "003_message_safety.sql",
            "baseline/021_baseline.sql",
        )
        assert adopt_after_the_blocker(by_files, versioned).source is None
        assert set(from_baseline(by_baseline)) == {True} and not any(from_baseline(by_files))
        assert apply_migrations(by_files).definitions == changed_definitions()
        assert apply_migrations(by_files).definitions == []
        reference = catalog(by_baseline)
        assert reference["adoption log"] and differences(reference, catalog(by_files)) == {}
    finally:
        supabase_server.drop(by_baseline)
        supabase_server.drop(by_files)
