"""Bad input everywhere: every mistake is one clear sentence, the documented exit code, no trace.

Each case runs the real command (a subprocess, as a user or cron would) and then checks that
nothing was written: no store folder, no state folder, no report, and the database exactly as
it was. Unknown options are checked for every command the CLI has, so a command added later is
covered without touching this file.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import MAC_FIELD, MANIFEST_NAME
from hardening_pipeline.backup.store import FileStore, open_store
from hardening_pipeline.cli import main
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.settings import (
    ENV_DATABASE_URL,
    ENV_S3_ENDPOINT_URL,
    ENV_SLACK_WEBHOOK_URL,
    ENV_STORE_URL,
    load_settings,
)
from tests.support.cli import run_hardening
from tests.support.db import admin_connect
from tests.test_backup_manifest import resign
from tests.test_backup_retention_apply import write_backup

REPO = Path(__file__).resolve().parents[1]
KEY = bytes(range(50, 82))
KEY_B64 = base64.b64encode(KEY).decode()
CONTRACT_COMMANDS = {
    "migrate",
    "status",
    "seed",
    "backup",
    "retention",
    "restore-drill",
    "restore",
    "canaries",
    "evidence",
    "keygen",
}
# Arguments a command needs before click even looks at an unknown option.
REQUIRED_ARGS = {"restore": ["--tenant", "t", "--into", "postgresql:///x"]}


def run_cli(args: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it; ``cwd`` is a scratch folder so defaults land there."""
    full = {
        k: v for k, v in os.environ.items() if not k.startswith(("HARDENING_", "BACKUP_", "SLACK_"))
    }
    full.update(env)
    full["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "hardening_pipeline.cli", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_sentence(stderr: str) -> str:
    """The single non-empty line a user mistake may print; fails on tracebacks or chatter."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def database_fingerprint(url: str) -> dict[str, Any]:
    """What any command could have changed: rows, audit entries, migrations, tables."""
    with admin_connect(url) as conn:
        return {
            "tenants": conn.execute("SELECT count(*) AS n FROM tenants").fetchone()["n"],
            "audit": conn.execute("SELECT count(*) AS n FROM audit_events").fetchone()["n"],
            "migrations": conn.execute(
                "SELECT count(*) AS n FROM hardening.schema_migrations"
            ).fetchone()["n"],
            "tables": conn.execute(
                "SELECT count(*) AS n FROM pg_tables WHERE schemaname NOT IN "
                "('pg_catalog', 'information_schema')"
            ).fetchone()["n"],
        }


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


# --- options ------------------------------------------------------------------------------------


def test_every_contract_command_exists() -> None:
    assert CONTRACT_COMMANDS <= set(main.commands)


@pytest.mark.parametrize("command", sorted(main.commands))
def test_unknown_option_is_exit_2_for_every_command(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [command, *REQUIRED_ARGS.get(command, []), "--no-such-option"]
    result = CliRunner().invoke(main, args, env={"HARDENING_DATABASE_URL": "postgresql:///x"})
    assert list(tmp_path.iterdir()) == []
    assert result.exit_code == 2, result.output
    assert "No such option" in result.output and "--no-such-option" in result.output
    assert isinstance(result.exception, SystemExit)  # click's usage error, not a crash


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["seed", "--tenants", "-1"],
        ["seed", "--tenants", "many"],
        ["retention", "--keep-daily", "-3"],
        ["restore", "--tenant", "t"],
        ["evidence", "--out"],
    ],
)
def test_bad_option_values_are_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)


# --- malformed environment ----------------------------------------------------------------------


def env_cases(db_url: str, store_url: str) -> list[tuple[list[str], dict[str, str], str]]:
    """(command, environment, fragment of the one sentence expected), all exit 2."""
    good = {ENV_DATABASE_URL: db_url, "BACKUP_ENCRYPTION_KEY": KEY_B64, ENV_STORE_URL: store_url}
    short = base64.b64encode(os.urandom(16)).decode()
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    return [
        (["backup"], {**good, "BACKUP_ENCRYPTION_KEY": short}, "must decode to exactly 32"),
        (["backup"], {**good, "BACKUP_ENCRYPTION_KEY": urlsafe}, "is not valid base64"),
        (["backup"], {**good, "BACKUP_ENCRYPTION_KEY": "  "}, "BACKUP_ENCRYPTION_KEY is not set"),
        (
            ["retention"],
            {**good, "BACKUP_ENCRYPTION_KEYS_PREVIOUS": f"{KEY_B64},{short}"},
            "BACKUP_ENCRYPTION_KEYS_PREVIOUS entry 2",
        ),
        (["restore-drill"], {**good, "BACKUP_ENCRYPTION_KEY": "%%%"}, "is not valid base64"),
        (["backup"], {**good, ENV_STORE_URL: "s3://bucket/a/../b"}, "unusable prefix"),
        (["backup"], {**good, ENV_STORE_URL: "file://relative/dir"}, "absolute path"),
        (["backup"], {**good, ENV_STORE_URL: "s3://[bucket/x"}, "not a valid URL"),
        (["backup"], {**good, ENV_STORE_URL: "gs://bucket"}, "must start with one of s3://"),
        (
            ["backup"],
            {**good, ENV_STORE_URL: "s3://b/x", ENV_S3_ENDPOINT_URL: "https:///path"},
            "BACKUP_S3_ENDPOINT_URL must name a host",
        ),
        (
            ["retention"],
            {**good, ENV_S3_ENDPOINT_URL: "s3.us-west-004.backblazeb2.com"},
            "BACKUP_S3_ENDPOINT_URL must start with one of http://",
        ),
        (
            ["seed", "--tenants", "1"],
            {**good, ENV_SLACK_WEBHOOK_URL: "hooks.slack.com/services/T/B/X"},
            "SLACK_WEBHOOK_URL must start with one of http://",
        ),
        (
            ["status"],
            {**good, ENV_SLACK_WEBHOOK_URL: "https://[hooks.slack.com/x"},
            "SLACK_WEBHOOK_URL is not a valid URL",
        ),
        (
            ["canaries"],
            {**good, "HARDENING_RUNBOOK_URL": "ops.example.org/runbook.html"},
            "HARDENING_RUNBOOK_URL must start with one of http://",
        ),
        (["migrate"], {**good, ENV_DATABASE_URL: "mysql://db/x"}, "must start with one of"),
        (["seed"], {**good, ENV_DATABASE_URL: "postgresql://[::1/x"}, "not a valid URL"),
        (["canaries"], {**good, ENV_DATABASE_URL: "host=x port=1 =y"}, "neither a postgresql"),
        (
            ["restore", "--tenant", "t", "--into", "mysql://x/y"],
            good,
            "--into must start with one of postgres://",
        ),
    ]


def test_malformed_environment_is_one_sentence_exit_2_and_writes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    before = database_fingerprint(db_url)
    cases = env_cases(db_url, store_dir.as_uri())
    scratch = [tmp_path / f"case-{i}" for i in range(len(cases))]
    for folder in scratch:
        folder.mkdir()

    def run(index: int) -> subprocess.CompletedProcess[str]:
        args, env, _ = cases[index]
        extra = {
            "HARDENING_STATE_DIR": str(scratch[index] / "state"),
            "HARDENING_REPORTS_DIR": str(scratch[index] / "reports"),
        }
        return run_cli(args, {**env, **extra}, scratch[index])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(len(cases))))
    for (args, env, fragment), result, folder in zip(cases, results, scratch, strict=True):
        where = f"{args} with {sorted(set(env) - {ENV_DATABASE_URL})}"
        assert result.returncode == 2, (where, result.stdout, result.stderr)
        line = one_sentence(result.stderr)
        assert line.startswith("error:") and fragment in line, (where, line)
        assert KEY_B64 not in line and "hooks.slack.com/services" not in line
        assert list(folder.iterdir()) == [], where  # no state, reports or default store
    assert not store_dir.exists()
    assert database_fingerprint(db_url) == before


URL_VARIABLES = (ENV_DATABASE_URL, ENV_STORE_URL, ENV_S3_ENDPOINT_URL, ENV_SLACK_WEBHOOK_URL)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(URL_VARIABLES),
    value=st.one_of(
        st.text(max_size=40),
        st.builds(
            "{}://{}".format,
            st.sampled_from(["s3", "file", "http", "https", "postgresql", ""]),
            st.text(alphabet="[]:/@?#% ab.\\\x00", max_size=20),
        ),
    ),
)
def test_fuzz_settings_and_store_urls_fail_only_with_config_errors(name: str, value: str) -> None:
    try:
        loaded = load_settings({name: value, "HARDENING_STATE_DIR": "/nonexistent-hp-state"})
        if name in (ENV_STORE_URL, ENV_S3_ENDPOINT_URL):
            open_store(
                loaded.store_url or "s3://bucket/prefix",
                endpoint_url=loaded.s3_endpoint_url,
                region="us-east-1",
            )
    except ConfigError as exc:
        assert "\n" not in str(exc)


# --- bad manifests and backups from the future --------------------------------------------------


def corrupt_manifest(path: Path, keyring: Keyring, change: str) -> None:
    """Re-sign a manifest after breaking one field, so only the strict parser can catch it."""
    document = json.loads(path.read_bytes())
    if change == "wrong type":
        document["objects"][0]["ciphertext_bytes"] = "32"
    elif change == "missing field":
        del document["database"]
    elif change == "future":
        future = datetime.now(UTC) + timedelta(days=2)
        stamp = future.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        document["created_at"] = document["finished_at"] = stamp
    path.write_bytes(resign({k: v for k, v in document.items() if k != MAC_FIELD}, keyring))


@pytest.mark.parametrize("change", ["wrong type", "missing field", "future"])
def test_bad_manifest_is_refused_in_one_sentence_and_nothing_changes(
    change: str, db_url: str, tmp_path: Path
) -> None:
    keyring = Keyring(KEY)
    store_dir = tmp_path / "store"
    store = FileStore(store_dir)
    old = datetime.now(UTC) - timedelta(days=3)
    stale = [write_backup(store, keyring, old - timedelta(days=d)) for d in range(40, 45)]
    victim = write_backup(store, keyring, old)
    (path,) = store_dir.glob(f"*/*/*/{victim}/{MANIFEST_NAME}")
    corrupt_manifest(path, keyring, change)
    # Leave debris old enough for retention to remove, had it not refused.
    store.put("2020/01/01/20200101T000000Z-deadbeef/shared.hpb", [b"debris"])
    os.utime(store_dir / "2020/01/01/20200101T000000Z-deadbeef/shared.hpb", (0, 0))
    files = tree(store_dir)
    before = database_fingerprint(db_url)
    env = {
        ENV_DATABASE_URL: db_url,
        "BACKUP_ENCRYPTION_KEY": KEY_B64,
        ENV_STORE_URL: store_dir.as_uri(),
        "HARDENING_STATE_DIR": str(tmp_path / "state"),
        "HARDENING_REPORTS_DIR": str(tmp_path / "reports"),
    }
    args = [
        (["retention"], "deleted nothing"),
        (
            ["restore", "--tenant", str(uuid.uuid4()), "--into", db_url, "--backup-id", victim],
            "cannot be trusted",
        ),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda a: run_cli(a[0], env, tmp_path), args))
    for (command, fragment), result in zip(args, results, strict=True):
        # A manifest that fails verification is a red check (exit 1), not a usage mistake.
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        line = one_sentence(result.stderr)
        assert line.startswith("failed:") and fragment in line and victim in line, line
        if change == "future":
            assert "in the future" in line
    assert tree(store_dir) == files
    assert all(s in {p.split("/")[3] for p in files if p.count("/") >= 3} for s in stale)
    assert database_fingerprint(db_url) == before
    assert not (tmp_path / "state").exists()


# --- a wrong key --------------------------------------------------------------------------------


def test_a_wrong_key_is_a_configuration_error_and_a_foreign_manifest_is_red(
    db_url: str, tmp_path: Path
) -> None:
    """Every manifest under a key that is not configured: exit 2 naming the fix, nothing touched.

    Some manifests verifying and one not is tampering or corruption instead: red (exit 1).
    """
    store_dir = tmp_path / "store"
    store = FileStore(store_dir)
    old = datetime.now(UTC) - timedelta(days=3)
    written = [write_backup(store, Keyring(KEY), old - timedelta(days=d)) for d in range(40, 45)]
    files = tree(store_dir)
    other = os.urandom(32)
    base = {"BACKUP_STORE_URL": store_dir.as_uri(), "HARDENING_STATE_DIR": str(tmp_path / "st")}
    wrong = {**base, "BACKUP_ENCRYPTION_KEY": base64.b64encode(other).decode()}

    for args in (["retention"], ["restore", "--tenant", str(uuid.uuid4()), "--into", db_url]):
        result = run_hardening(*args, url=db_url, env=wrong)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        line = one_sentence(result.stderr)
        assert line.startswith("error: the backups in the store were all written with "), line
        assert Keyring(KEY).current_key_id in line and Keyring(other).current_key_id in line
        assert "5 failed verification" in line
        assert "set BACKUP_ENCRYPTION_KEY to the key the backups were written with" in line
        assert "BACKUP_ENCRYPTION_KEYS_PREVIOUS" in line
    assert tree(store_dir) == files

    # The fix the sentence names works: the old key as a previous key reads the store again.
    rotated = {**wrong, "BACKUP_ENCRYPTION_KEYS_PREVIOUS": KEY_B64}
    result = run_hardening("retention", "--dry-run", url=db_url, env=rotated)
    assert result.returncode == 0, result.stderr
    assert all(backup_id in result.stdout for backup_id in written)

    # One manifest under a key nobody configured, beside ones that verify: red, not a key mistake.
    stranger = write_backup(store, Keyring(other), old)
    right = {**base, "BACKUP_ENCRYPTION_KEY": KEY_B64}
    result = run_hardening("retention", url=db_url, env=right)
    assert result.returncode == 1, (result.stdout, result.stderr)
    line = one_sentence(result.stderr)
    assert line.startswith("failed: retention deleted nothing") and stranger in line, line
    assert {p.name for p in store_dir.glob("*/*/*/*")} == {*written, stranger}
