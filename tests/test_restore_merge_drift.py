"""A merge that fails on the app's own schema drift names the table, the column and the fix.

The restore refuses missing migrations before it merges, so by then running ``hardening
migrate`` fixes nothing: the drift is in the app's columns, and the sentence must say which and
what to do. Through the command, it is exit 1 (a restore that ran and could not complete).
"""

from __future__ import annotations

import base64

import pytest

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.errors import CheckFailed
from hardening_pipeline.restore.tenant import restore_tenant
from hardening_pipeline.seed import seed_demo_data
from tests.support.cli import run_hardening
from tests.support.db import admin_connect

KEY = bytes(range(32))

APP_TABLE = """
CREATE TABLE public.notes (
    id bigint PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES public.tenants (id),
    body text NOT NULL,
    color text
);
CREATE INDEX notes_tenant_id_idx ON public.notes (tenant_id);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.notes TO service_role;
"""


@pytest.fixture
def backed_up(db_url, tmp_path) -> tuple[str, FileStore, str]:
    seed_demo_data(db_url, tenants=2, messages_per_unit=1, random_seed=5)
    with admin_connect(db_url) as conn:
        conn.execute(APP_TABLE)
        conn.execute("SELECT set_config('app.actor', 'test:app', false)")
        conn.execute(
            "INSERT INTO public.notes (id, tenant_id, body, color) "
            "SELECT row_number() OVER (), id, 'hello', 'red' FROM public.tenants"
        )
        tenant = str(conn.execute("SELECT min(tenant_id::text) AS t FROM notes").fetchone()["t"])
        conn.commit()
    store = FileStore(tmp_path / "store")
    run_backup(db_url, store, Keyring(KEY))
    with admin_connect(db_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:app', false)")
        conn.execute("DELETE FROM public.notes")
        conn.execute("ALTER TABLE public.notes DROP COLUMN color")  # the app's own drift
        conn.commit()
    return db_url, store, tenant


def test_merge_failure_on_an_app_column_names_it_and_its_fix(backed_up, tmp_path):
    url, store, tenant = backed_up
    with pytest.raises(CheckFailed) as caught:
        restore_tenant(store, Keyring(KEY), tenant_id=tenant, target_url=url, merge=True)
    message = str(caught.value)
    assert "public.notes" in message and "color" in message, message
    assert "hardening migrate" not in message, message

    result = run_hardening(
        "restore",
        "--tenant",
        tenant,
        "--into",
        url,
        "--merge",
        url=url,
        env={
            "BACKUP_ENCRYPTION_KEY": base64.b64encode(KEY).decode(),
            "BACKUP_STORE_URL": store.root.as_uri(),
        },
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "public.notes" in result.stderr and "hardening migrate" not in result.stderr
