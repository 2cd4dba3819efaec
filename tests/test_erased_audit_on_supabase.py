"""An erased tenant's audit rows on Supabase, as its non-superuser ``postgres``, on 15 and 17.

The app the kit adopted writes through its own tables; the kit's capture puts each write on the
audit log with the tenant. Backed up, a tenant's audit rows are in its own object; after
``erase-tenant`` (run as ``postgres``) their seal hashes are in the store and the drill still
verifies the seal chain over the restored copy without them.
"""

from __future__ import annotations

import base64
from pathlib import Path

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.erased_audit import list_hash_files
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.hardening.seals import seal_audit_log
from hardening_pipeline.restore.drill import run_restore_drill
from tests.support.cli import keyed_store_env, run_hardening
from tests.support.db import admin_connect
from tests.support.supabase_db import (
    SupabaseServer,
    adopting_app,
    supabase_server_each_major,  # noqa: F401  (fixture: every Supabase major)
)


def test_erasing_a_tenant_of_the_adopted_app_takes_its_audit_rows_and_the_drill_stays_green(
    supabase_server: SupabaseServer,
    tmp_path: Path,
    no_seal_start_margin: None,
) -> None:
    env = {**keyed_store_env(tmp_path), "BACKUP_SCHEMAS": "public,auth"}
    keyring = Keyring(base64.b64decode(env["BACKUP_ENCRYPTION_KEY"]))
    store = FileStore(tmp_path / "store")
    with adopting_app(supabase_server, migrate=True) as url:
        with admin_connect(url) as conn:  # postgres, not a superuser
            su = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert su.fetchone()["rolsuper"] is False
            victim = conn.execute(
                "SELECT tenant_id::text AS id FROM developments ORDER BY tenant_id LIMIT 1"
            ).fetchone()["id"]
            conn.execute("SELECT set_config('app.actor', 'test:edit', false)")
            conn.execute(
                "UPDATE developments SET name = name || ' (renamed)' WHERE tenant_id = %s",
                (victim,),
            )
            conn.commit()
            audited = conn.execute(
                "SELECT count(*) AS n FROM audit_events WHERE tenant_id = %s", (victim,)
            ).fetchone()["n"]
        assert audited > 0
        assert seal_audit_log(url, wait_seconds=0).seals
        backup = run_hardening("backup", url=url, env=env)
        assert backup.returncode == 0, backup.stdout + backup.stderr

        erase = run_hardening(
            "erase-tenant",
            victim,
            "--yes",
            "--evidence-dir",
            str(tmp_path / "ev"),
            url=url,
            env=env,
        )
        assert erase.returncode == 0, erase.stdout + erase.stderr
        [recorded] = list_hash_files(store, [victim])
        assert recorded.count == audited  # every audit row of the tenant's, before its erasure

        result = run_restore_drill(store, keyring)
        assert result.passed, (result.failure, result.invariants)
        assert any(i.name.startswith("erased tenants") and i.passed for i in result.invariants)
