"""The drill's proof about erased tenants: their objects are still there, and nothing opens them."""

from __future__ import annotations

from collections.abc import Sequence

from hardening_pipeline.backup.crypto import BackupIntegrityError
from hardening_pipeline.backup.manifest import ObjectEntry
from hardening_pipeline.backup.object_format import ObjectDecoder
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.backup.tenant_key_use import ObjectKeys
from hardening_pipeline.backup.tenant_keys import ErasedKey
from hardening_pipeline.restore.reader import fetched_backup, file_chunks


def prove_unreadable(
    store: BackupStore,
    folder: str,
    keys: ObjectKeys,
    erased: Sequence[tuple[ObjectEntry, ErasedKey]],
) -> tuple[bool, str]:
    """Each erased tenant's object is still there, intact, and no key the kit holds opens it.

    The candidates are every key a restore could use: the backup's own data key (which the
    master key unwraps) and every live tenant key of the ledger. Each must be refused by the
    object's header before a byte is decrypted; the ledger must record the key as destroyed.
    """
    ledger = keys.ledger()
    candidates = [keys.shared, *(keys.unwrap(k) for k in ledger.tenants.values())]
    problems, proven = [], []
    with fetched_backup(store, keys.manifest, folder, only={o.name for o, _ in erased}) as got:
        for entry, record in erased:
            opened = 0
            for key in candidates:
                try:
                    for _ in ObjectDecoder(
                        file_chunks(got[entry.name].path),
                        key,
                        backup_id=keys.manifest.backup_id,
                        object_name=entry.name,
                    ):
                        break
                    opened += 1
                except BackupIntegrityError:
                    pass
            if opened or entry.tenant_key_id in ledger.key_ids():
                problems.append(f"tenant {entry.tenant_id}'s object still opens")
            else:
                proven.append(
                    f"tenant {record.tenant_id} (key {record.key_id} destroyed "
                    f"{record.erased_at:%Y-%m-%d %H:%M}Z): {len(candidates)} keys refused"
                )
    return not problems, "; ".join(problems or proven)
