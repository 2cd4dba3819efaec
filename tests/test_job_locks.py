"""Job locks: only the jobs can take them, and a busy lock names its holder.

The backup and the seal used to serialise on advisory lock keys that any connecting role could
take; these tests attack the new locks from every application role and from the old keys.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.nightly import BACKUP_LOCK_KEY, run_backup
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.db.job_locks import JobLockBusy
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.hardening.seals import sealing as seals
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import acting_as, admin_connect

APP_ROLES = ["anon", "authenticated", "service_role"]


@pytest.fixture
def seeded(db_url: str) -> str:
    seed_demo_data(db_url, tenants=2, messages_per_unit=2, random_seed=3)
    return db_url


@pytest.mark.parametrize("role", APP_ROLES)
@pytest.mark.parametrize("job", ["backup", "seal"])
def test_application_roles_cannot_take_a_job_lock(admin, role: str, job: str) -> None:
    for statement in (
        "SELECT job FROM hardening.job_locks WHERE job = %s FOR UPDATE NOWAIT",
        "SELECT job FROM hardening.job_locks WHERE job = %s FOR SHARE",
        "UPDATE hardening.job_locks SET job = job WHERE job = %s",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            with acting_as(admin, role):
                admin.execute(statement, (job,))


@pytest.mark.parametrize("role", APP_ROLES)
def test_the_old_advisory_keys_held_by_an_app_role_block_nothing(
    seeded: str, keyring: Keyring, tmp_path: Path, role: str
) -> None:
    with admin_connect(seeded) as holder:
        holder.execute(f"SET ROLE {role}")
        holder.execute("SELECT pg_advisory_lock(%s)", (BACKUP_LOCK_KEY,))
        holder.execute("SELECT pg_advisory_lock(%s)", (seals._LOCK_KEY,))
        result = run_backup(seeded, FileStore(tmp_path / f"store-{role}"), keyring)
        assert result.rows > 0
        run = seals.seal_audit_log(seeded, wait_seconds=0)
        assert run is not None


def test_a_busy_backup_lock_names_its_holder_and_touches_nothing(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    store_root = tmp_path / "store"
    with psycopg.connect(seeded, application_name="nightly-on-host-7") as holder:
        holder.execute("SELECT job FROM hardening.job_locks WHERE job = 'backup' FOR UPDATE")
        pid = holder.info.backend_pid
        with pytest.raises(JobLockBusy) as caught:
            run_backup(seeded, FileStore(store_root), keyring)
        holder.rollback()
    message = str(caught.value)
    assert f"pid {pid}" in message and "nightly-on-host-7" in message
    assert "pg_terminate_backend" in message
    assert not store_root.exists() or list(store_root.rglob("*")) == []
    run_backup(seeded, FileStore(store_root), keyring)  # free again once the holder is gone


def test_a_second_sealer_gives_up_after_the_lock_timeout_naming_the_holder(
    seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seals, "SEAL_LOCK_TIMEOUT_MS", 200)
    with psycopg.connect(seeded, application_name="stuck-sealer") as holder:
        holder.execute("SELECT job FROM hardening.job_locks WHERE job = 'seal' FOR UPDATE")
        with pytest.raises(JobLockBusy, match="stuck-sealer"):
            seals.seal_audit_log(seeded, wait_seconds=0)
        holder.rollback()
    assert seals.seal_audit_log(seeded, wait_seconds=0) is not None


def test_a_missing_lock_row_refuses_the_job_instead_of_running_unserialised(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    with admin_connect(seeded, autocommit=True) as conn:
        conn.execute("DELETE FROM hardening.job_locks")
    store_root = tmp_path / "store"
    with pytest.raises(ConfigError, match=r"no row for the backup job.*INSERT INTO"):
        run_backup(seeded, FileStore(store_root), keyring)
    assert not store_root.exists() or list(store_root.rglob("*")) == []
    with pytest.raises(ConfigError, match="no row for the seal job"):
        seals.seal_audit_log(seeded, wait_seconds=0)
