"""A private Postgres started from an installation's binaries, in a folder of its own.

Used for throwaway servers: the restore drill's target and the test suite's server. The server
runs as an unprivileged OS user in a group of its own (never group root): a backup's schema is
the source database owner's code, and whatever escapes into the operating system from the drill's
Postgres must find nothing there (the drill host holds the backup key). ``initdb`` refuses root
anyway. It listens on a Unix socket inside its folder only, so two servers never collide on a
port.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from hardening_pipeline.db.pg_installs import PgInstall
from hardening_pipeline.errors import ConfigError

SERVER_OS_USER = "hardening-pg"
# Unix sockets live in the server's folder; their path must fit in sockaddr_un (107 bytes).
_MAX_SOCKET_DIR = 90


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: ``hardening-pg`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVER_OS_USER],
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(SERVER_OS_USER)
    if entry.pw_gid == 0 or entry.pw_uid == 0:
        raise ConfigError(f"the OS user {SERVER_OS_USER} must not be root or in group root.")
    return entry.pw_uid, entry.pw_gid


def _run_as(account: tuple[int, int] | None, argv: list[str], **kwargs: Any) -> None:
    if account is not None:
        kwargs.update(user=account[0], group=account[1], extra_groups=[])
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigError(
            f"{Path(argv[0]).name} failed ({detail[-1] if detail else proc.returncode}); "
            "see the server log in the throwaway folder, or set HARDENING_PG_BIN_DIRS to a "
            "working PostgreSQL."
        )


class LocalServer:
    """A fresh cluster of ``install`` under ``folder`` (created, then removed by ``close``)."""

    def __init__(self, install: PgInstall, folder: Path, superuser: str = "postgres") -> None:
        if len(str(folder)) > _MAX_SOCKET_DIR:
            raise ConfigError(
                f"the throwaway folder {folder} is too long a path for a Unix socket; set "
                "TMPDIR to a shorter path."
            )
        self.install = install
        self.folder = folder
        self._account = _server_account()
        self._pgdata = folder / "pgdata"
        self._started = False
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._account is not None:
            os.chown(folder, *self._account)
        _run_as(
            self._account,
            [str(install.bin_dir / "initdb"), "-D", str(self._pgdata), "-U", superuser,
             "--auth=trust", "--encoding=UTF8", "--no-sync"],
        )  # fmt: skip
        _run_as(
            self._account,
            [str(install.bin_dir / "pg_ctl"), "-D", str(self._pgdata), "-w", "-t", "120",
             "-l", str(folder / "server.log"), "-o", f"-h '' -k {folder}", "start"],
        )  # fmt: skip
        self._started = True
        self.url = psycopg.conninfo.make_conninfo(
            host=str(folder), port="5432", user=superuser, dbname="postgres"
        )

    def close(self) -> None:
        if self._started:
            with contextlib.suppress(ConfigError):
                _run_as(
                    self._account,
                    [str(self.install.bin_dir / "pg_ctl"), "-D", str(self._pgdata), "-w",
                     "-m", "fast", "stop"],
                )  # fmt: skip
            self._started = False
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def local_server(install: PgInstall, superuser: str = "postgres") -> Iterator[LocalServer]:
    """Yield a running ``LocalServer`` in a new folder under ``/tmp``; always removed."""
    folder = Path(tempfile.mkdtemp(prefix="hp-pg-", dir="/tmp"))
    server = None
    try:
        server = LocalServer(install, folder, superuser)
        yield server
    finally:
        if server is not None:
            server.close()
        else:
            shutil.rmtree(folder, ignore_errors=True)
