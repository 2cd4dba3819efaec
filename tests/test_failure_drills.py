"""Failure drills: break a backup, the store, the database or Slack part-way, then look around.

Every drill ends with the same questions: is anything half-done visible as a backup, does the
next run succeed, and does retention clear the debris? Processes are killed for real
(SIGKILL): deterministic kill points come from a small driver script whose store freezes at a
chosen put, random ones from the real ``hardening backup`` command killed while it works.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import dagster as dg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardening_pipeline.backup.catalog import BackupCatalog, list_backups
from hardening_pipeline.backup.crypto import BackupIntegrityError, Keyring, generate_data_key
from hardening_pipeline.backup.manifest import (
    MANIFEST_NAME,
    DatabaseIdentity,
    Manifest,
    ObjectEntry,
    SchemaVersion,
    TableEntry,
)
from hardening_pipeline.backup.nightly import LOCK_CONNECTION_NAME, run_backup
from hardening_pipeline.backup.object_format import ObjectEncoder
from hardening_pipeline.backup.prune import apply_retention
from hardening_pipeline.backup.store import (
    MIN_PART_SIZE,
    BackupStore,
    FileStore,
    S3Store,
    StoreError,
    open_store,
)
from hardening_pipeline.backup.tenant_keys import LEDGER_KEY
from hardening_pipeline.defs.backup import nightly_backup
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.defs.restore import restore_drill_report
from hardening_pipeline.defs.sensors import slack_on_run_failure
from hardening_pipeline.errors import CheckFailed, HardeningError
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.restore.reader import FetchedObject, TableReader
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import admin_connect, create_database, drop_database
from tests.support.s3_server import B2LikeS3Server, closed_port_url
from tests.support.servers import wait_for as poll
from tests.support.slack_receiver import HANG, RATE_LIMITED, SERVER_ERROR, SlackReceiver
from tests.support.stores import RecordingStore
from tests.test_backup_retention_apply import dailies, stored_ids, write_backup

REPO = Path(__file__).resolve().parents[1]
KEY = bytes(range(7, 39))
KEY_B64 = base64.b64encode(KEY).decode()
YESTERDAY = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
# Beyond the one-day grace period, so retention treats every manifest-less folder as debris.
LATER = timedelta(days=2)
WAIT = 30.0  # upper bound for any one process to reach a state or exit


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(KEY)


@pytest.fixture
def seeded(db_url: str) -> str:
    seed_demo_data(db_url, tenants=3, messages_per_unit=3, random_seed=5)
    return db_url


# --- helpers ------------------------------------------------------------------------------------


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without any project variable, plus ``overrides``.

    A developer's own HARDENING_*/BACKUP_*/SLACK_* settings must never leak into a drill.
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HARDENING_", "BACKUP_", "SLACK_"))
    }
    env.update(overrides)
    return env


def backup_env(db_url: str, store_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A complete real-database configuration; state and reports stay inside the test's folder."""
    return clean_env(
        HARDENING_DATABASE_URL=db_url,
        BACKUP_ENCRYPTION_KEY=KEY_B64,
        BACKUP_STORE_URL=store_url,
        HARDENING_STATE_DIR=str(tmp_path / "state"),
        HARDENING_REPORTS_DIR=str(tmp_path / "reports"),
        **extra,
    )


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """The real ``hardening`` command in its own process, so it can be killed like one."""
    return subprocess.Popen(
        [sys.executable, "-m", "hardening_pipeline.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` every few milliseconds, for at most ``WAIT`` seconds by default."""
    poll(condition, what, timeout)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL: no finally blocks, no atexit, no chance to tidy up, like an OOM kill."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=WAIT)
    assert proc.returncode in (-signal.SIGKILL, 0, 1), proc.returncode


def assert_nothing_half_done_is_valid(store: BackupStore, keyring: Keyring) -> BackupCatalog:
    """No folder without its manifest is listed or drilled; nothing is merely 'invalid' either."""
    catalog = list_backups(store, keyring)
    assert catalog.invalid == [], [b.problem for b in catalog.invalid]
    for backup in catalog.incomplete:
        assert not backup.has_manifest_object
    for backup in catalog.valid:
        names = {o.key[len(backup.folder) :] for o in backup.objects}
        assert {e.name for e in backup.manifest.objects} <= names
    if not catalog.valid:
        drill = run_restore_drill(store, keyring, run_tests=False)
        assert not drill.passed and drill.failed_stage == "find"
        assert "no backup with a valid manifest" in (drill.failure or "")
        assert drill.rows_restored == 0
    return catalog


def next_run_then_retention(db_url: str, store: BackupStore, keyring: Keyring) -> None:
    """The next backup succeeds beside the debris, and retention later removes the debris.

    A killed run that had already finished is a valid backup of the same day. The daily rule
    keeps the newer one, and restic's rule spends a slot left over on the oldest backup, so of
    the runs that finished only the first survives beside the new one; nothing else may go.
    """
    earlier = [b.backup_id for b in list_backups(store, keyring).valid]  # oldest first
    result = run_backup(db_url, store, keyring)
    catalog = list_backups(store, keyring)
    assert [b.backup_id for b in catalog.valid] == [*earlier, result.backup_id]
    outcome = apply_retention(store, keyring, now=datetime.now(UTC) + LATER)
    survivors = [*earlier[:1], result.backup_id]
    assert sorted(outcome.deleted) == sorted(earlier[1:])
    assert sorted(outcome.debris_removed) == sorted(b.backup_id for b in catalog.incomplete)
    after = list_backups(store, keyring)
    assert [b.backup_id for b in after.valid] == survivors
    assert after.incomplete == [] and after.invalid == []
    # The key ledger lives beside the backups, outside every backup folder.
    assert {o.key.split("/")[3] for o in store.list() if o.key != LEDGER_KEY} == set(survivors)
    if isinstance(store, FileStore):
        # Neither temporary files nor empty folders of the killed runs are left behind.
        assert temp_files(store.root) == []
        folders = [p for p in store.root.rglob("*") if p.is_dir()]
        assert {len(p.relative_to(store.root).parts) for p in folders} == {1, 2, 3, 4}
        backup_folders = [p.name for p in folders if len(p.relative_to(store.root).parts) == 4]
        assert sorted(backup_folders) == sorted(survivors)


# A driver whose store freezes at a chosen put; the test then SIGKILLs it there. It runs the
# real run_backup against a real store; only the timing of the kill is made deterministic.
FREEZING_DRIVER = r"""
import json, sys, time
from pathlib import Path
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import open_store
from tests.support.stores import RecordingStore

spec = json.loads(sys.argv[1])

def freeze():
    Path(spec["marker"]).write_text("frozen")
    time.sleep(120)

class FreezingStore(RecordingStore):
    def put(self, key, chunks):
        self.puts += 1
        if isinstance(spec["put"], str):
            target = key.endswith("/" + spec["put"])
        else:
            target = self.puts == spec["put"]
        if not target:
            return self.inner.put(key, chunks)
        if spec["after_chunks"] == 0:
            freeze()
        def gated():
            for n, chunk in enumerate(chunks, 1):
                yield chunk
                if n == spec["after_chunks"]:
                    freeze()
        return self.inner.put(key, gated())

store = open_store(spec["store"], endpoint_url=spec.get("endpoint"), region="us-east-1",
                   part_size=spec.get("part_size", 16 << 20))
run_backup(spec["db"], FreezingStore(store), Keyring(bytes.fromhex(spec["key"])))
"""


def kill_at(tmp_path: Path, spec: dict[str, Any]) -> None:
    """Run the freezing driver until it reports its kill point, then SIGKILL it."""
    driver = tmp_path / "freezing_driver.py"
    driver.write_text(FREEZING_DRIVER)
    marker = tmp_path / f"frozen-{random.random()}"
    full = {"key": KEY.hex(), "marker": str(marker), **spec}
    proc = subprocess.Popen(
        [sys.executable, str(driver), json.dumps(full)],
        cwd=REPO,
        env={**clean_env(), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, "the kill point")
        assert marker.exists(), (proc.returncode, *proc.communicate(timeout=WAIT))
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL


def temp_files(root: Path) -> list[Path]:
    """FileStore's in-progress files: invisible to list(), so checked on disk."""
    return list(root.rglob(".tmp-*"))


# --- killed backups -----------------------------------------------------------------------------


def test_backup_killed_at_each_point_leaves_no_valid_backup_and_retention_clears_it(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    url = root.as_uri()
    points = [
        # (put number or object name, chunks let through before freezing), what it simulates
        ({"put": 1, "after_chunks": 1}, "mid-write of the first tenant object"),
        ({"put": 3, "after_chunks": 0}, "between objects, two stored"),
        ({"put": MANIFEST_NAME, "after_chunks": 0}, "every object stored, manifest not yet"),
    ]
    for spec, what in points:
        kill_at(tmp_path, {"db": seeded, "store": url, **spec})
        catalog = assert_nothing_half_done_is_valid(store, keyring)
        assert catalog.valid == [], what
    # The first kill left only a temporary file: invisible to list, swept by retention.
    assert len(temp_files(root)) == 1
    next_run_then_retention(seeded, store, keyring)


def test_real_cli_backup_killed_at_random_moments(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    add_messages(seeded, per_unit=60)
    root = tmp_path / "store"
    store = FileStore(root)
    env = backup_env(seeded, root.as_uri(), tmp_path)
    rng = random.Random(20261126)
    for _ in range(3):
        before = set(root.rglob("*"))
        proc = start_cli(["backup"], env)
        try:
            # Wait until the run is really writing, then kill it a bounded random moment later.
            started = writing_started(proc, root, before)
            wait_for(started, "the backup to start writing")
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            kill(proc)
        assert_nothing_half_done_is_valid(store, keyring)
    next_run_then_retention(seeded, store, keyring)


def writing_started(
    proc: subprocess.Popen[str], root: Path, before: set[Path]
) -> Callable[[], bool]:
    """True once the run wrote anything new into the store (or ended)."""
    return lambda: proc.poll() is not None or bool(set(root.rglob("*")) - before)


def add_messages(db_url: str, per_unit: int) -> None:
    """Bulk messages (about 1 KiB each) so a backup takes long enough to be killed mid-way."""
    with admin_connect(db_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:bulk', false)")
        conn.execute(
            "INSERT INTO messages (id, tenant_id, development_id, unit_id, sender, body) "
            "SELECT gen_random_uuid(), u.tenant_id, u.development_id, u.id, 'resident', "
            "repeat(md5(random()::text), 32) FROM units u, generate_series(1, %s)",
            (per_unit,),
        )
        conn.commit()


def test_backup_killed_mid_multipart_on_s3_leaves_no_parts_after_retention(
    seeded: str, keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    add_incompressible_table(seeded, megabytes=8)
    url = f"s3://{s3_bucket}/backups"
    store = open_store(url, endpoint_url=s3_server.endpoint_url, region=s3_server.region)
    assert isinstance(store, S3Store)
    common = {"db": seeded, "store": url, "endpoint": s3_server.endpoint_url}
    # The shared object is the big one: frozen after 7 MiB went in, one 5 MiB part is uploaded
    # and the multipart upload is open.
    kill_at(
        tmp_path, {**common, "put": "shared.hpb", "after_chunks": 7, "part_size": MIN_PART_SIZE}
    )
    assert len(store.list_incomplete_uploads()) == 1
    kill_at(tmp_path, {**common, "put": MANIFEST_NAME, "after_chunks": 0})
    # The first kill left nothing visible at all (an open upload is not an object); the second
    # left a folder of objects without a manifest.
    catalog = assert_nothing_half_done_is_valid(store, keyring)
    assert catalog.valid == [] and len(catalog.incomplete) == 1
    assert len(store.list_incomplete_uploads()) == 1
    next_run_then_retention(seeded, store, keyring)
    assert store.list_incomplete_uploads() == []
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None
    assert s3_server.rejected == []


def add_incompressible_table(db_url: str, megabytes: int) -> None:
    """A non-tenant table of random hex: the shared object then spans several 5 MiB parts."""
    with admin_connect(db_url) as conn:
        conn.execute("CREATE TABLE public.attachments (id int PRIMARY KEY, body text NOT NULL)")
        with conn.cursor().copy("COPY attachments (id, body) FROM STDIN") as copy:
            for i in range(megabytes * 10):
                copy.write_row((i, os.urandom(100 * 1024).hex()))
        conn.commit()


# --- S3 failing mid-multipart -------------------------------------------------------------------


def sensor_tick(
    instance: dg.DagsterInstance, cursor: str | None, slack: SlackAlertsResource
) -> tuple[str | None, Any]:
    """One evaluation of the failure sensor, as the daemon would run it; returns the cursor."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"slack": slack})
    outcome = slack_on_run_failure(context)
    return context.cursor, outcome


def test_s3_503_mid_multipart_is_retried_aborted_and_alerted(
    seeded: str,
    keyring: Keyring,
    s3_server: B2LikeS3Server,
    s3_bucket: str,
    s3_faults: Any,
    slack_receiver: SlackReceiver,
    tmp_path: Path,
    pg_server_url: str,
    template_db: str,
) -> None:
    add_incompressible_table(seeded, megabytes=8)
    # Meanwhile, the command line against an endpoint that refuses connections (on a database
    # of its own: its backup lock would otherwise refuse the Dagster run below).
    other_db = create_database(pg_server_url, template=template_db)
    refused = start_cli(
        ["backup"],
        backup_env(
            other_db,
            f"s3://{s3_bucket}/backups",
            tmp_path,
            BACKUP_S3_ENDPOINT_URL=closed_port_url(),
        ),
    )
    s3_faults.fail_next("UploadPart", times=1000, status=503, after=1)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [nightly_backup],
            instance=instance,
            resources={
                "app_db": AppDatabaseResource(database_url=seeded),
                "backup_store": BackupStoreResource(
                    store_url=f"s3://{s3_bucket}/backups",
                    s3_endpoint_url=s3_server.endpoint_url,
                    s3_region=s3_server.region,
                    part_size=MIN_PART_SIZE,
                ),
                "encryption_keys": EncryptionKeysResource(key=KEY_B64),
            },
            raise_on_error=False,
        )
        assert not result.success
        (failure,) = result.get_step_failure_events()
        description = failure.step_failure_data.user_failure_data.description
        assert "upload part 2" in description and "ServiceUnavailable" in description
        # botocore's five tries of the part (its retry configuration is the only retry
        # layer), then the upload is aborted.
        tries = [
            parse_qs(r.query)["partNumber"]
            for r in s3_server.requests
            if r.operation == "UploadPart"
        ]
        assert tries.count(["2"]) == 5
        ops = s3_server.operations()
        assert ops.count("AbortMultipartUpload") == 1
        assert ops.index("AbortMultipartUpload") > len(ops) - ops[::-1].index("UploadPart") - 1
        assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None
        s3_faults.clear()
        store = s3_server.store(s3_bucket)
        assert not any(o.key.endswith(MANIFEST_NAME) for o in store.list())
        assert list_backups(store, keyring).valid == []

        slack = SlackAlertsResource(webhook_url=slack_receiver.url, max_retries=0, timeout=3)
        cursor, _ = sensor_tick(instance, None, slack)
        sensor_tick(instance, cursor, slack)
        assert len(slack_receiver.requests) == 1
        alert = json.dumps(slack_receiver.requests[0])
        assert "nightly_backup" in alert and "ServiceUnavailable" in alert
        assert result.run_id in alert

    try:
        _, stderr = refused.communicate(timeout=WAIT)
    finally:
        kill(refused)
        drop_database(pg_server_url, other_db)
    assert refused.returncode == 1, stderr
    assert "Traceback" not in stderr
    # botocore's retries are logged as they happen (tries 2 to 5 of the first request); the
    # outcome is one sentence, last.
    *retries, last = [line for line in stderr.splitlines() if line.strip()]
    assert all("retrying (try" in line for line in retries) and len(retries) == 4, stderr
    assert last.startswith("failed:") and "connection refused" in last
    assert "BACKUP_S3_ENDPOINT_URL" in last
    assert list_backups(store, keyring).valid == []


# --- the database connection dropped ------------------------------------------------------------


EXPORT_BACKEND = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
  AND application_name <> %s
"""


class TerminatingStore(RecordingStore):
    """Kills the exporting database backend once the first chunk of put number ``at`` is in."""

    def __init__(self, inner: BackupStore, admin_url: str, at: int) -> None:
        super().__init__(inner)
        self.admin_url = admin_url
        self.at = at
        self.terminated: list[int] = []

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        self.puts += 1
        self.calls.append(("put", key))
        if self.puts != self.at:
            return self.inner.put(key, chunks)
        return self.inner.put(key, self._cut(chunks))

    def _cut(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for n, chunk in enumerate(chunks):
            yield chunk
            if n == 0:
                with admin_connect(self.admin_url, autocommit=True) as conn:
                    for row in conn.execute(EXPORT_BACKEND, (LOCK_CONNECTION_NAME,)).fetchall():
                        conn.execute("SELECT pg_terminate_backend(%s)", (row["pid"],))
                        self.terminated.append(row["pid"])


def test_database_connection_dropped_mid_export_fails_clearly(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    store = TerminatingStore(FileStore(tmp_path / "store"), seeded, at=2)
    with pytest.raises(HardeningError) as failure:
        run_backup(seeded, store, keyring)
    # The row export's backend, and pg_dump's when it is still reading the schema.
    assert 1 <= len(store.terminated) <= 2
    message = str(failure.value)
    assert "database" in message and "no manifest was written" in message
    assert "\n" not in message and not isinstance(failure.value, psycopg.Error)
    assert not any(key.endswith(MANIFEST_NAME) for _, key in store.mutations())
    catalog = assert_nothing_half_done_is_valid(store.inner, keyring)
    assert catalog.valid == [] and len(catalog.incomplete) == 1
    assert temp_files(tmp_path / "store") == []
    # The lock was released: the next run works at once.
    run_backup(seeded, store.inner, keyring)


def test_cli_backup_whose_connection_is_terminated_says_so_in_one_sentence(
    seeded: str, tmp_path: Path, keyring: Keyring
) -> None:
    root = tmp_path / "store"
    with admin_connect(seeded) as blocker:
        # The backup holds its lock, opens its snapshot and then waits for this table: a
        # deterministic moment inside the export to cut its connection.
        blocker.execute("LOCK TABLE public.messages IN ACCESS EXCLUSIVE MODE")
        proc = start_cli(["backup"], backup_env(seeded, root.as_uri(), tmp_path))
        try:
            with admin_connect(seeded, autocommit=True) as watcher:

                def waiting() -> list[int]:
                    rows = watcher.execute(
                        EXPORT_BACKEND + " AND wait_event_type = 'Lock'", (LOCK_CONNECTION_NAME,)
                    ).fetchall()
                    return [r["pid"] for r in rows]

                wait_for(lambda: bool(waiting()) or proc.poll() is not None, "the export")
                for pid in waiting():
                    watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
            _, stderr = proc.communicate(timeout=WAIT)
        finally:
            kill(proc)
        blocker.rollback()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "database" in stderr and "no manifest was written" in stderr
    assert list_backups(FileStore(root), keyring).valid == []


# --- two backups at once ------------------------------------------------------------------------


def test_two_cli_backups_at_once_one_runs_the_other_refuses(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    env = backup_env(seeded, root.as_uri(), tmp_path)
    with admin_connect(seeded) as blocker:
        # Whichever run wins the lock waits here, so the two surely overlap.
        blocker.execute("LOCK TABLE public.messages IN ACCESS EXCLUSIVE MODE")
        procs = [start_cli(["backup"], env), start_cli(["backup"], env)]
        try:
            wait_for(lambda: any(p.poll() is not None for p in procs), "one backup to refuse")
            (loser,) = [p for p in procs if p.poll() is not None]
            (winner,) = [p for p in procs if p is not loser]
            _, refused = loser.communicate(timeout=WAIT)
            blocker.rollback()
            out, err = winner.communicate(timeout=WAIT)
        finally:
            for proc in procs:
                kill(proc)
    assert loser.returncode == 1, refused
    assert "another backup of this database is running" in refused
    assert "Traceback" not in refused and len(refused.strip().splitlines()) == 1
    assert winner.returncode == 0, err
    catalog = list_backups(FileStore(root), keyring)
    assert len(catalog.valid) == 1 and catalog.incomplete == [] and catalog.invalid == []
    manifests = [p for p in root.rglob(MANIFEST_NAME)]
    assert len(manifests) == 1
    assert {p.relative_to(root).parts[3] for p in root.rglob("*.hpb")} == {
        catalog.valid[0].backup_id
    }


# --- Slack failing ------------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", [SERVER_ERROR, RATE_LIMITED, HANG])
def test_slack_down_leaves_the_drill_result_standing(
    behaviour: str, slack_receiver: SlackReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARDENING_REPORTS_DIR", str(tmp_path / "reports"))
    slack_receiver.respond_with([behaviour] * 10)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [restore_drill_report],
            instance=instance,
            resources={
                "app_db": AppDatabaseResource(database_url="postgresql://unused@127.0.0.1:1/x"),
                "backup_store": BackupStoreResource(store_url=(tmp_path / "empty").as_uri()),
                "encryption_keys": EncryptionKeysResource(key=KEY_B64),
                "slack": SlackAlertsResource(
                    webhook_url=slack_receiver.url, max_retries=1, timeout=1
                ),
            },
            raise_on_error=False,
        )
        assert not result.success
        (failure,) = result.get_step_failure_events()
        data = failure.step_failure_data.user_failure_data
        # The run fails for the drill's reason, and the report was written; Slack is a footnote.
        assert "restore drill failed at stage find" in data.description
        assert "Slack" not in data.description
        assert data.metadata["slack_delivered"].value is False
        assert data.metadata["passed"].value is False
        assert list((tmp_path / "reports").glob("restore-drill-*.json"))
        warnings = [
            e.message for e in instance.all_logs(result.run_id) if "NOT delivered" in e.message
        ]
        assert warnings, "the undelivered alert is visible in the run's log"
    # Retried when worth it: a 500 or a short Retry-After is tried again, a timeout is not.
    expected = 1 if behaviour == HANG else 2
    assert len(slack_receiver.requests) == expected


def test_failure_alert_survives_rate_limits_and_timeouts_while_backups_go_on(
    seeded: str, keyring: Keyring, slack_receiver: SlackReceiver, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    resources = {
        "app_db": AppDatabaseResource(database_url=seeded),
        "backup_store": BackupStoreResource(store_url=store_dir.as_uri()),
        "encryption_keys": EncryptionKeysResource(key=KEY_B64),
    }
    slack = SlackAlertsResource(webhook_url=slack_receiver.url, max_retries=1, timeout=1)
    with dg.instance_for_test() as instance:
        failed = dg.materialize(
            [nightly_backup],
            instance=instance,
            resources={**resources, "encryption_keys": EncryptionKeysResource(key="not-a-key")},
            raise_on_error=False,
        )
        assert not failed.success
        # Slack rate-limits twice (retried once, then given up), then hangs.
        slack_receiver.respond_with([RATE_LIMITED, RATE_LIMITED, HANG])
        cursor, outcome = sensor_tick(instance, None, slack)
        assert "NOT delivered" in outcome.skip_reason.skip_message
        assert failed.run_id not in json.loads(cursor)["handled"]
        # Backups carry on regardless of Slack.
        ok = dg.materialize([nightly_backup], instance=instance, resources=resources)
        assert ok.success
        assert len(list_backups(FileStore(store_dir), keyring).valid) == 1
        cursor, outcome = sensor_tick(instance, cursor, slack)  # the hang
        assert failed.run_id not in json.loads(cursor)["handled"]
        cursor, _ = sensor_tick(instance, cursor, slack)  # Slack is back
        cursor, _ = sensor_tick(instance, cursor, slack)
    delivered = [json.dumps(r) for r in slack_receiver.requests[3:]]
    # The failure's alert arrives first, then "resolved": the job has succeeded since.
    assert len(delivered) == 2
    assert failed.run_id in delivered[0] and ok.run_id not in delivered[0]
    assert "Resolved" in delivered[1] and ok.run_id in delivered[1]


# --- retention on a store that fails part-way ---------------------------------------------------


def small_pages(store: S3Store) -> None:
    """Real pagination (two keys a page) without creating thousands of objects."""

    def shrink(params: dict[str, Any], **_: Any) -> None:
        params.setdefault("MaxKeys", 2)

    store.client.meta.events.register("provide-client-params.s3.ListObjectsV2", shrink)


def test_retention_listing_failing_on_page_two_deletes_nothing(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: Any
) -> None:
    store = s3_server.store(s3_bucket, max_attempts=1)
    assert isinstance(store, S3Store)
    small_pages(store)
    ids = dailies(store, keyring, 40, end=datetime.now(UTC) - timedelta(days=3))
    before = store.list()
    s3_faults.fail_next("ListObjectsV2", times=5, status=500, after=1)
    with pytest.raises(StoreError, match="could not list"):
        apply_retention(store, keyring)
    assert s3_faults.injected == {"ListObjectsV2": 1}
    assert not any(r.method == "DELETE" for r in s3_server.requests)
    s3_faults.clear()
    assert store.list() == before and stored_ids(store) == set(ids)


class OmittingStore(RecordingStore):
    """Lists everything except keys containing ``hidden``: a silently partial listing."""

    def __init__(self, inner: BackupStore, hidden: str) -> None:
        super().__init__(inner)
        self.hidden = hidden

    def list(self, prefix: str = "") -> list[Any]:
        return [o for o in super().list(prefix) if self.hidden not in o.key]


def test_retention_with_a_listing_that_misses_objects_deletes_nothing(
    keyring: Keyring, tmp_path: Path
) -> None:
    inner = FileStore(tmp_path / "store")
    ids = dailies(inner, keyring, 40, end=datetime.now(UTC) - timedelta(days=1))
    store = OmittingStore(inner, hidden=f"{ids[0]}/shared.hpb")
    with pytest.raises(CheckFailed, match=f"deleted nothing.*{ids[0]}.*missing"):
        apply_retention(store, keyring)
    assert store.mutations() == []
    assert stored_ids(inner) == set(ids)


def test_retention_interrupted_while_deleting_leaves_only_debris(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: Any
) -> None:
    store = s3_server.store(s3_bucket, max_attempts=1)
    ids = dailies(store, keyring, 33, end=datetime.now(UTC) - timedelta(hours=1))
    victims = [r.backup_id for r in apply_retention(store, keyring, dry_run=True).plan.delete]
    assert victims
    # Deleting the first victim: its manifest goes, then listing its folder's versions fails
    # (after the catalog has read the history of each of the manifests).
    s3_faults.fail_next("ListObjectVersions", times=5, status=500, after=len(ids) + 1)
    with pytest.raises(StoreError):
        apply_retention(store, keyring)
    s3_faults.clear()
    catalog = assert_nothing_half_done_is_valid(store, keyring)
    assert [b.backup_id for b in catalog.incomplete] == victims[:1]
    assert [b.backup_id for b in catalog.valid] == [i for i in ids if i != victims[0]]
    later = apply_retention(store, keyring, now=datetime.now(UTC) + LATER)
    assert later.debris_removed == victims[:1]
    assert stored_ids(store) == set(ids) - set(victims)


# --- fuzzing the readers ------------------------------------------------------------------------

FUZZ_BACKUP = "20260101T000000Z-0badc0de"
FUZZ_NAME = "tenant-fuzz.hpb"
FUZZ_DATA_KEY = bytes(range(100, 132))
FUZZ_TABLES = [(b"1\ta\n2\tb\n", "tenants"), (b"", "units"), (b"x\t" * 400 + b"\n", "messages")]
FUZZ_PLAIN = b"".join(text for text, _ in FUZZ_TABLES)


def _fuzz_entry(tables: list[tuple[bytes, str]], blob: bytes, plain: bytes) -> ObjectEntry:
    """The manifest entry a writer would record for ``blob`` cut into ``tables``."""
    return ObjectEntry(
        name=FUZZ_NAME,
        tenant_id="fuzz",
        tables=tuple(
            TableEntry(name, ("c",), text.count(b"\n"), len(text), hashlib.sha256(text).hexdigest())
            for text, name in tables
        ),
        plaintext_bytes=len(plain),
        plaintext_sha256=hashlib.sha256(plain).hexdigest(),
        compressed_bytes=0,
        ciphertext_bytes=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
    )


FUZZ_BLOB = b"".join(
    ObjectEncoder(
        [FUZZ_PLAIN], FUZZ_DATA_KEY, backup_id=FUZZ_BACKUP, object_name=FUZZ_NAME, segment_size=64
    )
)
FUZZ_MANIFEST = Manifest(
    backup_id=FUZZ_BACKUP,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    finished_at=datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
    database=DatabaseIdentity("1", "app", "16"),
    schema=SchemaVersion("001_core_schema.sql", "ab" * 32, ("001_core_schema.sql",)),
    key_id="00" * 8,
    wrapped_data_key=b"\0" * 60,
    objects=(_fuzz_entry(FUZZ_TABLES, FUZZ_BLOB, FUZZ_PLAIN),),
)


def read_tables(path: Path, entry: ObjectEntry) -> dict[str, bytes]:
    """Consume a TableReader the way COPY FROM does: each table fully, in order."""
    out: dict[str, bytes] = {}
    for table, chunks in TableReader(FetchedObject(entry, path), FUZZ_MANIFEST, FUZZ_DATA_KEY):
        out[table.name] = b"".join(chunks)
    return out


def test_table_reader_reads_the_untouched_object(tmp_path: Path) -> None:
    path = tmp_path / FUZZ_NAME
    path.write_bytes(FUZZ_BLOB)
    assert read_tables(path, FUZZ_MANIFEST.objects[0]) == {n: t for t, n in FUZZ_TABLES}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blob_edits=st.lists(
        st.tuples(st.integers(0, len(FUZZ_BLOB)), st.integers(0, 255), st.booleans()),
        max_size=3,
    ),
    cut=st.one_of(st.none(), st.integers(0, len(FUZZ_BLOB))),
    split=st.lists(st.integers(0, len(FUZZ_PLAIN)), min_size=2, max_size=2),
    same_entry=st.booleans(),
)
def test_fuzz_table_reader_only_raises_integrity_errors_and_never_passes_junk(
    tmp_path_factory: pytest.TempPathFactory,
    blob_edits: list[tuple[int, int, bool]],
    cut: int | None,
    split: list[int],
    same_entry: bool,
) -> None:
    blob = bytearray(FUZZ_BLOB)
    for at, value, insert in blob_edits:
        if insert:
            blob[at:at] = bytes([value])
        elif at < len(blob):
            blob[at] ^= value or 1
    if cut is not None:
        del blob[cut:]
    blob = bytes(blob)
    a, b = sorted(split)
    # Either the recorded tables, or the same plaintext cut at other places (digests redone).
    tables = (
        FUZZ_TABLES
        if same_entry
        else [
            (FUZZ_PLAIN[:a], "tenants"),
            (FUZZ_PLAIN[a:b], "units"),
            (FUZZ_PLAIN[b:], "messages"),
        ]
    )
    entry = _fuzz_entry(tables, blob, FUZZ_PLAIN)
    path = tmp_path_factory.mktemp("reader") / FUZZ_NAME
    path.write_bytes(blob)
    try:
        got = read_tables(path, entry)
    except BackupIntegrityError:
        assert blob != FUZZ_BLOB
        return
    # Only the authentic object gets through, and then exactly as recorded.
    assert blob == FUZZ_BLOB
    assert got == {name: text for text, name in tables}


junk_key = st.one_of(
    st.builds(
        "{}/{:02d}/{:02d}/{}/{}".format,
        st.integers(1999, 2100),
        st.integers(0, 13),
        st.integers(0, 32),
        st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True),
        st.sampled_from([MANIFEST_NAME, "shared.hpb", "tenant-x.hpb", "junk"]),
    ),
    st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9._-]{1,8}){0,5}", fullmatch=True),
)
junk_body = st.one_of(
    st.binary(max_size=200),
    st.just(b"{}"),
    st.just(b'{"format_version": 1}'),
    st.just(b'{"format_version": 1, "hmac_sha256": "' + b"0" * 64 + b'", "key_id": "'),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.lists(st.tuples(junk_key, junk_body), min_size=1, max_size=6))
def test_fuzz_list_backups_never_trusts_junk(
    tmp_path_factory: pytest.TempPathFactory, junk: list[tuple[str, bytes]]
) -> None:
    keyring = Keyring(KEY)
    root = tmp_path_factory.mktemp("junk")
    store = FileStore(root)
    real = write_backup(store, keyring, datetime.now(UTC) - timedelta(days=1))
    real_keys = {o.key for o in store.list()}
    for key, body in junk:
        if any(key == k or key.startswith(k + "/") or k.startswith(key + "/") for k in real_keys):
            continue
        path = root / key
        if path.exists() or any(p.is_file() for p in path.parents):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            path.write_bytes(body)
    # Junk is sorted into incomplete, invalid or foreign; it never makes listing itself fail.
    catalog = list_backups(store, keyring)
    assert [b.backup_id for b in catalog.valid] == [real]
    junk_states = [b for b in (*catalog.incomplete, *catalog.invalid) if b.backup_id == real]
    assert junk_states == []


def test_list_backups_with_junk_manifests_next_to_a_real_one(
    keyring: Keyring, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    real = write_backup(store, keyring, datetime.now(UTC) - timedelta(days=1))
    other = Keyring(generate_data_key())
    foreign = write_backup(store, other, datetime.now(UTC) - timedelta(days=2))
    store.put("2026/01/01/not-a-backup/manifest.json", [b"\x00\xff" * 50])
    store.put("2026/01/02/empty/manifest.json", [b""])
    store.put("README.txt", [b"hello"])
    catalog = list_backups(store, keyring)
    assert [b.backup_id for b in catalog.valid] == [real]
    assert {b.backup_id for b in catalog.invalid} == {"not-a-backup", "empty", foreign}
    assert catalog.foreign_keys == ["README.txt"]


def test_junk_keys_in_a_bucket_never_block_listing_drills_or_retention(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    """A bucket can hold keys no filesystem can ('..' segments, double slashes): stray objects
    there must be ignored or reported, not make every listing fail."""
    store = s3_server.store(s3_bucket)
    real = write_backup(store, keyring, datetime.now(UTC) - timedelta(days=1))
    day = datetime.now(UTC).strftime("%Y/%m/%d")
    junk = [
        f"{day}/../{MANIFEST_NAME}",
        f"{day}/./shared.hpb",
        f"{day}/.hidden/{MANIFEST_NAME}",
        f"{day}/a..b/{MANIFEST_NAME}",
        f"{day}/double//{MANIFEST_NAME}",
        f"{day}/odd/{MANIFEST_NAME}/child",
    ]
    for key in junk:
        s3_server.client().put_object(Bucket=s3_bucket, Key=f"backups/{key}", Body=b"junk")
    catalog = assert_nothing_half_done_is_valid(store, keyring)
    assert [b.backup_id for b in catalog.valid] == [real]
    assert {b.backup_id for b in catalog.incomplete} == {"double", "odd"}
    assert sorted(catalog.foreign_keys) == sorted(junk[:4])
    outcome = apply_retention(store, keyring, now=datetime.now(UTC) + LATER)
    assert outcome.deleted == [] and sorted(outcome.debris_removed) == ["double", "odd"]
    assert stored_ids(store) == {real, "..", ".", ".hidden", "a..b"}
