"""Which database a backup is of, and whether that is the database this kit looks after.

Anyone with the store's credentials and the key can put a backup of *their own* database into
the store; as the newest, it would be the one drilled or restored. The manifest (MAC'd with the
key) names the cluster (``system_identifier``) and the database it came from, so the newest
backup must be of the configured database; another one is used only when named explicitly
(``--backup-id``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from hardening_pipeline.backup.manifest import DatabaseIdentity
from hardening_pipeline.backup.tenant_key_copies import read_db_ledger_bytes
from hardening_pipeline.db.connection import connect
from hardening_pipeline.errors import HardeningError

# What the backup records when its role may not read pg_control_system().
_UNKNOWN = {"", "0", "unknown"}


@dataclass(frozen=True)
class SourceIdentity:
    """The configured database: its cluster's system identifier (when readable) and name, and
    its copy of the tenant key ledger (the signed bytes; None without one or without access),
    which a restore holds the store's copy against (``backup/tenant_key_replay.py``)."""

    system_identifier: str
    database_name: str
    ledger_copy: bytes | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        cluster = (
            f"cluster {self.system_identifier}"
            if self.system_identifier not in _UNKNOWN
            else "an unreadable cluster id"
        )
        return f"database {self.database_name} ({cluster})"


def read_source_identity(url: str) -> SourceIdentity:
    with connect(url) as conn:
        name = conn.execute("SELECT current_database() AS d").fetchone()["d"]
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT system_identifier::text AS s FROM pg_catalog.pg_control_system()"
                ).fetchone()
            system_id = str(row["s"])
        except psycopg.errors.InsufficientPrivilege:
            system_id = "unknown"
        try:
            with conn.transaction():
                found = read_db_ledger_bytes(conn)
        except psycopg.errors.InsufficientPrivilege:
            found = None
    return SourceIdentity(system_id, str(name), found)


def configured_source(database_url: str | None) -> SourceIdentity | None:
    """The configured database's identity, or None when none is configured or it cannot be
    reached (a drill host may reach the store but not the database: then nothing is compared)."""
    if not database_url:
        return None
    try:
        return read_source_identity(database_url)
    except HardeningError:
        return None


def is_of(database: DatabaseIdentity, expected: SourceIdentity) -> bool:
    """Whether a manifest's database is ``expected`` (cluster ids compared when both known)."""
    if database.database_name != expected.database_name:
        return False
    ids = {database.system_identifier, expected.system_identifier}
    return bool(ids & _UNKNOWN) or len(ids) == 1


def foreign_backup_sentence(
    backup_id: str, database: DatabaseIdentity, expected: SourceIdentity
) -> str:
    source = SourceIdentity(database.system_identifier, database.database_name)
    return (
        f"the newest backup {backup_id} is of {source.describe()}, not of the configured "
        f"{expected.describe()}, so it was not used; check BACKUP_STORE_URL (someone else's "
        f"backup may have been written into this store), or name it with --backup-id {backup_id} "
        "to use it anyway."
    )
