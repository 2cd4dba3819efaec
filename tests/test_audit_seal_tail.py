"""The end of the chain: the newest seal deleted, and sealing held back by an open transaction.

1. A superuser deletes the newest seal (and its store copy) and rewrites a row it covered: the
   chain left is intact, so only the anchor the sealer keeps on its own host shows it; with the
   key but neither store nor anchor the line says it cannot verify the tail.
2. Any role holds a transaction open: sealing stops at the rows written before it began. The
   seal output names the session; once the oldest unsealed row has waited longer than the bound
   (HARDENING_SEAL_MAX_LAG_MINUTES, set to 0 here instead of waiting) the chain is red.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from datetime import timedelta

import psycopg
import pytest

from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.hardening.seals import (
    SealError,
    read_seals,
    seal_audit_log,
    store_key,
    verify_audit_seals,
)
from hardening_pipeline.hardening.seals.anchor import anchor_file_name, read_anchor
from hardening_pipeline.hardening.seals.horizon import ENV_MAX_SEAL_LAG
from hardening_pipeline.hardening.status import run_status_check
from tests.support import independent_seal_verifier as independent
from tests.support.cli import keyed_store_env, run_hardening
from tests.support.db import admin_connect, write_tenants

LINE = "audit_seal_chain"


@pytest.fixture
def su(db_url):
    with admin_connect(db_url, autocommit=True) as conn:
        yield conn


def delete_newest_seal_and_rewrite(su: psycopg.Connection, row_id: int) -> int:
    """What a superuser does to the end of the chain; returns the deleted seal's seq."""
    seq = su.execute("SELECT max(seq) AS s FROM hardening.audit_seals").fetchone()["s"]
    with su.transaction():
        su.execute("ALTER TABLE hardening.audit_seals DISABLE TRIGGER audit_seals_append_only")
        su.execute("DELETE FROM hardening.audit_seals WHERE seq = %s", (seq,))
        su.execute(
            "ALTER TABLE hardening.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only"
        )
        su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        su.execute("UPDATE audit_events SET actor = 'forged' WHERE id = %s", (row_id,))
        su.execute("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")
    return seq


def two_seals(db_url, su, store, keyring, anchor_path) -> list[int]:
    write_tenants(su, 1)
    seal_audit_log(db_url, store=store, keyring=keyring, anchor_path=anchor_path)
    later = write_tenants(su, 1)
    run = seal_audit_log(db_url, store=store, keyring=keyring, anchor_path=anchor_path)
    assert run.latest.seq == 2 and run.latest.from_id == later[0]
    return later


# --- 1. the newest seal deleted ----------------------------------------------------------------


def test_a_deleted_newest_seal_is_red_with_the_key_and_no_store(db_url, su, tmp_path, keyring):
    store = FileStore(tmp_path / "store")
    anchor_path = tmp_path / "state" / "anchor.json"
    later = two_seals(db_url, su, store, keyring, anchor_path)
    assert read_anchor(anchor_path).seq == 2
    delete_newest_seal_and_rewrite(su, later[1])

    keyed = verify_audit_seals(db_url, keyring=keyring)
    assert not keyed.passed and "cannot verify the tail" in keyed.detail, keyed.detail
    assert LINE in [x.name for x in run_status_check(db_url, keyring=keyring).red]

    anchored = verify_audit_seals(db_url, keyring=keyring, anchor_path=anchor_path)
    assert not anchored.passed, anchored.detail
    assert "seal 2" in anchored.detail and "anchored outside the database" in anchored.detail
    report = run_status_check(db_url, seal_anchor=anchor_path)
    assert LINE in [x.name for x in report.red]


def test_sealing_refuses_to_seal_the_forged_row_when_the_store_copy_is_gone_too(
    db_url, su, tmp_path, keyring
):
    store = FileStore(tmp_path / "store")
    anchor_path = tmp_path / "state" / "anchor.json"
    later = two_seals(db_url, su, store, keyring, anchor_path)
    seq = delete_newest_seal_and_rewrite(su, later[1])
    (tmp_path / "store" / store_key(seq)).unlink()

    with pytest.raises(SealError, match="sealing refused: seal 2 .* anchored outside"):
        seal_audit_log(db_url, store=store, keyring=keyring, anchor_path=anchor_path)
    assert [s.seq for s in read_seals(su)] == [1]  # nothing sealed over the forged row
    assert read_anchor(anchor_path).seq == 2  # and the anchor did not move back
    result = verify_audit_seals(db_url, store=store, keyring=keyring, anchor_path=anchor_path)
    assert not result.passed and "newer seals were deleted" in result.detail


def test_a_seal_recomputed_under_the_anchor_is_red(db_url, su, tmp_path, keyring):
    """Delete the newest seal and seal again without the anchor: the new seal 2 has another
    digest than the one anchored."""
    anchor_path = tmp_path / "state" / "anchor.json"
    later = two_seals(db_url, su, None, keyring, anchor_path)
    delete_newest_seal_and_rewrite(su, later[1])
    seal_audit_log(db_url, keyring=keyring)  # the attacker's run, without the anchor
    result = verify_audit_seals(db_url, keyring=keyring, anchor_path=anchor_path)
    assert not result.passed and "seal 2 differs from the anchor" in result.detail


