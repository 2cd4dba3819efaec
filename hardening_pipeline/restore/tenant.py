"""Bring one tenant back from a backup into a database you name (the "we deleted it" day).

The target must already have the schema (``hardening migrate``). Without ``merge`` the restore
refuses a database that still holds the tenant, so it never mixes old and new data by accident;
with ``merge`` it inserts only the rows that are missing and leaves existing ones alone. Rows go
in as ``service_role`` with the actor ``restore:<backup-id>``, so the audit log records the
restore like any other write.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg

from hardening_pipeline.backup.catalog import find_backup, list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import unwrap_data_key
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.db.bulk_load import MergeCount, merge_tenant
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.migrations import read_applied
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.restore.reader import TableReader, fetched_backup


@dataclass
class TenantRestoreResult:
    backup_id: str
    tenant_id: str
    counts: list[MergeCount]

    @property
    def inserted(self) -> int:
        return sum(c.inserted for c in self.counts)


def restore_tenant(
    store: BackupStore,
    keyring: Keyring,
    *,
    tenant_id: str,
    target_url: str,
    backup_id: str | None = None,
    merge: bool = False,
) -> TenantRestoreResult:
    try:
        tenant = str(uuid.UUID(tenant_id))
    except ValueError:
        raise ConfigError(f"--tenant {tenant_id!r} is not a UUID; pass the tenant's id.") from None
    backup = find_backup(list_backups(store, keyring), backup_id)
    manifest = backup.manifest
    assert manifest is not None
    entries = [o for o in manifest.objects if o.tenant_id == tenant]
    if not entries:
        raise ConfigError(
            f"backup {manifest.backup_id} holds no tenant {tenant}; pick another with --backup-id."
        )
    with connect(target_url, client_encoding="UTF8") as conn:
        applied = {m.filename for m in read_applied(conn)}
        missing = [m for m in manifest.schema.applied_migrations if m not in applied]
        if missing:
            raise ConfigError(
                f"the target database lacks migration(s) {', '.join(missing)}; run "
                "`hardening migrate` against it first."
            )
        exists = conn.execute("SELECT 1 FROM public.tenants WHERE id = %s", (tenant,)).fetchone()
        conn.rollback()
        if exists and not merge:
            raise ConfigError(
                f"the target database already holds tenant {tenant}; pass --merge to add only "
                "the rows that are missing, or restore into another database."
            )
        data_key = unwrap_data_key(manifest, keyring)
        with fetched_backup(store, manifest, backup.folder, only={entries[0].name}) as fetched:
            reader = TableReader(fetched[entries[0].name], manifest, data_key)
            try:
                with conn.transaction():
                    counts = merge_tenant(
                        conn, iter(reader), tenant_id=tenant, actor=f"restore:{manifest.backup_id}"
                    )
            except psycopg.Error as exc:
                # The target's schema or rows disagree with the backup (a column it lacks, a
                # parent row that is gone): one sentence, nothing written, no traceback.
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise CheckFailed(
                    f"tenant {tenant} could not be restored into the target ({reason}); nothing "
                    "was written: bring the target's schema to the backup's (`hardening "
                    "migrate`) or restore into an empty migrated database."
                ) from exc
    return TenantRestoreResult(manifest.backup_id, tenant, counts)
