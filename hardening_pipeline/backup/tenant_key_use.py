"""Tenant keys at work: the keys one backup encrypts with (recorded in both ledger copies
first), and the key each object of a backup decrypts with. What the ledger is:
``backup/tenant_keys.py``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from hardening_pipeline.backup.catalog import BackupCatalog, list_backups, newest_manifest
from hardening_pipeline.backup.crypto import (
    Keyring,
    data_key_id,
    generate_data_key,
)
from hardening_pipeline.backup.erasure_records import erasure_gaps
from hardening_pipeline.backup.manifest import (
    Manifest,
    ObjectEntry,
    unwrap_data_key,
)
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.backup.tenant_digests import part_digest_key
from hardening_pipeline.backup.tenant_key_copies import (
    LedgerComparison,
    agreed_ledger,
    lost_keys,
    read_store_ledger,
    write_both_copies,
)
from hardening_pipeline.backup.tenant_key_replay import (
    LedgerReplayedError,
    check_not_replayed,
    manifest_metadata,
)
from hardening_pipeline.backup.tenant_keys import (
    LEDGER_KEY,
    RECOVER_COMMAND,
    ErasedKey,
    Ledger,
    LedgerError,
    TenantErasedError,
    TenantKey,
    format_time,
    load_ledger,
    new_ledger_id,
)
from hardening_pipeline.errors import CheckFailed

log = logging.getLogger(__name__)

# --- keys for a backup ------------------------------------------------------------------------


@dataclass
class BackupTenantKeys:
    """The tenant keys one backup run encrypts with, and the ledger they were recorded in."""

    keys: dict[str, bytes]
    ledger: Ledger
    comparison: LedgerComparison

    def key_for(self, tenant_id: str | None) -> bytes | None:
        return None if tenant_id is None else self.keys[tenant_id]

    def manifest_metadata(self) -> dict[str, str]:
        """The ledger id and version the backup's manifest records, so no older ledger put back
        into the store is trusted to read it (``backup/tenant_key_replay.py``)."""
        return manifest_metadata(self.ledger)


def prepare_tenant_keys(
    store: BackupStore,
    url: str,
    keyring: Keyring,
    tenant_ids: Sequence[str],
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> BackupTenantKeys:
    """Compare the ledger copies, add keys for new tenants, record them before any object.

    Refuses (red) when the copies disagree in a way no erasure explains, and when a tenant
    whose key was erased still has rows: backing it up under a new key would bring the erased
    data back into the backups.
    """
    from hardening_pipeline.db.connection import connect

    now = now or datetime.now(UTC)
    with connect(url) as conn:
        comparison = agreed_ledger(store, conn, keyring, "no backup was written")
        ledger = comparison.agreed
        if comparison.store or comparison.database:
            # Both copies rolled back (or one, with no database copy to compare): writing on
            # top would launder an old ledger past every reader's check.
            newest = newest_manifest(store, keyring)
            check_not_replayed(
                ledger,
                manifests=[newest] if newest else [],
                database=None,
                nothing_done="no backup was written",
                which="the tenant key ledger both copies hold",
            )
        erased_tenants = {e.tenant_id: e for e in ledger.erased}
        present = [t for t in tenant_ids if t in erased_tenants and t not in ledger.tenants]
        if present:
            when = format_time(erased_tenants[present[0]].erased_at)
            raise CheckFailed(
                f"tenant {present[0]} was erased at {when} but still has rows in the database; "
                "no backup was written: delete the tenant and its rows from the database, then "
                "run the backup again."
            )
        for gap in erasure_gaps(conn, comparison) if ledger.erased else ():
            # Copying an erasure into the other copy below does not put it on the audit log;
            # the tenant_key_ledger status line stays red until erase-tenant completes it.
            log.warning("%s; run `%s` to complete it", gap.sentence(), gap.command)
        tenants = dict(ledger.tenants)
        keys: dict[str, bytes] = {}
        # Listing the backups only when some tenant has no ledger entry (a new tenant, or a
        # lost one), so a night with every key in place reads no manifests.
        missing = {t for t in tenant_ids if t not in ledger.tenants}
        lost = (
            [k for k in lost_keys(store, keyring, ledger) if k.tenant_id in missing]
            if missing
            else []
        )
        if lost:
            tenant, key_id, count = lost[0].tenant_id, lost[0].key_id, len(lost[0].backup_ids)
            raise CheckFailed(
                f"tenant {tenant}'s key {key_id}, which {count} retained backup(s) use, is in "
                "neither copy of the tenant key ledger and was never erased; no backup was "
                f"written (a new key would leave those backups unreadable): run `{RECOVER_COMMAND}"
                " --from <escrow export>` to bring it back."
            )
        changed = comparison.store is None or (
            comparison.database_available and comparison.database is None
        )
        # A ledger written before ledgers named their deployment gets its id now.
        changed = changed or bool(comparison.notes) or ledger.ledger_id is None
        for tenant in tenant_ids:
            entry = tenants.get(tenant)
            if entry is None:
                key = generate_data_key()
                wrapped = keyring.wrap_tenant_key(key, tenant)
                tenants[tenant] = TenantKey(
                    tenant, data_key_id(key).hex(), wrapped.key_id, wrapped.ciphertext, now
                )
                changed = True
            else:
                key = keyring.unwrap_tenant_key(entry.wrapped, tenant)
                if entry.master_key_id != keyring.current_key_id:
                    # Rotation: the entry moves to the current master key on this write.
                    wrapped = keyring.wrap_tenant_key(key, tenant)
                    tenants[tenant] = replace(
                        entry, master_key_id=wrapped.key_id, wrapped_key=wrapped.ciphertext
                    )
                    changed = True
            keys[tenant] = key
        if changed:
            ledger_id = ledger.ledger_id or new_ledger_id()
            ledger = Ledger(ledger.version + 1, now, tenants, ledger.erased, ledger_id)
            if not dry_run:
                write_both_copies(store, conn, ledger, keyring)
        return BackupTenantKeys(keys, ledger, comparison)


# --- keys for a reader ------------------------------------------------------------------------


class ObjectKeys:
    """Which key opens each object of one backup: the manifest's shared key or a tenant's key.

    Tenant keys come from the store's ledger, read once and only if the backup uses any, and
    only once the retained backups' manifests (``catalog``; listed here when not given) and the
    database's copy (``database_copy``, its bytes, when the database is reachable) show it was
    not put back from before an erasure or from another deployment.
    """

    def __init__(
        self,
        store: BackupStore,
        manifest: Manifest,
        keyring: Keyring,
        *,
        catalog: BackupCatalog | None = None,
        database_copy: bytes | None = None,
    ) -> None:
        self._store = store
        self._manifest = manifest
        self._keyring = keyring
        self._catalog = catalog
        self._database_copy = database_copy
        self._shared: bytes | None = None
        self._ledger: Ledger | None = None

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def unwrap(self, entry: TenantKey) -> bytes:
        return self._keyring.unwrap_tenant_key(entry.wrapped, entry.tenant_id)

    @property
    def shared(self) -> bytes:
        if self._shared is None:
            self._shared = unwrap_data_key(self._manifest, self._keyring)
        return self._shared

    def ledger(self) -> Ledger:
        if self._ledger is None:
            found = read_store_ledger(self._store, self._keyring)
            if found is None:
                raise LedgerError(
                    f"backup {self._manifest.backup_id} holds tenant objects encrypted under "
                    f"tenant keys, but the store has no key ledger ({LEDGER_KEY}); run "
                    f"`{RECOVER_COMMAND}` to write it again from the database's copy or the "
                    "escrow export."
                )
            self._check_not_replayed(found[0])
            self._ledger = found[0]
        return self._ledger

    def _check_not_replayed(self, ledger: Ledger) -> None:
        catalog = self._catalog or list_backups(self._store, self._keyring)
        copy = self._database_copy
        check_not_replayed(
            ledger,
            manifests=[b.manifest for b in catalog.valid if b.manifest is not None],
            database=load_ledger(copy, self._keyring) if copy is not None else None,
            first=self._manifest,
        )

    def erased_tenants(self) -> frozenset[str]:
        """Every tenant the store's ledger records as erased (none without a ledger)."""
        try:
            return frozenset(e.tenant_id for e in self.ledger().erased)
        except LedgerReplayedError:
            raise  # a ledger put back is refused, never read as "no erasures"
        except LedgerError:
            return frozenset()

    def erased(self, entry: ObjectEntry) -> ErasedKey | None:
        """The erasure that destroyed this object's key, None when it can still be read."""
        if entry.tenant_key_id is None:
            return None
        return self.ledger().erased_key(entry.tenant_key_id)

    def for_object(self, entry: ObjectEntry) -> bytes:
        if entry.tenant_key_id is None:
            return self.shared
        ledger = self.ledger()
        erased = ledger.erased_key(entry.tenant_key_id)
        if erased is not None:
            raise TenantErasedError(erased_sentence(erased, self._manifest.backup_id))
        key = ledger.tenants.get(entry.tenant_id or "")
        if key is None or key.key_id != entry.tenant_key_id:
            raise LedgerError(
                f"the key ledger holds no key {entry.tenant_key_id} for tenant "
                f"{entry.tenant_id} of backup {self._manifest.backup_id}, and records no "
                f"erasure of it; run `{RECOVER_COMMAND}` to rebuild the ledger from its copies "
                "and the escrow export."
            )
        return self._keyring.unwrap_tenant_key(key.wrapped, key.tenant_id)

    def digest_key(self, entry: ObjectEntry) -> bytes | None:
        """The key ``entry``'s digests are keyed by; None where they are plain SHA-256."""
        return part_digest_key(self._manifest, entry, self.for_object(entry))


def object_key(
    store: BackupStore, manifest: Manifest, keyring: Keyring, entry: ObjectEntry
) -> bytes:
    """The key that opens one object of a backup (a restore keeps an ``ObjectKeys`` instead)."""
    return ObjectKeys(store, manifest, keyring).for_object(entry)


def erased_sentence(erased: ErasedKey, backup_id: str) -> str:
    return (
        f"tenant {erased.tenant_id} was erased at {format_time(erased.erased_at)} (key id "
        f"{erased.key_id} destroyed), so its rows in backup {backup_id} can no longer be "
        "decrypted by anyone; there is nothing of it to restore."
    )
