"""A backup whose schema uses a schema it does not carry is refused before anything is stored.

On a Supabase-shaped database the app's policies, keys and defaults use ``auth.uid()`` and
``auth.users``: with ``BACKUP_SCHEMAS=public`` the backup is a configuration mistake (exit 2,
one sentence naming the dependencies and the fix), with ``auth`` added it passes. A small app of
our own checks each kind of dependency (a view, a default, a column type, a foreign key, a
trigger), and what is not counted: roles, extension members and the kit's ``hardening`` schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hardening_pipeline.backup.dependencies import (
    check_dependencies_carried,
    foreign_dependencies,
)
from hardening_pipeline.backup.export import DEFAULT_SCHEMAS
from hardening_pipeline.errors import ConfigError
from tests.support.cli import keyed_store_env, run_hardening
from tests.support.db import admin_connect
from tests.support.supabase_db import (
    SupabaseServer,
    adopting_app,
    supabase_server_each_major,  # noqa: F401  (fixture: the Supabase tests run on every major)
)

OTHER_SQL = """
CREATE SCHEMA other;
CREATE TABLE other.things (id int PRIMARY KEY, label text NOT NULL);
CREATE FUNCTION other.next_label() RETURNS text LANGUAGE sql AS $f$ SELECT 'x' $f$;
CREATE TYPE other.mood AS ENUM ('ok', 'sad');
"""


def _stored_files(folder: Path) -> list[Path]:
    store = folder / "store"
    return [p for p in store.rglob("*") if p.is_file()] if store.exists() else []


@pytest.fixture(scope="module")
def migrated_supabase_app(supabase_server: SupabaseServer) -> Iterator[str]:
    """The Supabase app, its blockers fixed and the kit's migrations applied, as ``postgres``."""
    with adopting_app(supabase_server, migrate=True) as url:
        yield url


