"""The migration runner: in order, once, under a lock, refusing drift and unsafe legacy data."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import pytest

from hardening_pipeline.db.migrations import (
    EARLIER_REVISIONS,
    MIGRATIONS_DIR,
    apply_migrations,
    discover_migrations,
    migration_status,
)
from hardening_pipeline.errors import CheckFailed, ConfigError
from tests.support.db import admin_connect


def copy_migrations(target: Path, upto: int | None = None) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for f in discover_migrations():
        if upto is None or f.number <= upto:
            shutil.copy(MIGRATIONS_DIR / f.filename, target / f.filename)
    return target


def applied_files(url: str) -> list[str]:
    with admin_connect(url) as conn:
        rows = conn.execute("SELECT filename FROM hardening.schema_migrations ORDER BY 1")
        return [r["filename"] for r in rows.fetchall()]


def test_applies_in_order_and_records_who_and_what(empty_db_url):
    run = apply_migrations(empty_db_url, applied_by="ci@test")
    names = [f.filename for f in discover_migrations()]
    assert run.applied == names and run.already_applied == []
    with admin_connect(empty_db_url) as conn:
        rows = conn.execute(
            "SELECT * FROM hardening.schema_migrations ORDER BY filename"
        ).fetchall()
    assert [r["filename"] for r in rows] == names
    assert [r["sha256"] for r in rows] == [f.sha256 for f in discover_migrations()]
    assert all(r["applied_by"].startswith("ci@test from the baseline as ") for r in rows)


def test_second_run_applies_nothing(empty_db_url):
    apply_migrations(empty_db_url)
    again = apply_migrations(empty_db_url)
    assert again.applied == []
    assert len(again.already_applied) == len(discover_migrations())
    assert {s.state for s in migration_status(empty_db_url)} == {"applied"}


def test_status_reports_pending_before_anything_runs(empty_db_url):
    states = migration_status(empty_db_url)
    assert {s.state for s in states} == {"pending"}


def test_changed_applied_file_is_refused(empty_db_url, tmp_path):
    folder = copy_migrations(tmp_path / "m")
    apply_migrations(empty_db_url, folder)
    target = folder / "002_audit_events.sql"
    target.write_text(target.read_text() + "\n-- sneaky edit\n")
    with pytest.raises(ConfigError, match="002_audit_events.sql changed on disk"):
        apply_migrations(empty_db_url, folder)
    states = {s.filename: s.state for s in migration_status(empty_db_url, folder)}
    assert states["002_audit_events.sql"] == "changed"


def test_a_record_of_an_earlier_revision_counts_as_applied(empty_db_url):
    """Databases migrated before 001-003, 006 and 010 were revised for adoption keep working."""
    apply_migrations(empty_db_url)
    with admin_connect(empty_db_url, autocommit=True) as conn:
        for filename, earlier in EARLIER_REVISIONS.items():
            conn.execute(
                "UPDATE hardening.schema_migrations SET sha256 = %s WHERE filename = %s",
                (sorted(earlier)[0], filename),
            )
    states = {s.filename: s.state for s in migration_status(empty_db_url)}
    assert set(states.values()) == {"applied"}
    assert apply_migrations(empty_db_url).applied == []
    # Any other text is still drift.
    with admin_connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE hardening.schema_migrations SET sha256 = repeat('0', 64) "
            "WHERE filename = '001_core_schema.sql'"
        )
    with pytest.raises(ConfigError, match="001_core_schema.sql changed on disk"):
        apply_migrations(empty_db_url)


def test_database_ahead_of_checkout_is_refused(empty_db_url, tmp_path):
    apply_migrations(empty_db_url)
    older = copy_migrations(tmp_path / "old", upto=2)
    with pytest.raises(ConfigError, match="does not know"):
        apply_migrations(empty_db_url, older)


def test_new_file_numbered_before_applied_ones_is_refused(empty_db_url, tmp_path):
    folder = copy_migrations(tmp_path / "m")
    apply_migrations(empty_db_url, folder)
    (folder / "002_a_late_arrival.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError):
        apply_migrations(empty_db_url, folder)


def test_duplicate_numbers_and_bad_names_are_refused(tmp_path):
    folder = copy_migrations(tmp_path / "m", upto=1)
    (folder / "001_again.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match="share the number 001"):
        discover_migrations(folder)
    other = tmp_path / "n"
    other.mkdir()
    (other / "1-Bad Name.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match="not named NNN_lower_snake.sql"):
        discover_migrations(other)


def test_concurrent_runners_apply_each_file_once(empty_db_url):
    results, errors = [], []
    barrier = threading.Barrier(3)

    def run():
        barrier.wait()
        try:
            results.append(apply_migrations(empty_db_url))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    applied_counts = sorted(len(r.applied) for r in results)
    assert applied_counts == [0, 0, len(discover_migrations())]
    assert applied_files(empty_db_url) == [f.filename for f in discover_migrations()]


def test_failed_migration_rolls_back_and_is_not_recorded(empty_db_url, tmp_path):
    folder = copy_migrations(tmp_path / "m", upto=1)
    (folder / "002_broken.sql").write_text(
        "CREATE TABLE public.half_done (id int);\nSELECT * FROM no_such_table;\n"
    )
    with pytest.raises(CheckFailed, match="002_broken.sql failed and was rolled back"):
        apply_migrations(empty_db_url, folder)
    assert applied_files(empty_db_url) == ["001_core_schema.sql"]
    with admin_connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('public.half_done') AS t").fetchone()["t"] is None


def _legacy_database(url: str, tmp_path: Path) -> dict[str, list[uuid.UUID]]:
    """A database at 002 holding the kinds of rows 003 must refuse to paper over."""
    apply_migrations(url, copy_migrations(tmp_path / "legacy", upto=2))
    t1, t2, d1, d2, u1, u2 = (uuid.uuid4() for _ in range(6))
    bad: dict[str, list[uuid.UUID]] = {"null_unit": [], "orphan": [], "misaligned": []}
    with admin_connect(url) as conn:
        conn.execute("SELECT set_config('app.actor', 'legacy-import', false)")
        conn.execute(
            "INSERT INTO tenants (id, slug, name) VALUES (%s, 'one', 'One'), (%s, 'two', 'Two')",
            (t1, t2),
        )
        conn.execute(
            "INSERT INTO developments (id, tenant_id, name) VALUES (%s, %s, 'D1'), (%s, %s, 'D2')",
            (d1, t1, d2, t2),
        )
        conn.execute(
            "INSERT INTO units (id, tenant_id, development_id, label) "
            "VALUES (%s, %s, %s, 'U1'), (%s, %s, %s, 'U2')",
            (u1, t1, d1, u2, t2, d2),
        )

        def msg(tenant, dev, unit):
            mid = uuid.uuid4()
            conn.execute(
                "INSERT INTO messages (id, tenant_id, development_id, unit_id, sender, body) "
                "VALUES (%s, %s, %s, %s, 'legacy', 'old')",
                (mid, tenant, dev, unit),
            )
            return mid

        msg(t1, d1, u1)  # a good one
        bad["null_unit"].append(msg(t1, d1, None))
        bad["orphan"].append(msg(t1, d1, uuid.uuid4()))
        bad["misaligned"].append(msg(t1, d1, u2))
        conn.commit()
    return bad


def test_003_on_legacy_rows_stops_with_a_report_and_changes_nothing(empty_db_url, tmp_path):
    bad = _legacy_database(empty_db_url, tmp_path)
    with pytest.raises(CheckFailed) as caught:
        apply_migrations(empty_db_url)
    text = str(caught.value)
    assert "003_message_safety.sql" in text and "nothing was changed" in text
    assert "1 message(s) without a unit or development" in text and str(bad["null_unit"][0]) in text
    assert "1 orphaned message(s)" in text and str(bad["orphan"][0]) in text
    assert "1 misaligned message(s)" in text and str(bad["misaligned"][0]) in text
    assert applied_files(empty_db_url) == ["001_core_schema.sql", "002_audit_events.sql"]
    with admin_connect(empty_db_url) as conn:
        fks = conn.execute(
            "SELECT count(*) AS n FROM pg_constraint WHERE conrelid = 'messages'::regclass "
            "AND contype IN ('f', 'c')"
        ).fetchone()["n"]
        nullable = conn.execute(
            "SELECT is_nullable FROM information_schema.columns "
            "WHERE table_name = 'messages' AND column_name = 'unit_id'"
        ).fetchone()["is_nullable"]
        count = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
    assert (fks, nullable, count) == (0, "YES", 4)


def test_003_applies_once_legacy_rows_are_fixed(empty_db_url, tmp_path):
    bad = _legacy_database(empty_db_url, tmp_path)
    with admin_connect(empty_db_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'cleanup', false)")
        conn.execute(
            "DELETE FROM messages WHERE id = ANY(%s)",
            ([i for ids in bad.values() for i in ids],),
        )
        conn.commit()
    run = apply_migrations(empty_db_url)
    assert run.applied == [f.filename for f in discover_migrations() if f.number >= 3]


def test_004_refuses_a_policy_open_to_public(empty_db_url, tmp_path):
    apply_migrations(empty_db_url, copy_migrations(tmp_path / "m", upto=3))
    with admin_connect(empty_db_url) as conn:
        conn.execute("CREATE POLICY everyone_reads ON messages FOR SELECT USING (true)")
        conn.commit()
    with pytest.raises(CheckFailed, match="everyone_reads on public.messages"):
        apply_migrations(empty_db_url)
    assert "004_rls_lockdown.sql" not in applied_files(empty_db_url)


def test_004_locks_down_a_tenant_table_it_was_never_told_about(empty_db_url, tmp_path):
    apply_migrations(empty_db_url, copy_migrations(tmp_path / "m", upto=3))
    with admin_connect(empty_db_url) as conn:
        conn.execute("CREATE TABLE invoices (id uuid PRIMARY KEY, tenant_id uuid NOT NULL)")
        conn.execute("GRANT ALL ON invoices TO anon")
        conn.commit()
    apply_migrations(empty_db_url)
    with admin_connect(empty_db_url) as conn:
        row = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity, "
            "has_table_privilege('anon', 'invoices', 'SELECT') AS anon_select, "
            "EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = 'invoices' "
            "AND indexdef LIKE '%(tenant_id)%') AS indexed "
            "FROM pg_class WHERE relname = 'invoices'"
        ).fetchone()
    assert row == {
        "relrowsecurity": True,
        "relforcerowsecurity": True,
        "anon_select": False,
        "indexed": True,
    }
