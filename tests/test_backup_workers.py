"""Backups exported by several workers: same backup, same instant, nothing published on failure.

Each worker is a thread with its own connection joined to the main connection's exported
snapshot. These tests try to break what that must keep: the manifest must not depend on the
number of workers, rows committed while the workers run must not leak into the backup, and a
worker that fails must fail the whole run before a manifest exists.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring, generate_master_key_b64
from hardening_pipeline.backup.manifest import MANIFEST_NAME, Manifest
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import FileStore, StoreError
from hardening_pipeline.backup.tenant_keys import LEDGER_KEY
from hardening_pipeline.errors import ConfigError, HardeningError
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import admin_connect
from tests.support.stores import RecordingStore

TENANTS = 6
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def seeded(db_url: str) -> str:
    seed_demo_data(db_url, tenants=TENANTS, messages_per_unit=5, random_seed=11)
    return db_url


def content(manifest: Manifest) -> list[tuple]:
    """What a backup holds, without what differs by design (ids, keys, ciphertext)."""
    return [
        (
            o.name,
            o.tenant_id,
            o.plaintext_sha256,
            [(t.name, t.columns, t.row_count, t.bytes, t.sha256) for t in o.tables],
        )
        for o in manifest.objects
    ]


def test_two_workers_back_up_exactly_what_one_does(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    one = run_backup(seeded, FileStore(tmp_path / "one"), keyring, workers=1)
    two_store = RecordingStore(FileStore(tmp_path / "two"))
    two = run_backup(seeded, two_store, keyring, workers=2)

    assert content(two.manifest) == content(one.manifest)
    assert len(two.manifest.objects) == TENANTS + 1
    # Same deterministic order as one worker: tenants by id, the shared object last.
    tenant_ids = [o.tenant_id for o in two.manifest.objects]
    assert tenant_ids[-1] is None and tenant_ids[:-1] == sorted(tenant_ids[:-1])
    puts = [key for op, key in two_store.calls if op == "put"]
    assert puts[-1].endswith("/" + MANIFEST_NAME)
    stored = FileStore(tmp_path / "two").list()
    assert two.stored_bytes == sum(o.size for o in stored if o.key != LEDGER_KEY)
    catalog = list_backups(FileStore(tmp_path / "two"), keyring)
    assert [b.backup_id for b in catalog.valid] == [two.backup_id]


def _in_transaction_elsewhere(url: str) -> int:
    """Other client sessions of this database that are inside a transaction right now."""
    with admin_connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND xact_start IS NOT NULL "
            "AND pid <> pg_backend_pid()"
        ).fetchone()["n"]


def test_rows_committed_while_workers_run_are_not_in_the_backup(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    with admin_connect(seeded) as conn:
        before = {
            r["tenant_id"]: r["n"]
            for r in conn.execute(
                "SELECT tenant_id::text AS tenant_id, count(*) AS n FROM messages GROUP BY 1"
            )
        }
    written_after: list[int] = []

    def write_during_backup(name: str, done: int, total: int) -> None:
        if written_after:
            return
        # Both workers hold their snapshot transaction now (the other one waits for the lock
        # this callback runs under), so the rows below are committed mid-backup for sure.
        deadline = time.monotonic() + 10
        while _in_transaction_elsewhere(seeded) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _in_transaction_elsewhere(seeded) >= 2, "the second worker never started"
        with admin_connect(seeded) as conn:
            conn.execute("SELECT set_config('app.actor', 'test:concurrent-writer', true)")
            conn.execute(
                "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body) "
                "SELECT tenant_id, development_id, id, 'late', 'written during the backup' "
                "FROM units"
            )
            conn.execute(
                "INSERT INTO tenants (id, slug, name) VALUES (%s, %s, 'Late Tenant')",
                (uuid.uuid4(), f"late-{uuid.uuid4().hex[:8]}"),
            )
            conn.commit()
        written_after.append(done)

    result = run_backup(
        seeded, FileStore(tmp_path / "b"), keyring, workers=2, on_object=write_during_backup
    )

    assert written_after and written_after[0] < TENANTS + 1  # objects were exported after it
    with admin_connect(seeded) as conn:
        now = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
    assert now > sum(before.values())  # the concurrent rows really exist
    backed_up = {
        o.tenant_id: next(t.row_count for t in o.tables if t.name == "messages")
        for o in result.manifest.objects
        if o.tenant_id is not None
    }
    assert backed_up == before  # no late tenant, no late message, in any worker's objects


class FailingInWorkerThreads(RecordingStore):
    """Fails every put made by a joined worker thread; slows the main thread's puts so the
    joined worker is sure to take objects."""

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        if threading.current_thread().name.startswith("backup-worker"):
            self.calls.append(("put", key))
            for _ in chunks:
                pass
            raise StoreError(f"injected failure writing {key} in a worker")
        time.sleep(0.3)
        return super().put(key, chunks)


def test_a_failing_worker_fails_the_run_and_leaves_no_manifest(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    store = FailingInWorkerThreads(FileStore(tmp_path / "backups"))
    with pytest.raises(StoreError, match="in a worker"):
        run_backup(seeded, store, keyring, workers=2)
    assert not any(key.endswith(MANIFEST_NAME) for _, key in store.calls)
    catalog = list_backups(store.inner, keyring)
    assert catalog.valid == [] and catalog.invalid == []
    # The lock was released and the connections closed: the next run works.
    result = run_backup(seeded, FileStore(tmp_path / "again"), keyring, workers=2)
    assert len(result.manifest.objects) == TENANTS + 1


def test_a_failing_main_worker_also_fails_the_run(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    store = RecordingStore(FileStore(tmp_path / "backups"), fail_put_at=2)
    with pytest.raises(HardeningError, match="injected failure"):
        run_backup(seeded, store, keyring, workers=3)
    assert not any(key.endswith(MANIFEST_NAME) for _, key in store.calls)
    assert list_backups(store.inner, keyring).valid == []


@pytest.mark.parametrize("workers", [0, -1, 33, True, 1.5])
def test_worker_count_is_checked_before_anything_runs(
    workers: object, keyring: Keyring, tmp_path: Path
) -> None:
    store = RecordingStore(FileStore(tmp_path / "backups"))
    with pytest.raises(ConfigError, match="workers"):
        run_backup("postgresql://nowhere.invalid/app", store, keyring, workers=workers)  # type: ignore[arg-type]
    assert store.calls == []


def _cli_backup(url: str, key: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "HARDENING_"))}
    env.update(
        HARDENING_DATABASE_URL=url,
        HARDENING_STATE_DIR=str(tmp_path / "state"),
        BACKUP_STORE_URL=(tmp_path / "store").as_uri(),
        BACKUP_ENCRYPTION_KEY=key,
    )
    return subprocess.run(
        [sys.executable, "-m", "hardening_pipeline.cli", "backup", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_backup_with_workers(seeded: str, tmp_path: Path) -> None:
    key = generate_master_key_b64()
    refused = _cli_backup(seeded, key, tmp_path, "--workers", "0")
    assert refused.returncode == 2 and "--workers" in refused.stderr
    assert not (tmp_path / "store").exists()

    proc = _cli_backup(seeded, key, tmp_path, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    catalog = list_backups(FileStore(tmp_path / "store"), Keyring(base64.b64decode(key)))
    assert len(catalog.valid) == 1
    assert len(catalog.valid[0].manifest.objects) == TENANTS + 1
