"""The `hardening` command as a user runs it: a real process, real exit codes, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HARDENING_", "BACKUP_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hardening_pipeline.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=120,
    )


def test_migrate_then_status_on_a_given_database(empty_db_url):
    first = run_cli("migrate", env={"HARDENING_DATABASE_URL": empty_db_url})
    assert first.returncode == 0, first.stderr
    assert "applied 004_rls_lockdown.sql" in first.stdout
    again = run_cli("migrate", env={"HARDENING_DATABASE_URL": empty_db_url})
    assert again.returncode == 0 and "nothing to apply" in again.stdout
    status = run_cli("migrate", "--status", env={"HARDENING_DATABASE_URL": empty_db_url})
    assert status.returncode == 0 and status.stdout.count("applied") >= 4


def test_a_function_that_differs_from_its_definition_is_shown_planned_and_applied_again(
    empty_db_url,
):
    env = {"HARDENING_DATABASE_URL": empty_db_url, "COLUMNS": "200"}  # whole file names
    assert run_cli("migrate", env=env).returncode == 0
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION hardening.current_tenant_id() RETURNS uuid "
            "LANGUAGE sql STABLE SET search_path = '' AS $fn$ SELECT NULL::uuid $fn$"
        )
    name = "definitions/current_tenant_id.sql"
    status = run_cli("migrate", "--status", env=env)
    assert status.returncode == 1 and name in status.stdout, status.stdout
    plan = run_cli("migrate", "--plan", env=env)
    assert plan.returncode == 0 and f"definitions applied again: {name}" in plan.stdout
    applied = run_cli("migrate", env=env)
    assert applied.returncode == 0 and f"applied {name}" in applied.stdout, applied.stdout
    assert "nothing to apply" not in applied.stdout
    assert run_cli("migrate", "--status", env=env).returncode == 0


def test_status_of_an_unmigrated_database_is_red(empty_db_url):
    result = run_cli("migrate", "--status", env={"HARDENING_DATABASE_URL": empty_db_url})
    assert result.returncode == 1
    assert "pending" in result.stdout


def test_migrate_on_the_embedded_default(tmp_path):
    result = run_cli("migrate", env={"HARDENING_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, result.stderr
    assert "embedded database" in result.stderr
    assert (tmp_path / "state" / "pgdata" / "PG_VERSION").exists()


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"HARDENING_DATABASE_URL": "mysql://db/x"}, "HARDENING_DATABASE_URL must start with"),
        ({"HARDENING_DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}, "could not connect"),
        ({"HARDENING_DATABASE_URL": "just-garbage"}, "neither a postgresql:// URL"),
        ({"BACKUP_STORE_URL": "ftp://host/x"}, "BACKUP_STORE_URL must start with"),
        ({"BACKUP_STORE_URL": "s3:///no-bucket"}, "must name a bucket"),
    ],
)
def test_bad_configuration_is_one_sentence_and_exit_2(env, needle):
    result = run_cli("migrate", env=env)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_unknown_option_is_exit_2():
    result = run_cli("migrate", "--no-such-flag")
    assert result.returncode == 2
    assert "No such option" in result.stderr
