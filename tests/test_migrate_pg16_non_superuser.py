"""PG16, migrated from an empty database by a non-superuser, as on a managed Postgres.

The Supabase fixture is PG15. PG16 changed CREATEROLE: a role created by a non-superuser is
granted to its creator WITH ADMIN OPTION only (no SET, no INHERIT), and only a role with
BYPASSRLS may create one with BYPASSRLS. Here a fresh embedded PG16 cluster (so the kit's roles
do not exist yet and the migration role creates them) gets an admin login with CREATEDB and
CREATEROLE that owns its database, and the kit is migrated, checked and used through that login
only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient
from hardening_pipeline.db.throwaway import throwaway_postgres
from tests.support.cli import run_hardening

PASSWORD = "managed-admin-password"


@dataclass
class Cluster:
    superuser_url: str

    def admin_database(self, role: str, attributes: str) -> str:
        """A login like a managed Postgres hands out, owning a fresh database; its URL."""
        dbname = f"app_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.superuser_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} " + attributes).format(
                    sql.Identifier(role), sql.Literal(PASSWORD)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(role)
                )
            )
        info = psycopg.conninfo.conninfo_to_dict(self.superuser_url)
        info.update(dbname=dbname, user=role, password=PASSWORD)
        return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Its own cluster: the session server already has the kit's roles, made by a superuser.
    with throwaway_postgres(prefer_docker=False) as url:
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()[0]
        if int(version) < 160000:
            pytest.skip(f"the embedded server is {version}, not PG16")
        yield Cluster(url)


def _env(tmp_path: Path) -> dict[str, str]:
    return {"HARDENING_REPORTS_DIR": str(tmp_path / "reports")}


def test_an_admin_without_bypassrls_is_told_what_a_superuser_must_create(cluster, tmp_path):
    """The RDS-style admin (CREATEDB, CREATEROLE only) cannot create service_role on PG16.

    Runs first: the roles are cluster-wide, and the next test's admin creates them."""
    url = cluster.admin_database("pg16_plain_admin", "CREATEDB CREATEROLE")
    result = run_hardening("migrate", url=url, env=_env(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout + result.stderr
    assert "pg16_plain_admin may not create service_role, which bypasses RLS" in out, out
    assert "CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS" in out
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regnamespace('hardening')").fetchone() == (None,)


def test_a_createrole_admin_migrates_checks_and_writes_through_the_client(cluster, tmp_path):
    # Supabase's postgres has these attributes; BYPASSRLS is what lets it create service_role.
    url = cluster.admin_database("pg16_admin", "CREATEDB CREATEROLE BYPASSRLS")
    with psycopg.connect(url) as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)

    migrated = run_hardening("migrate", url=url, env=_env(tmp_path))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "applied 016_ddl_on_the_record.sql" in migrated.stdout

    status = run_hardening("status", "--no-alert", url=url, env=_env(tmp_path))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "not installed: the migration role pg16_admin" in status.stdout

    with psycopg.connect(url) as conn:
        # PG16: the roles it created are granted to it WITH ADMIN; 016 added SET (no INHERIT).
        grants = conn.execute(
            "SELECT r.rolname, m.admin_option, m.inherit_option, m.set_option "
            "FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE m.member = current_user::regrole AND m.set_option ORDER BY 1"
        ).fetchall()
        assert [g[0] for g in grants] == ["anon", "authenticated", "service_role"]
        assert not any(g[2] for g in grants), grants
        # ... but never the audit owner: 015 and 016 gave back what they borrowed.
        assert conn.execute(
            "SELECT pg_has_role(current_user, 'hardening_audit_owner', 'SET'), "
            "pg_has_role(current_user, 'hardening_audit_owner', 'USAGE')"
        ).fetchone() == (False, False)
        tenant = uuid.uuid4()
        conn.execute("SELECT set_config('app.actor', 'seed:pg16', true)")
        conn.execute(
            "INSERT INTO tenants (id, slug, name) VALUES (%s, %s, 'PG16')",
            (tenant, f"pg16-{tenant.hex[:8]}"),
        )
        conn.commit()

    for mode, actor in (("service_role", "service_role:pg16-test"), ("authenticated", "pg16")):
        client = TenantScopedClient(url, actor=actor, mode=mode)
        with client.transaction(tenant) as tx:
            row = tx.insert("onboarding_attempts", {"email": f"{mode}@example.com"})
        with psycopg.connect(url) as conn:
            audited = conn.execute(
                "SELECT actor, db_role, tenant_id FROM audit_events "
                "WHERE table_name = 'onboarding_attempts' AND record_id = %s",
                (str(row["id"]),),
            ).fetchall()
        assert audited == [(client.actor, mode, tenant)], audited
