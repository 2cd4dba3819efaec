"""What more than one benchmark needs: the server under test and its client tools, and the
smallest tenant a single-row write can go to."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.pg_installs import server_for
from hardening_pipeline.db.throwaway import throwaway_postgres
from hardening_pipeline.seed import seed_demo_data


def add_pg_major_argument(parser: argparse.ArgumentParser) -> None:
    """``--pg-major N``: the major of the throwaway server (default: the newest installed)."""
    parser.add_argument(
        "--pg-major",
        type=int,
        default=None,
        help="PostgreSQL major of the throwaway server (default: the newest installed; "
        "`hardening postgres fetch N` adds one)",
    )


def server_version(url: str) -> tuple[int, str]:
    """The server's major and its full version text (``SHOW server_version``)."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int / 10000 AS major, "
            "current_setting('server_version') AS version"
        ).fetchone()
    return row["major"], row["version"]


def client_bin_dir(url: str) -> Path:
    """The ``bin`` folder of the installation of the server's own major (else the newest one,
    as a drill would take): the baselines' ``pg_dump``, ``pg_restore`` and ``pgbench``."""
    major, _ = server_version(url)
    return server_for(major).bin_dir


def describe_server(url: str) -> str:
    """One line naming the server under test and the client tools measured against it."""
    _, version = server_version(url)
    return f"server: PostgreSQL {version}; client tools: {client_bin_dir(url)}"


@contextlib.contextmanager
def bench_postgres(major: int | None, superuser: str = "postgres") -> Iterator[str]:
    """A throwaway server of ``major`` (None: the newest installed) on this machine; prints
    its version, and refuses when that major is not installed (a newer one would be used)."""
    with throwaway_postgres(prefer_docker=False, major=major, superuser=superuser) as url:
        got, version = server_version(url)
        if major is not None and got != major:
            raise SystemExit(
                f"PostgreSQL {major} is not installed (got {version}); "
                f"run `hardening postgres fetch {major}`."
            )
        print(describe_server(url), flush=True)
        yield url


def seed_one_unit(url: str, random_seed: int) -> dict[str, str]:
    """Seed one tenant with one development and one unit, and nothing else; returns their ids
    as text under ``tenant``, ``development`` and ``unit``."""
    seed_demo_data(
        url,
        tenants=1,
        messages_per_unit=0,
        developments_per_tenant=1,
        units_per_development=1,
        onboarding_per_tenant=0,
        random_seed=random_seed,
    )
    with connect(url) as conn:
        return conn.execute(
            "SELECT tenant_id::text AS tenant, development_id::text AS development, "
            "id::text AS unit FROM public.units"
        ).fetchone()
