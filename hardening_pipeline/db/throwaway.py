"""A Postgres that exists only for one test session or one restore drill.

A testcontainers Postgres container where a Docker engine answers, else a private embedded server
in a temporary folder. Either way it is removed on exit, also when the body raises or is
interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hardening_pipeline.db.embedded import TemporaryPostgres

log = logging.getLogger(__name__)

POSTGRES_IMAGE = "postgres:16-alpine"


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
def _container_postgres() -> Iterator[str]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
        yield container.get_connection_url()


@contextlib.contextmanager
def _embedded_postgres() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="hp-pg-", dir="/tmp") as folder:
        server = TemporaryPostgres(Path(folder) / "pgdata")
        try:
            yield server.url
        finally:
            server.close()


@contextlib.contextmanager
def throwaway_postgres(prefer_docker: bool = True) -> Iterator[str]:
    """Yield the URL of a fresh, empty Postgres (superuser access), removed afterwards."""
    if prefer_docker and docker_available():
        log.info("throwaway Postgres: testcontainers container (%s)", POSTGRES_IMAGE)
        with _container_postgres() as url:
            yield url
    else:
        log.info("throwaway Postgres: embedded server in a temporary folder")
        with _embedded_postgres() as url:
            yield url