def test_supabase_app_without_auth_is_refused_and_nothing_is_stored(
    migrated_supabase_app: str, tmp_path: Path
) -> None:
    env = {**keyed_store_env(tmp_path), "BACKUP_SCHEMAS": "public"}
    result = run_hardening("backup", url=migrated_supabase_app, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    assert "the backup would not restore" in message
    # one of each kind by name, the rest counted
    assert "foreign key memberships_user_id_fkey on public.memberships uses auth.users" in message
    assert 'policy "admins manage developments" on public.developments uses auth.uid()' in message
    assert "the default of column public.messages.author_id uses auth.uid()" in message
    assert "and 16 more" in message
    assert "add auth to BACKUP_SCHEMAS (BACKUP_SCHEMAS=public,auth)" in message
    assert _stored_files(tmp_path) == []


def test_supabase_app_dependencies_name_policies_keys_and_defaults(
    migrated_supabase_app: str,
) -> None:
    with psycopg.connect(migrated_supabase_app) as conn:
        found = [str(d) for d in foreign_dependencies(conn, ("public", "hardening"))]
    assert any(
        d.startswith("policy ") and " on public." in d and "auth.uid()" in d for d in found
    ), found
    assert any(d.startswith("foreign key ") and d.endswith("uses auth.users") for d in found), found
    assert any(d.startswith("the default of column public.") and "auth.uid()" in d for d in found)
    # uuid-ossp's and pgcrypto's functions in `extensions` are carried as extensions.
    assert not any("extensions." in d for d in found), found


def test_supabase_app_with_auth_backs_up(migrated_supabase_app: str, tmp_path: Path) -> None:
    with psycopg.connect(migrated_supabase_app) as conn:
        assert foreign_dependencies(conn, ("public", "auth", "hardening")) == []
    env = {**keyed_store_env(tmp_path), "BACKUP_SCHEMAS": "public,auth"}
    result = run_hardening("backup", url=migrated_supabase_app, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _stored_files(tmp_path)


def test_the_kits_own_database_backs_up(db_url: str, tmp_path: Path) -> None:
    """Its policies use hardening.current_tenant_id() and roles: neither is a refusal."""
    with psycopg.connect(db_url) as conn:
        assert foreign_dependencies(conn, DEFAULT_SCHEMAS) == []
        # hardening is always carried, even when a caller leaves it out
        assert foreign_dependencies(conn, ("public",)) == []
    result = run_hardening("backup", url=db_url, env=keyed_store_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_view_over_a_schema_left_out_is_refused_by_name(db_url: str, tmp_path: Path) -> None:
    with admin_connect(db_url) as conn:
        conn.execute(OTHER_SQL)
        conn.execute("CREATE VIEW public.thing_labels AS SELECT label FROM other.things")
        conn.commit()
    result = run_hardening("backup", url=db_url, env=keyed_store_env(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "view public.thing_labels uses other.things" in message
    assert "add other to BACKUP_SCHEMAS (BACKUP_SCHEMAS=public,other)" in message
    assert _stored_files(tmp_path) == []
    # the dry run is refused alike
    dry = run_hardening("backup", "--dry-run", url=db_url, env=keyed_store_env(tmp_path))
    assert dry.returncode == 2, dry.stdout + dry.stderr
    # carrying the schema is the fix
    env = {**keyed_store_env(tmp_path / "fixed"), "BACKUP_SCHEMAS": "public,other"}
    fixed = run_hardening("backup", url=db_url, env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


def test_defaults_column_types_keys_and_triggers_are_named(db_url: str) -> None:
    with admin_connect(db_url) as conn:
        conn.execute(OTHER_SQL)
        conn.execute(
            "CREATE FUNCTION other.stamp() RETURNS trigger LANGUAGE plpgsql "
            "AS $f$ BEGIN RETURN NEW; END $f$"
        )
        conn.execute(
            "CREATE TABLE public.notes ("
            " id int PRIMARY KEY,"
            " label text DEFAULT other.next_label(),"
            " mood other.mood,"
            " thing_id int REFERENCES other.things (id))"
        )
        conn.execute(
            "CREATE TRIGGER notes_stamp BEFORE INSERT ON public.notes "
            "FOR EACH ROW EXECUTE FUNCTION other.stamp()"
        )
        conn.commit()
    with psycopg.connect(db_url) as conn:
        found = [str(d) for d in foreign_dependencies(conn, DEFAULT_SCHEMAS)]
        with pytest.raises(ConfigError) as refused:
            check_dependencies_carried(conn, DEFAULT_SCHEMAS)
    assert found == [
        "column public.notes.mood uses other.mood",
        "foreign key notes_thing_id_fkey on public.notes uses other.things",
        "the default of column public.notes.label uses other.next_label()",
        "trigger notes_stamp on public.notes uses other.stamp()",
    ]
    message = str(refused.value)
    # the first few by name, the rest counted
    assert "column public.notes.mood uses other.mood" in message
    assert "and 1 more" in message
    assert "add other to BACKUP_SCHEMAS (BACKUP_SCHEMAS=public,other)" in message


def test_extension_members_and_roles_are_not_refused(supabase_db_url: str) -> None:
    """Supabase keeps uuid-ossp in the schema `extensions`; the backup carries the extension."""
    with psycopg.connect(supabase_db_url) as conn:
        where = conn.execute(
            "SELECT pronamespace::regnamespace::text FROM pg_proc "
            "WHERE proname = 'uuid_generate_v4'"
        ).fetchone()
        assert where == ("extensions",)
        conn.execute(
            "CREATE TABLE public.tokens (id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4())"
        )
        conn.execute("ALTER TABLE public.tokens ENABLE ROW LEVEL SECURITY")
        conn.execute(
            "CREATE POLICY tokens_read ON public.tokens FOR SELECT TO authenticated USING (true)"
        )
        assert foreign_dependencies(conn, ("public",)) == []
