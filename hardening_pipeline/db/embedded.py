"""Embedded Postgres from the ``pgserver`` wheel, for a first run and for throwaway databases.

``initdb`` refuses to run as root and a fresh machine may have no Postgres at all; ``pgserver``
ships its own binaries and copes with both, so ``hardening`` works right after ``pip install``.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

from hardening_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# Unix sockets live in the data directory; their path must fit in sockaddr_un (107 bytes).
_MAX_SOCKET_DIR = 90


def _get_server(pgdata: Path, cleanup_mode: str | None) -> Any:
    resolved = pgdata.resolve()
    if len(str(resolved)) > _MAX_SOCKET_DIR:
        raise ConfigError(
            f"the embedded database folder {resolved} is too long a path for a Unix socket; "
            "set HARDENING_STATE_DIR to a shorter path."
        )
    resolved.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR on headless machines; it is harmless here.
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(resolved, cleanup_mode=cleanup_mode)


def embedded_database_url(state_dir: Path) -> str:
    """Start (or join) the project's embedded Postgres under ``state_dir`` and return its URL.

    The server is stopped when the last process using it exits, so a CLI run leaves nothing
    behind but the data folder.
    """
    server = _get_server(state_dir / "pgdata", cleanup_mode="stop")
    log.debug("embedded Postgres at %s", state_dir / "pgdata")
    return server.get_uri()


def pgserver_bin_dir() -> Path:
    """Folder with the embedded server's client tools (pg_dump, pg_restore, psql...).

    Located, not imported: importing pgserver prints a platformdirs warning on headless
    machines, which would break the CLI's one-line errors.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.origin:
        raise ConfigError("the embedded Postgres is not installed; pip install pgserver.")
    return Path(spec.origin).parent / "pginstall" / "bin"


class TemporaryPostgres:
    """A private embedded Postgres in its own folder, deleted when closed."""

    def __init__(self, folder: Path) -> None:
        self._server = _get_server(folder, cleanup_mode="delete")
        self.url: str = self._server.get_uri()

    def close(self) -> None:
        self._server.cleanup()
