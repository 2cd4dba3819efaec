"""A backup taken before a function's definition changed still drills green.

The drill restores the backup's own functions, then applies this checkout's migrations and
changed definitions as the role that owns the migration record. A function the audit owner owns
(the capture) is changed as the audit owner, which that role may not be: the drill lends it.
"""

from __future__ import annotations

import re

from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.seed import seed_demo_data
from hardening_pipeline.sql_files import MIGRATIONS_DIR
from tests.support.db import admin_connect


def test_a_backup_whose_capture_is_the_previous_release_s_drills_green(
    db_url, s3_server, s3_bucket, keyring
):
    store = s3_server.store(s3_bucket)
    text = (MIGRATIONS_DIR / "018_capture_keys_and_claims.sql").read_text()
    earlier = re.search(
        r"CREATE OR REPLACE FUNCTION hardening\.audit_capture_insert\(\).*?\$fn\$;", text, re.S
    ).group(0)
    seed_demo_data(db_url, tenants=2, messages_per_unit=2, random_seed=3)
    with admin_connect(db_url) as conn:
        conn.execute(earlier)
        conn.commit()
    run_backup(db_url, store, keyring)
    result = run_restore_drill(store, keyring)
    assert result.passed, (result.failure, result.invariants, result.tests_output)
    assert "definitions/audit_capture_insert.sql" in result.upgraded_with
