"""The schema half of a backup: ``pg_dump --schema-only`` of the backed-up schemas.

Rows alone restore nothing for an app whose tables, views, functions, triggers and policies
the kit never created. So each backup also carries the DDL of the schemas it backs up, taken by
``pg_dump`` from the very snapshot the rows are read from (``--snapshot``), in two sections:

* ``pre-data``: schemas, types, functions, tables, views, sequences, grants - what must exist
  before rows can be loaded;
* ``post-data``: primary keys, unique and foreign keys, indexes, triggers, row security and
  policies - what ``pg_restore`` builds after the rows, and what a restore builds after them too.

Next to it the manifest records a *catalog summary* (the app's tables with their columns, views,
functions, policies, triggers, constraints and indexes, by name) and the roles the schema refers
to, so a restore can create the roles a target lacks and prove the rebuilt catalog is the one
that was backed up.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import tuple_row

from hardening_pipeline.backup.pg_tools import PgTool
from hardening_pipeline.errors import ConfigError, HardeningError

SCHEMA_OBJECT_NAME = "schema.hpb"
# The schema object's one section: a ``pg_dump --format=custom`` archive, read at restore time
# through pg_restore's table of contents (``restore/archive.py``), never as text. Backups
# written before held two plain-SQL sections, "pre-data" and "post-data".
ARCHIVE_SECTION = "archive"
LEGACY_SECTIONS = ("pre-data", "post-data")


# Every role an object in the schemas is owned by, granted to, or has a policy for. Predefined
# roles (pg_*) exist on every server.
_ROLES_QUERY = """
WITH refs(oid) AS (
    SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname = ANY(%(s)s)
    UNION SELECT (pg_catalog.aclexplode(nspacl)).grantee FROM pg_catalog.pg_namespace
          WHERE nspname = ANY(%(s)s) AND nspacl IS NOT NULL
    UNION SELECT c.relowner FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%(s)s)
    UNION SELECT (pg_catalog.aclexplode(c.relacl)).grantee FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = ANY(%(s)s) AND c.relacl IS NOT NULL
    UNION SELECT p.proowner FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY(%(s)s)
    UNION SELECT (pg_catalog.aclexplode(p.proacl)).grantee FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = ANY(%(s)s) AND p.proacl IS NOT NULL
    UNION SELECT t.typowner FROM pg_catalog.pg_type t
          JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = ANY(%(s)s)
    UNION SELECT unnest(p.polroles) FROM pg_catalog.pg_policy p
          JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%(s)s)
)
SELECT r.rolname, r.rolbypassrls FROM pg_catalog.pg_roles r
WHERE r.oid IN (SELECT oid FROM refs) AND r.rolname !~ '^pg_'
ORDER BY r.rolname
"""


class SchemaDumpError(HardeningError):
    """``pg_dump`` failed; the message carries its own first error line."""


@dataclass(frozen=True)
class RoleEntry:
    """A role the backed-up schema refers to; a restore target that lacks it gets it NOLOGIN."""

    name: str
    bypassrls: bool


def missing_schemas(conn: psycopg.Connection, schemas: Sequence[str]) -> list[str]:
    rows = conn.cursor(row_factory=tuple_row).execute(
        "SELECT s FROM unnest(%s::text[]) AS s WHERE s NOT IN "
        "(SELECT nspname FROM pg_catalog.pg_namespace) ORDER BY s",
        (list(schemas),),
    )
    return [r[0] for r in rows.fetchall()]


def check_schemas_exist(conn: psycopg.Connection, schemas: Sequence[str]) -> None:
    missing = missing_schemas(conn, schemas)
    if missing:
        raise ConfigError(
            f"BACKUP_SCHEMAS names schema(s) the database does not have ({', '.join(missing)}); "
            "remove them from BACKUP_SCHEMAS or create them."
        )


def read_roles(conn: psycopg.Connection, schemas: Sequence[str]) -> tuple[RoleEntry, ...]:
    rows = conn.cursor(row_factory=tuple_row).execute(_ROLES_QUERY, {"s": list(schemas)})
    return tuple(RoleEntry(str(name), bool(bypass)) for name, bypass in rows.fetchall())


def read_extensions(conn: psycopg.Connection) -> tuple[tuple[str, str, str], ...]:
    """(name, schema, version) of every extension but plpgsql, which every database has.

    A dump of selected schemas carries no ``CREATE EXTENSION``, yet the app's defaults and
    column types use them (``extensions.uuid_generate_v4()`` on Supabase).
    """
    rows = conn.cursor(row_factory=tuple_row).execute(
        "SELECT e.extname, n.nspname, e.extversion FROM pg_catalog.pg_extension e "
        "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname <> 'plpgsql' ORDER BY 1"
    )
    return tuple((str(a), str(b), str(c)) for a, b, c in rows.fetchall())


def read_sequences(
    conn: psycopg.Connection, schemas: Sequence[str]
) -> tuple[tuple[str, int, bool], ...]:
    """(schema.name, last_value, is_called) of every sequence of ``schemas`` that was used.

    A sequence is not transactional: this is where it stood when the backup read it, at or past
    the snapshot (``pg_sequences`` counts cached values too), so a restore never hands one out
    again. One the backup's role may not read (``pg_sequences`` says NULL) is left out; the
    restore still moves every sequence a column owns past the restored rows.
    """
    rows = conn.cursor(row_factory=tuple_row).execute(
        "SELECT schemaname, sequencename, last_value FROM pg_catalog.pg_sequences "
        "WHERE schemaname = ANY(%s) AND last_value IS NOT NULL ORDER BY 1, 2",
        (list(schemas),),
    )
    return tuple((f"{schema}.{name}", int(last), True) for schema, name, last in rows.fetchall())


def server_version_num(conn: psycopg.Connection) -> int:
    row = conn.cursor(row_factory=tuple_row).execute(
        "SELECT current_setting('server_version_num')::int"
    )
    return int(row.fetchone()[0])


def _libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """The connection string without its password, which goes to pg_dump's environment.

    A password on the command line is visible to every local user in the process list.
    """
    params = psycopg.conninfo.conninfo_to_dict(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    return psycopg.conninfo.make_conninfo(**params), env  # type: ignore[arg-type]


def dump_schema(
    url: str,
    snapshot_id: str,
    schemas: Sequence[str],
    pg_dump: PgTool,
    lock_wait_timeout: float | None = None,
) -> dict[str, bytes]:
    """``pg_dump --schema-only --format=custom`` of ``schemas`` at the exported snapshot.

    Schema names are passed double-quoted so ``pg_dump`` takes them literally, not as patterns.
    The archive is not compressed by pg_dump: the object is compressed with zstd anyway.
    """
    target, env = _libpq_target(url)
    selectors = [arg for name in schemas for arg in ("--schema", f'"{name}"')]
    argv = [
        str(pg_dump.path),
        "--schema-only",
        "--format=custom",
        "--compress=0",
        f"--snapshot={snapshot_id}",
        "--no-password",
        # pg_dump resets lock_timeout on its own connection; this is its own bound on the wait.
        *(
            [f"--lock-wait-timeout={max(1, int(lock_wait_timeout * 1000))}"]
            if lock_wait_timeout
            else []
        ),
        *selectors,
        "--dbname",
        target,
    ]
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=3600, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = next((line for line in lines if "error" in line), lines[0] if lines else "")
        raise SchemaDumpError(
            f"pg_dump could not dump the schema ({reason.strip() or 'no output'}); no "
            "manifest was written: fix the cause and run the backup again."
        )
    return {ARCHIVE_SECTION: proc.stdout}