def test_a_forged_anchor_is_red(db_url, su, tmp_path, keyring):
    anchor_path = tmp_path / "state" / "anchor.json"
    two_seals(db_url, su, None, keyring, anchor_path)
    body = json.loads(anchor_path.read_bytes())
    body["seq"] = 1
    anchor_path.write_text(json.dumps(body))
    result = verify_audit_seals(db_url, keyring=keyring, anchor_path=anchor_path)
    assert not result.passed and "anchor has a MAC that does not match" in result.detail


def test_cli_seal_keeps_the_anchor_and_refuses_after_the_tail_is_cut(db_url, su, tmp_path):
    env = {
        **keyed_store_env(tmp_path),
        "HARDENING_STATE_DIR": str(tmp_path / "state"),
        "HARDENING_REPORTS_DIR": str(tmp_path / "reports"),
    }
    cli = functools.partial(run_hardening, url=db_url, env=env, timeout=120)
    write_tenants(su, 1)
    assert cli("seal").returncode == 0
    later = write_tenants(su, 1)
    assert cli("seal").returncode == 0
    assert read_anchor(tmp_path / "state" / anchor_file_name(db_url)).seq == 2
    seq = delete_newest_seal_and_rewrite(su, later[1])
    (tmp_path / "store" / store_key(seq)).unlink()

    sealed = cli("seal")
    out = sealed.stdout + sealed.stderr
    assert sealed.returncode != 0 and "anchored outside the database" in out, out
    assert "Traceback" not in sealed.stderr
    assert [s.seq for s in read_seals(su)] == [1]
    status = cli("status", "--no-alert")
    assert status.returncode == 1
    (report,) = (tmp_path / "reports").glob("status-*.json")
    lines = {x["name"]: x for x in json.loads(report.read_text())["lines"]}
    assert not lines[LINE]["passed"] and "newer seals were deleted" in lines[LINE]["detail"]


def test_an_intact_chain_is_green_against_its_anchor(db_url, su, tmp_path, keyring):
    anchor_path = tmp_path / "state" / "anchor.json"
    two_seals(db_url, su, None, keyring, anchor_path)
    result = verify_audit_seals(db_url, keyring=keyring, anchor_path=anchor_path)
    assert result.passed and "reaches the anchored seal 2" in result.detail, result.detail


# --- 2. sealing held back by an open transaction ------------------------------------------------


@pytest.fixture
def holder(db_url):
    """Any login role's session holding a transaction id, the way `SELECT txid_current()` does."""
    with admin_connect(db_url) as conn:
        conn.execute("SET application_name = 'idle-in-transaction-probe'")
        conn.commit()
        conn.execute("SELECT txid_current()")
        yield conn.info.backend_pid
        conn.rollback()


def test_a_held_back_seal_names_the_session_and_turns_red_after_the_bound(
    db_url, su, holder, monkeypatch
):
    # Written while the transaction is open, in two transactions: the seal stops before them.
    write_tenants(su, 2)
    run = seal_audit_log(db_url, wait_seconds=0)
    assert run.horizon.held_back_by
    assert f"pid {holder}" in run.summary() and "idle-in-transaction-probe" in run.summary()

    monkeypatch.setenv(ENV_MAX_SEAL_LAG, "0")
    result = verify_audit_seals(db_url)
    assert not result.passed, result.detail
    assert "sealing is stalled" in result.detail and f"pid {holder}" in result.detail
    report = run_status_check(db_url)
    assert LINE in [x.name for x in report.red]


def test_the_seal_command_exits_red_while_held_back_past_the_bound(db_url, su, holder, tmp_path):
    write_tenants(su, 2)
    env = {**keyed_store_env(tmp_path), ENV_MAX_SEAL_LAG: "0"}
    done = run_hardening("seal", "--wait", "0", url=db_url, env=env, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"pid {holder}" in out and "idle-in-transaction-probe" in out and "stalled" in out


def test_within_the_bound_a_held_back_seal_stays_green(db_url, su, holder):
    write_tenants(su, 2)
    seal_audit_log(db_url, wait_seconds=0)
    result = verify_audit_seals(db_url, max_lag=timedelta(days=1))
    assert result.passed, result.detail


def test_a_bad_bound_is_one_sentence_and_exit_2(db_url, su, tmp_path):
    env = {**keyed_store_env(tmp_path), ENV_MAX_SEAL_LAG: "soon"}
    write_tenants(su, 1)
    done = run_hardening("seal", url=db_url, env=env, timeout=120)
    assert done.returncode == 2 and ENV_MAX_SEAL_LAG in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert read_seals(su) == []  # refused before anything was sealed


def test_an_independent_verifier_reads_the_anchor_from_the_docs(db_url, su, tmp_path):
    """tests/support/independent_seal_verifier.py imports nothing from the kit."""
    master = os.urandom(32)
    env = {
        "BACKUP_ENCRYPTION_KEY": base64.b64encode(master).decode(),
        "BACKUP_STORE_URL": (tmp_path / "store").as_uri(),
        "HARDENING_STATE_DIR": str(tmp_path / "state"),
    }
    write_tenants(su, 1)
    assert run_hardening("seal", url=db_url, env=env, timeout=120).returncode == 0
    later = write_tenants(su, 1)
    assert run_hardening("seal", url=db_url, env=env, timeout=120).returncode == 0
    path = independent.anchor_path(tmp_path / "state", db_url)
    assert independent.verify_anchor(db_url, path, master) == []
    delete_newest_seal_and_rewrite(su, later[1])
    assert independent.verify_anchor(db_url, path, master) == [
        "seal 2 is anchored but not in the chain"
    ]
