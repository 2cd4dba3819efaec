"""The Supabase-faithful database is what Supabase's own SQL builds, and the kit migrates on it.

Every test on the database runs on each major in ``SUPABASE_MAJORS`` (ids ``pg15``, ``pg17``).

The second half reproduces the first adoption failure: 002 and 006 (and 010) handed objects to
the audit owner in a way only a superuser may, so ``hardening migrate`` as Supabase's ``postgres``
stopped at "permission denied for schema public".
"""

from __future__ import annotations

import psycopg
import pytest

from hardening_pipeline.db.migrations import apply_migrations, discover_migrations
from tests.support.supabase_db import (
    PG15_BIN,
    running_supabase,
    supabase_server_each_major,  # noqa: F401  (fixture: this module runs on every major)
)


def _one(url: str, query: str, params: tuple = ()) -> tuple:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchone()


def test_postgres_is_not_a_superuser_but_supabase_admin_is(supabase_db_url: str) -> None:
    roles = {}
    with psycopg.connect(supabase_db_url) as conn:
        for row in conn.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles "
            "WHERE rolname IN ('postgres', 'supabase_admin', 'anon', 'authenticated', "
            "'service_role')"
        ):
            roles[row[0]] = row[1:]
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert roles == {
        "postgres": (False, True, True),
        "supabase_admin": (True, True, True),
        "anon": (False, False, False),
        "authenticated": (False, False, False),
        "service_role": (False, False, True),
    }


def test_postgres_cannot_do_what_only_a_superuser_may(supabase_db_url: str) -> None:
    with psycopg.connect(supabase_db_url) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER ROLE anon BYPASSRLS")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE EXTENSION IF NOT EXISTS file_fdw")


def test_default_privileges_open_new_public_objects_to_the_api_roles(supabase_db_url: str) -> None:
    with psycopg.connect(supabase_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.fresh (id bigint GENERATED ALWAYS AS IDENTITY)")
        conn.execute("CREATE FUNCTION public.fresh_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        for role in ("anon", "authenticated", "service_role"):
            row = conn.execute(
                "SELECT has_table_privilege(%(r)s, 'public.fresh', 'INSERT,DELETE,TRUNCATE'),"
                " has_sequence_privilege(%(r)s, 'public.fresh_id_seq', 'USAGE,UPDATE'),"
                " has_function_privilege(%(r)s, 'public.fresh_fn()', 'EXECUTE')",
                {"r": role},
            ).fetchone()
            assert row == (True, True, True), role


def test_auth_functions_read_postgrest_claims(supabase_db_url: str) -> None:
    with psycopg.connect(supabase_db_url) as conn:
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true)",
            ('{"sub": "a11ce000-0000-4000-8000-000000000000", "role": "authenticated"}',),
        )
        row = conn.execute("SELECT auth.uid()::text, auth.role(), auth.jwt() ->> 'sub'").fetchone()
        assert row == (
            "a11ce000-0000-4000-8000-000000000000",
            "authenticated",
            "a11ce000-0000-4000-8000-000000000000",
        )
        conn.rollback()
        # Outside a request nothing is set: no user.
        assert conn.execute("SELECT auth.uid(), auth.jwt()").fetchone() == (None, None)


def test_the_app_is_owned_by_postgres_and_open_by_default(supabase_app_url: str) -> None:
    owner, anon_can_write = _one(
        supabase_app_url,
        "SELECT relowner::regrole::text, has_table_privilege('anon', oid, 'INSERT') "
        "FROM pg_class WHERE oid = 'public.messages'::regclass",
    )
    assert (owner, anon_can_write) == ("postgres", True)


def test_every_migration_applies_as_supabase_postgres(supabase_db_url: str) -> None:
    run = apply_migrations(supabase_db_url, applied_by="test-supabase")
    assert run.applied == [f.filename for f in discover_migrations()]
    with psycopg.connect(supabase_db_url) as conn:
        owners = dict(
            conn.execute(
                "SELECT c.oid::regclass::text, c.relowner::regrole::text FROM pg_class c "
                "WHERE c.oid IN ('public.audit_events'::regclass,"
                " 'hardening.audit_seals'::regclass, 'hardening.audit_seal_checks'::regclass)"
            ).fetchall()
        )
        assert set(owners.values()) == {"hardening_audit_owner"}
        # The temporary CREATE grants that let ownership move are gone again.
        assert conn.execute(
            "SELECT has_schema_privilege('hardening_audit_owner', 'public', 'CREATE'),"
            " has_schema_privilege('hardening_audit_owner', 'hardening', 'CREATE')"
        ).fetchone() == (False, False)
        # Supabase's default privileges do not leave the audit log's sequence open.
        assert conn.execute(
            "SELECT bool_or(has_sequence_privilege(r, 'public.audit_events_id_seq', 'USAGE'))"
            " FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r"
        ).fetchone() == (False,)


def test_audit_log_stays_append_only_for_supabase_postgres(supabase_db_url: str) -> None:
    apply_migrations(supabase_db_url, applied_by="test-supabase")
    with psycopg.connect(supabase_db_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:probe', true)")
        conn.execute("INSERT INTO public.tenants (slug, name) VALUES ('probe', 'Probe')")
        assert conn.execute("SELECT count(*) FROM public.audit_events").fetchone() == (1,)
        for statement in (
            "UPDATE public.audit_events SET actor = 'forged'",
            "DELETE FROM public.audit_events",
            "TRUNCATE public.audit_events",
            "UPDATE hardening.audit_seals SET row_count = 0",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with conn.transaction():
                    conn.execute(statement)


@pytest.mark.parametrize(
    ("major", "ci", "outcome"),
    [
        (15, "", pytest.skip.Exception),
        (15, "true", pytest.skip.Exception),
        (17, "", pytest.skip.Exception),
        (17, "true", pytest.fail.Exception),  # CI always fetches 17: it may not go green skipping
    ],
)
def test_missing_binaries_skip_with_the_reason_and_17_fails_on_ci(
    tmp_path, monkeypatch: pytest.MonkeyPatch, major: int, ci: str, outcome: type
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=f"Postgres {major} binaries not found at"):
        with running_supabase(major, tmp_path / "no-such-bin"):
            pass


def test_binaries_of_another_major_are_not_taken_for_17(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (PG15_BIN / "postgres").exists():
        pytest.skip(f"no Postgres 15 at {PG15_BIN} to stand in for the wrong major")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"holds PostgreSQL 15\.\d+, not Postgres 17"):
        with running_supabase(17, PG15_BIN):
            pass
