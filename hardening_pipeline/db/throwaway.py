"""A Postgres that exists only for one test session or one restore drill.

A testcontainers Postgres container where a Docker engine answers, else a private server started
from an installed PostgreSQL (``db/pg_installs.py``) in a temporary folder. Either way it is
removed on exit, also when the body raises or is interrupted. ``major`` asks for the server a
backup of that major restores into: that major where one is installed, else the newest.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

from hardening_pipeline.db.local_server import local_server
from hardening_pipeline.db.pg_installs import newest_server, server_for

log = logging.getLogger(__name__)

DEFAULT_CONTAINER_MAJOR = 17


def container_image(major: int) -> str:
    return f"postgres:{major}-alpine"


def docker_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping quickly; never raises."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "no usable engine": fall back, do not fail
        return False


@contextlib.contextmanager
def _container_postgres(major: int, superuser: str) -> Iterator[str]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer(container_image(major), username=superuser, driver=None) as container:
        yield container.get_connection_url()


@contextlib.contextmanager
def throwaway_postgres(
    prefer_docker: bool = True,
    major: int | None = None,
    superuser: str = "postgres",
    extensions: Sequence[str] = (),
) -> Iterator[str]:
    """Yield the URL of a fresh, empty Postgres (``superuser``), removed afterwards.

    A restore names its superuser after itself, so no role of the backup (``postgres`` on
    Supabase) is the server's superuser there.
    """
    if prefer_docker and docker_available():
        image = container_image(major or DEFAULT_CONTAINER_MAJOR)
        log.info("throwaway Postgres: testcontainers container (%s)", image)
        with _container_postgres(major or DEFAULT_CONTAINER_MAJOR, superuser) as url:
            yield url
        return
    install = newest_server() if major is None else server_for(major, extensions=extensions)
    log.info("throwaway Postgres: %s in a temporary folder", install.describe())
    with local_server(install, superuser=superuser) as server:
        yield server.url
