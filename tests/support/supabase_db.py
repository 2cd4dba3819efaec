"""A Postgres 15 built from Supabase's own init SQL, for testing adoption on a real Supabase shape.

On it, as on a hosted Supabase project: ``supabase_admin`` is the only superuser; ``postgres`` (the
role a user connects as) is NOSUPERUSER with CREATEROLE and BYPASSRLS and owns ``public``; default
privileges hand ALL on every new table, sequence and function in ``public`` to ``anon``,
``authenticated`` and ``service_role``. The SQL is vendored under ``tests/supabase/`` (see its
README for the source commit and what was left out).

The server runs from the Postgres 15 binaries (``HARDENING_TEST_PG15_BIN`` overrides the folder).
``initdb`` refuses root, so as root it runs as the ``postgres`` OS user. Two templates are built
once per session: ``supa_base`` (Supabase only) and ``supa_app`` (plus ``tests/supabase/app.sql``,
created as ``postgres``); each test gets its own clone.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

SUPABASE_SQL = Path(__file__).resolve().parents[1] / "supabase"
PG15_BIN = Path(os.environ.get("HARDENING_TEST_PG15_BIN", "/usr/lib/postgresql/15/bin"))
BASE_TEMPLATE = "supa_base"
APP_TEMPLATE = "supa_app"

# Lines of Supabase's SQL that need extensions this machine lacks (see tests/supabase/README.md).
_SKIPPED_LINES = (
    re.compile(r"^create extension if not exists pgjwt\b.*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"^GRANT pgsodium_keyholder to service_role;$", re.IGNORECASE | re.MULTILINE),
)


@dataclass(frozen=True)
class SupabaseServer:
    """A running Supabase-shaped server: how to reach it as each of its login roles."""

    host: str
    port: int

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=str(self.port), dbname=dbname, user=user
        )

    @property
    def admin_url(self) -> str:
        """The real superuser, for fixtures only: the kit never gets this."""
        return self.url(user="supabase_admin")

    def clone(self, template: str) -> str:
        """A fresh database copied from ``template``, owned by ``postgres`` as on Supabase."""
        name = f"s_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url("template1", "supabase_admin"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER postgres").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return self.url(name)

    def drop(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self.url("template1", "supabase_admin"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def supabase_sql(relative: str) -> str:
    """One vendored file, minus the lines that need extensions this machine lacks."""
    text = (SUPABASE_SQL / relative).read_text(encoding="utf-8")
    for pattern in _SKIPPED_LINES:
        text = pattern.sub("-- (skipped in tests: extension not available)", text)
    return text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_os_user(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; elsewhere the current user is fine.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _run_files(url: str, files: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for relative in files:
            try:
                conn.execute(supabase_sql(relative))
            except psycopg.Error as exc:
                raise RuntimeError(f"Supabase fixture SQL {relative} failed: {exc}") from exc


def _build_supabase(server: SupabaseServer) -> None:
    """Replay what Supabase's migrate.sh does, then add GoTrue's auth functions."""
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE postgres SUPERUSER LOGIN")
        conn.execute("ALTER DATABASE postgres OWNER TO postgres")
    # migrate.sh: init scripts as postgres (still a superuser then) ...
    init = sorted(p.name for p in (SUPABASE_SQL / "init-scripts").glob("*.sql"))
    _run_files(server.url(), [f"init-scripts/{name}" for name in init])
    # ... then the migrations as supabase_admin; 10000000000000_demote-postgres runs first.
    migrations = sorted(p.name for p in (SUPABASE_SQL / "migrations").glob("*.sql"))
    _run_files(server.admin_url, [f"migrations/{name}" for name in migrations])
    # GoTrue owns auth.uid()/auth.role() and adds auth.jwt(); it runs as supabase_auth_admin.
    _run_files(server.url(user="supabase_auth_admin"), ["auth_functions.sql"])
    with psycopg.connect(server.url("template1", "supabase_admin"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE postgres OWNER postgres").format(
                sql.Identifier(BASE_TEMPLATE)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER postgres").format(
                sql.Identifier(APP_TEMPLATE), sql.Identifier(BASE_TEMPLATE)
            )
        )
    # The app is the user's: created by postgres, after Supabase, before the kit.
    _run_files(server.url(APP_TEMPLATE), ["app.sql"])


@contextlib.contextmanager
def running_supabase(bin_dir: Path = PG15_BIN) -> Iterator[SupabaseServer]:
    """Start, build and finally stop and delete a Supabase-shaped Postgres 15."""
    initdb = bin_dir / "initdb"
    if not initdb.exists():
        pytest.skip(
            f"Postgres 15 binaries not found at {bin_dir} (install postgresql-15, or set "
            "HARDENING_TEST_PG15_BIN); the Supabase-faithful tests need them."
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' OS user to run initdb as")
    folder = Path(tempfile.mkdtemp(prefix="hp-supa-", dir="/tmp"))
    data, sockets, log = folder / "data", folder / "sock", folder / "server.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (folder, sockets):
            shutil.chown(path, "postgres", "postgres")
    server = SupabaseServer("127.0.0.1", _free_port())
    pg_ctl = str(bin_dir / "pg_ctl")
    started = False
    try:
        subprocess.run(
            _as_postgres_os_user(
                [str(initdb), "-D", str(data), "-U", "supabase_admin", "--auth=trust",
                 "-E", "UTF8", "--locale=C.UTF-8"]
            ),
            check=True, capture_output=True,
        )  # fmt: skip
        options = (
            f"-c port={server.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={sockets} -c fsync=off -c full_page_writes=off "
            "-c synchronous_commit=off"
        )
        start = subprocess.run(
            _as_postgres_os_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w",
                                  "start"]),
            capture_output=True, text=True,
        )  # fmt: skip
        if start.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"Postgres 15 did not start: {start.stderr}{server_log[-2000:]}")
        started = True
        _build_supabase(server)
        yield server
    finally:
        if started:
            subprocess.run(
                _as_postgres_os_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
            )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def supabase_server() -> Iterator[SupabaseServer]:
    with running_supabase() as server:
        yield server


@pytest.fixture
def supabase_db_url(supabase_server: SupabaseServer) -> Iterator[str]:
    """A fresh Supabase database with no app, reached as ``postgres``."""
    url = supabase_server.clone(BASE_TEMPLATE)
    yield url
    supabase_server.drop(url)


@pytest.fixture
def supabase_app_url(supabase_server: SupabaseServer) -> Iterator[str]:
    """A fresh Supabase database holding the pre-existing app (legacy bad rows included)."""
    url = supabase_server.clone(APP_TEMPLATE)
    yield url
    supabase_server.drop(url)


def apply_blocker_fixes(url: str) -> None:
    """Run ``tests/supabase/app_fixes.sql`` as ``postgres``: what a team fixes before adopting."""
    _run_files(url, ["app_fixes.sql"])


def apply_status_fixes(url: str) -> None:
    """Run ``tests/supabase/app_status_fixes.sql`` as ``postgres``: the app's own findings."""
    _run_files(url, ["app_status_fixes.sql"])
