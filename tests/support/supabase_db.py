"""A Postgres built from Supabase's own init SQL, for testing adoption on a real Supabase shape.

On it, as on a hosted Supabase project: ``supabase_admin`` is the only superuser; ``postgres`` (the
role a user connects as) is NOSUPERUSER with CREATEROLE and BYPASSRLS and owns ``public``; default
privileges hand ALL on every new table, sequence and function in ``public`` to ``anon``,
``authenticated`` and ``service_role``. The SQL is vendored under ``tests/supabase/`` (see its
README for the source commit and what was left out).

It is built on Postgres 15 (Debian's binaries; ``HARDENING_TEST_PG15_BIN`` overrides the folder)
or 17 (the server ``hardening_pipeline.db.pg_installs`` finds, as ``hardening postgres fetch 17``
installs it). ``initdb`` refuses root, so as root it runs as the ``postgres`` OS user. Each major's
server is started at most once per session, on first use, with two templates: ``supa_base``
(Supabase only) and ``supa_app`` (plus ``tests/supabase/app.sql``, created as ``postgres``); each
test gets its own clone.

``supabase_server`` (and ``supabase_db_url``/``supabase_app_url`` on it) is the 15 server. A
module runs on every major in ``SUPABASE_MAJORS`` by importing ``supabase_server_each_major``,
which overrides ``supabase_server`` there with one parameter per major (ids ``pg15``, ``pg17``).

Missing binaries skip the tests with the reason, except for a major ``.ci/run`` always installs
(``REQUIRED_ON_CI``) when ``CI`` is ``true``: there they fail, so CI cannot go green by skipping.
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
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql

from hardening_pipeline.db.pg_installs import server_for, tool_version
from hardening_pipeline.errors import ConfigError

SUPABASE_SQL = Path(__file__).resolve().parents[1] / "supabase"
PG15_BIN = Path(os.environ.get("HARDENING_TEST_PG15_BIN", "/usr/lib/postgresql/15/bin"))
SUPABASE_MAJORS = (15, 17)
DEFAULT_MAJOR = 15
# .ci/run always runs `hardening postgres fetch 16 17`; 15 comes from apt only where CI is root.
REQUIRED_ON_CI = frozenset({17})
_INSTALL_HINT = {
    15: "install postgresql-15, or set HARDENING_TEST_PG15_BIN",
    17: "run `hardening postgres fetch 17`",
}
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


def _unavailable(major: int, reason: str) -> NoReturn:
    """Skip with the reason; fail instead on CI for a major CI always installs."""
    if major in REQUIRED_ON_CI and os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(
            f"{reason} (CI=true: CI installs Postgres {major}, so this fails)", pytrace=False
        )
    pytest.skip(reason)


def server_bin_dir(major: int) -> Path:
    """Where the Postgres ``major`` server binaries are looked for."""
    if major == 15:
        return PG15_BIN
    try:
        return server_for(major).bin_dir  # that major, else a newer one: checked by the caller
    except ConfigError as exc:
        _unavailable(major, f"no Postgres {major} server found: {exc}")


def _check_binaries(major: int, bin_dir: Path) -> None:
    hint = _INSTALL_HINT.get(major, f"install a Postgres {major} server")
    if not (bin_dir / "initdb").exists():
        _unavailable(
            major,
            f"Postgres {major} binaries not found at {bin_dir} ({hint}); the Supabase-faithful "
            "tests need them.",
        )
    found = tool_version(bin_dir / "postgres")
    if found is None or found.major != major:
        what = f"PostgreSQL {found.version}" if found else "no working postgres binary"
        _unavailable(major, f"{bin_dir} holds {what}, not Postgres {major} ({hint}).")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable(major, "running as root without a 'postgres' OS user to run initdb as")


@contextlib.contextmanager
def running_supabase(
    major: int = DEFAULT_MAJOR, bin_dir: Path | None = None
) -> Iterator[SupabaseServer]:
    """Start, build and finally stop and delete a Supabase-shaped Postgres ``major``."""
    bin_dir = server_bin_dir(major) if bin_dir is None else bin_dir
    _check_binaries(major, bin_dir)
    initdb = bin_dir / "initdb"
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
            raise RuntimeError(
                f"Postgres {major} did not start: {start.stderr}{server_log[-2000:]}"
            )
        started = True
        try:
            _build_supabase(server)
        except RuntimeError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.UndefinedFile):
                raise
            # An extension whose library needs a system library this machine lacks (the
            # fetched 17's uuid-ossp needs libossp-uuid.so.16: Debian's libossp-uuid16).
            _unavailable(major, f"{exc}; install the system library it names.")
        yield server
    finally:
        if started:
            subprocess.run(
                _as_postgres_os_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
            )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


_SERVERS = pytest.StashKey[dict[int, SupabaseServer]]()


def supabase_server_of(config: pytest.Config, major: int) -> SupabaseServer:
    """The session's Supabase server on ``major``: started on first use, stopped at the end."""
    started = config.stash.setdefault(_SERVERS, {})
    if major not in started:
        stack = contextlib.ExitStack()
        started[major] = stack.enter_context(running_supabase(major))
        config.add_cleanup(stack.close)
    return started[major]


def _supabase_server(request: pytest.FixtureRequest) -> SupabaseServer:
    return supabase_server_of(request.config, getattr(request, "param", DEFAULT_MAJOR))


supabase_server = pytest.fixture(scope="module", name="supabase_server")(_supabase_server)
supabase_server_each_major = pytest.fixture(
    scope="module",
    name="supabase_server",
    params=SUPABASE_MAJORS,
    ids=[f"pg{major}" for major in SUPABASE_MAJORS],
)(_supabase_server)


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


@contextlib.contextmanager
def adopting_app(server: SupabaseServer, *, migrate: bool = False) -> Iterator[str]:
    """A clone of the app with its blockers fixed, and with ``migrate`` the kit's migrations
    applied through the CLI, reached as ``postgres``; dropped afterwards."""
    url = server.clone(APP_TEMPLATE)
    try:
        apply_blocker_fixes(url)
        if migrate:
            from tests.support.cli import run_hardening

            result = run_hardening("migrate", url=url)
            assert result.returncode == 0, result.stdout + result.stderr
        yield url
    finally:
        server.drop(url)


def apply_blocker_fixes(url: str) -> None:
    """Run ``tests/supabase/app_fixes.sql`` as ``postgres``: what a team fixes before adopting."""
    _run_files(url, ["app_fixes.sql"])


def apply_status_fixes(url: str) -> None:
    """Run ``tests/supabase/app_status_fixes.sql`` as ``postgres``: the app's own findings."""
    _run_files(url, ["app_status_fixes.sql"])


def apply_tenant_helper(url: str) -> None:
    """Run ``tests/supabase/app_tenant_helper.sql`` as ``postgres``: policies that call a helper."""
    _run_files(url, ["app_tenant_helper.sql"])
