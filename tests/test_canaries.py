"""Canaries: each fires on data made to trip it and stays quiet on clean data; alerts are
deduplicated, resolved, and survive a Slack outage.

The schema forbids the bad data, so each test plants it as a superuser in its own cloned
database: with ``session_replication_role = replica`` (which skips foreign-key triggers while
the constraint still reads as validated) or by dropping the constraint.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import replace

import pytest

from hardening_pipeline.alerts import state as state_module
from hardening_pipeline.alerts.slack import NOT_DELIVERED_MARKER, SlackNotifier
from hardening_pipeline.canaries import (
    CANARIES,
    CanaryThresholds,
    alert_canaries,
    load_canary_sql,
    run_canaries,
)
from hardening_pipeline.canaries.runner import CANARIES_DIR
from hardening_pipeline.errors import ConfigError
from tests.support.db import admin_connect, insert_tenant
from tests.support.slack_receiver import SERVER_ERROR, SLOW

FAST = {"timeout": 5, "max_retries": 0}


def by_name(results):
    return {r.name: r for r in results}


def red(results):
    return sorted(r.name for r in results if not r.passed)


@pytest.fixture
def two_tenants(admin):
    a = insert_tenant(admin, f"a-{uuid.uuid4().hex[:8]}")
    b = insert_tenant(admin, f"b-{uuid.uuid4().hex[:8]}")
    return a, b


def add_messages(admin, t, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    with admin.transaction():
        admin.execute("SELECT set_config('app.actor', 'test:canary', true)")
        for i in ids:
            admin.execute(
                "INSERT INTO messages (id, tenant_id, development_id, unit_id, sender, body) "
                "VALUES (%s, %s, %s, %s, 'resident', 'hello')",
                (i, t.tenant, t.development, t.unit),
            )
    return ids


def delete_messages(admin, ids) -> None:
    with admin.transaction():
        admin.execute("SELECT set_config('app.actor', 'test:cleanup', true)")
        admin.execute("DELETE FROM messages WHERE id = ANY(%s)", (list(ids),))


def replica(admin, statement: str, params=()) -> None:
    """One write with foreign-key triggers skipped (audit triggers are ALWAYS: they still fire)."""
    with admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute("SELECT set_config('app.actor', 'test:replica', true)")
        admin.execute(statement, params)


# --- files and thresholds -----------------------------------------------------------------------


def test_every_sql_file_has_a_spec_and_every_spec_a_file():
    assert set(load_canary_sql()) == set(CANARIES)
    assert {p.stem for p in CANARIES_DIR.glob("*.sql")} == set(CANARIES)


def test_an_unwired_canary_file_is_refused_not_skipped(tmp_path):
    folder = tmp_path / "canaries"
    shutil.copytree(CANARIES_DIR, folder)
    (folder / "new_idea.sql").write_text("SELECT 1")
    with pytest.raises(ConfigError, match="new_idea"):
        load_canary_sql(folder)


def test_sql_defaults_match_the_threshold_dataclass():
    """A DBA running a file by hand must see what the scheduled run sees."""
    defaults = CanaryThresholds()
    pattern = re.compile(r"current_setting\('canary\.(\w+)', true\), ''\), '([0-9.]+)'\)")
    seen = {}
    for text in load_canary_sql().values():
        for name, value in pattern.findall(text):
            seen[name] = value
            assert float(value) == float(getattr(defaults, name)), name
    assert {k.removeprefix("canary.") for k in defaults.as_settings()} == set(seen)


@pytest.mark.parametrize(
    "bad", [{"delete_min_count": 0}, {"sample_size": -1}, {"delete_window_minutes": "60"}]
)
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ConfigError):
        CanaryThresholds(**bad)


# --- clean data ---------------------------------------------------------------------------------


def test_all_quiet_on_clean_data(db_url, admin, two_tenants):
    a, _ = two_tenants
    delete_messages(admin, add_messages(admin, a, 10))  # a few deletes: under the floor
    with admin.transaction():
        admin.execute("SELECT set_config('app.actor', 'test:onboarding', true)")
        for _ in range(3):  # exactly at the threshold is not above it
            admin.execute(
                "INSERT INTO onboarding_attempts (tenant_id, email, status, error) "
                "VALUES (%s, 'x@example.com', 'failed', 'smtp timeout')",
                (a.tenant,),
            )
    results = run_canaries(db_url)
    assert [r.name for r in results] == list(CANARIES)
    assert red(results) == []
    assert all(r.count == 0 and r.findings == () and r.error is None for r in results)


# --- integrity canaries -------------------------------------------------------------------------


def test_orphans_planted_in_replica_mode_are_found(db_url, admin, two_tenants):
    a, b = two_tenants
    # The unit disappears under its messages; the constraint still says "validated".
    replica(admin, "DELETE FROM units WHERE id = %s", (a.unit,))
    validated = admin.execute(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'messages_unit_id_fkey'"
    ).fetchone()["convalidated"]
    assert validated is True
    result = by_name(run_canaries(db_url))["orphaned_messages"]
    assert not result.passed and result.severity == "error"
    assert result.count == 1
    assert result.tenants == [str(a.tenant)]
    assert result.samples == [str(a.message)]
    assert "unit" in result.findings[0].detail
    # b's data is fine and not reported
    assert str(b.tenant) not in result.tenants


def test_orphans_with_a_missing_tenant_and_development_after_dropping_keys(
    db_url, admin, two_tenants
):
    a, _ = two_tenants
    ghost_tenant, ghost_dev = uuid.uuid4(), uuid.uuid4()
    admin.execute(
        "ALTER TABLE messages DROP CONSTRAINT messages_tenant_id_fkey, "
        "DROP CONSTRAINT messages_development_id_fkey, "
        "DROP CONSTRAINT messages_unit_development_tenant_fkey"
    )
    ids = sorted(uuid.uuid4() for _ in range(7))
    with admin.transaction():
        admin.execute("SELECT set_config('app.actor', 'test:plant', true)")
        for i in ids:
            admin.execute(
                "INSERT INTO messages (id, tenant_id, development_id, unit_id, sender, body) "
                "VALUES (%s, %s, %s, %s, 'x', 'y')",
                (i, ghost_tenant, ghost_dev, a.unit),
            )
    admin.commit()
    result = by_name(run_canaries(db_url, CanaryThresholds(sample_size=3)))["orphaned_messages"]
    assert result.count == 7
    assert result.tenants == [str(ghost_tenant)]
    assert list(result.findings[0].sample_ids) == [str(i) for i in ids[:3]]
    assert "development" in result.findings[0].detail and "tenant" in result.findings[0].detail


def test_a_null_unit_id_is_an_orphan(db_url, admin, two_tenants):
    a, _ = two_tenants
    admin.execute("ALTER TABLE messages ALTER COLUMN unit_id DROP NOT NULL")
    admin.execute(
        "UPDATE messages SET unit_id = NULL WHERE id = %s", (a.message,)
    )  # the FK allows NULL: only the NOT NULL forbade it
    admin.commit()
    result = by_name(run_canaries(db_url))["orphaned_messages"]
    assert result.count == 1 and result.samples == [str(a.message)]


def test_misaligned_message_and_unit_are_found(db_url, admin, two_tenants):
    a, b = two_tenants
    # A message filed under tenant b but pointing at tenant a's unit and development.
    stray = uuid.uuid4()
    replica(
        admin,
        "INSERT INTO messages (id, tenant_id, development_id, unit_id, sender, body) "
        "VALUES (%s, %s, %s, %s, 'x', 'y')",
        (stray, b.tenant, a.development, a.unit),
    )
    # A unit of tenant b sitting in tenant a's development.
    stray_unit = uuid.uuid4()
    replica(
        admin,
        "INSERT INTO units (id, tenant_id, development_id, label) VALUES (%s, %s, %s, '9Z')",
        (stray_unit, b.tenant, a.development),
    )
    results = by_name(run_canaries(db_url))
    result = results["tenant_misalignment"]
    assert not result.passed and result.severity == "error"
    subjects = {(f.subject, f.tenant_id): f for f in result.findings}
    assert subjects[("messages", str(b.tenant))].sample_ids == (str(stray),)
    assert "tenant" in subjects[("messages", str(b.tenant))].detail
    assert subjects[("units", str(b.tenant))].sample_ids == (str(stray_unit),)
    assert result.count == 2
    assert results["orphaned_messages"].passed  # every parent exists: misaligned, not orphaned


def test_a_message_in_another_development_of_the_same_tenant_is_misaligned(
    db_url, admin, two_tenants
):
    a, _ = two_tenants
    other_dev = uuid.uuid4()
    with admin.transaction():
        admin.execute("SELECT set_config('app.actor', 'test:plant', true)")
        admin.execute(
            "INSERT INTO developments (id, tenant_id, name) VALUES (%s, %s, 'Other')",
            (other_dev, a.tenant),
        )
    replica(admin, "UPDATE messages SET development_id = %s WHERE id = %s", (other_dev, a.message))
    result = by_name(run_canaries(db_url))["tenant_misalignment"]
    assert result.samples == [str(a.message)]
    assert "development" in result.findings[0].detail


# --- volume canaries ----------------------------------------------------------------------------


def test_a_burst_of_deletes_fires_and_the_floor_keeps_small_ones_quiet(db_url, admin, two_tenants):
    a, b = two_tenants
    delete_messages(admin, add_messages(admin, a, 12))
    delete_messages(admin, add_messages(admin, b, 4))
    thresholds = CanaryThresholds(delete_min_count=5)
    result = by_name(run_canaries(db_url, thresholds))["abnormal_delete_volume"]
    assert not result.passed and result.severity == "warn"
    assert result.tenants == [str(a.tenant)]  # b's 4 deletes stay under the floor
    finding = result.findings[0]
    assert (finding.subject, finding.count) == ("messages", 12)
    assert len(finding.sample_ids) == 5
    assert "12 deletes on messages" in finding.detail
    # the same data with the default floor (50) is not an alarm
    assert by_name(run_canaries(db_url))["abnormal_delete_volume"].passed


def test_a_truncated_tenant_table_fires_whatever_the_volume(
    db_url, admin, two_tenants, slack_receiver
):
    """TRUNCATE leaves one audit event for every tenant's rows, so no per-tenant count or floor
    applies: any TRUNCATE in the look-back is a blocking finding. Only a superuser or a table
    owner can still do it (004), and a delete-volume canary would never see it."""
    assert by_name(run_canaries(db_url))["tenant_table_truncated"].passed
    with admin.transaction():
        admin.execute("SELECT set_config('app.actor', 'test:truncate', true)")
        admin.execute("TRUNCATE onboarding_attempts")
        event = admin.execute(
            "SELECT id FROM audit_events WHERE operation = 'TRUNCATE' ORDER BY id DESC LIMIT 1"
        ).fetchone()["id"]
    results = by_name(run_canaries(db_url))
    assert results["abnormal_delete_volume"].passed  # it counts deletes, not this
    result = results["tenant_table_truncated"]
    assert not result.passed and result.severity == "error"
    [finding] = result.findings
    assert (finding.tenant_id, finding.subject, finding.count) == (None, "onboarding_attempts", 1)
    assert list(finding.sample_ids) == [str(event)]
    assert "1 TRUNCATE(s) of onboarding_attempts" in finding.detail
    assert "by test:truncate as postgres" in finding.detail
    narrower = CanaryThresholds(truncate_lookback_hours=1)
    assert not by_name(run_canaries(db_url, narrower))["tenant_table_truncated"].passed

    notifier = SlackNotifier(slack_receiver.url, **FAST)
    [outcome] = alert_canaries(db_url, [result], notifier)
    assert outcome.action == "sent"
    summary = slack_receiver.requests[0]["blocks"][1]["text"]["text"]
    assert "1 TRUNCATE statements flagged" in summary
    assert "Tenants affected: every tenant (whole tables)" in summary
    quiet = replace(result, passed=True, findings=())
    [cleared] = alert_canaries(db_url, [quiet], notifier)
    assert cleared.action == "resolved"
    resolved = slack_receiver.requests[1]["blocks"][1]["text"]["text"]
    assert "does not bring its rows back" in resolved


def test_deletes_within_the_usual_rate_do_not_fire(db_url, admin, two_tenants):
    a, _ = two_tenants
    # A week of history at ~10 deletes an hour (inserted as superuser; INSERT is allowed).
    admin.execute(
        "INSERT INTO audit_events (actor, tenant_id, table_name, operation, record_id, before, "
        "created_at, db_role) "
        "SELECT 'test:history', %s, 'messages', 'DELETE', g::text, '{}'::jsonb, "
        "now() - interval '2 hours' - (g * interval '1 hour') / 10, 'postgres' "
        "FROM generate_series(1, 1600) g",
        (a.tenant,),
    )
    admin.commit()
    delete_messages(admin, add_messages(admin, a, 30))
    thresholds = CanaryThresholds(delete_min_count=5, delete_baseline_factor=10)
    assert by_name(run_canaries(db_url, thresholds))["abnormal_delete_volume"].passed
    # 2x the usual rate is a burst for a twice-as-sensitive threshold
    thresholds = CanaryThresholds(delete_min_count=5, delete_baseline_factor=2)
    assert not by_name(run_canaries(db_url, thresholds))["abnormal_delete_volume"].passed


def test_repeated_onboarding_failures_fire_with_the_most_common_error(db_url, admin, two_tenants):
    a, b = two_tenants
    errors = ["smtp timeout", "smtp timeout", "smtp timeout", "billing address invalid"]
    with admin.transaction():
        admin.execute("SELECT set_config('app.actor', 'test:onboarding', true)")
        for error in errors:
            admin.execute(
                "INSERT INTO onboarding_attempts (tenant_id, email, status, error) "
                "VALUES (%s, 'x@example.com', 'failed', %s)",
                (a.tenant, error),
            )
        # old failures are outside the window
        for _ in range(10):
            admin.execute(
                "INSERT INTO onboarding_attempts (tenant_id, email, status, error, created_at) "
                "VALUES (%s, 'x@example.com', 'failed', 'old', now() - interval '3 hours')",
                (b.tenant,),
            )
    result = by_name(run_canaries(db_url))["failed_onboarding_attempts"]
    assert not result.passed and result.severity == "warn"
    assert result.tenants == [str(a.tenant)] and result.count == 4
    assert "most common error (3 of them): smtp timeout" in result.findings[0].detail
    wider = CanaryThresholds(onboarding_window_minutes=240)
    assert by_name(run_canaries(db_url, wider))["failed_onboarding_attempts"].count == 14


# --- how canaries run ---------------------------------------------------------------------------


def test_canaries_cannot_write(db_url, admin, two_tenants, tmp_path):
    folder = tmp_path / "canaries"
    shutil.copytree(CANARIES_DIR, folder)
    (folder / "failed_onboarding_attempts.sql").write_text(
        "DELETE FROM public.messages RETURNING tenant_id, 'x' AS subject, 1 AS issue_count, "
        "ARRAY[id::text] AS sample_ids, 'x' AS detail"
    )
    result = by_name(run_canaries(db_url, directory=folder))["failed_onboarding_attempts"]
    assert not result.passed and result.error is not None and "25006" in result.error
    assert admin.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 2
    # the other canaries still ran
    assert by_name(run_canaries(db_url, directory=folder))["orphaned_messages"].passed


def test_a_slow_canary_times_out_and_is_reported_red(db_url, tmp_path):
    folder = tmp_path / "canaries"
    shutil.copytree(CANARIES_DIR, folder)
    (folder / "orphaned_messages.sql").write_text(
        "SELECT NULL::uuid AS tenant_id, 'x' AS subject, 0 AS issue_count, "
        "NULL::text[] AS sample_ids, 'x' AS detail FROM pg_sleep(5)"
    )
    result = run_canaries(
        db_url, CanaryThresholds(statement_timeout_ms=200), ["orphaned_messages"], directory=folder
    )[0]
    assert not result.passed and "57014" in (result.error or "")
    assert result.seconds < 3


def test_unknown_canary_name_is_a_config_error(db_url):
    with pytest.raises(ConfigError, match="unknown canary"):
        run_canaries(db_url, names=["nope"])


# --- Slack --------------------------------------------------------------------------------------


def plant_orphan(admin, t) -> None:
    replica(admin, "DELETE FROM units WHERE id = %s", (t.unit,))


def test_slack_payload_field_by_field(db_url, admin, two_tenants, slack_receiver):
    a, _ = two_tenants
    plant_orphan(admin, a)
    results = run_canaries(db_url)
    outcomes = alert_canaries(
        db_url, results, SlackNotifier(slack_receiver.url, **FAST), runbook_base_url=None
    )
    assert {o.key: o.action for o in outcomes} == {
        "canary:orphaned_messages": "sent",
        "canary:tenant_misalignment": "nothing",
        "canary:abnormal_delete_volume": "nothing",
        "canary:tenant_table_truncated": "nothing",
        "canary:failed_onboarding_attempts": "nothing",
        "canary:unattributed_service_role_writes": "nothing",
    }
    assert len(slack_receiver.requests) == 1
    payload = slack_receiver.requests[0]
    blocks = payload["blocks"]
    assert blocks[0]["type"] == "header"
    assert blocks[0]["text"]["text"] == (
        ":red_circle: Canary orphaned_messages: orphaned messages detected"
    )
    assert blocks[1]["text"]["text"].startswith("*FAILURE*: 1 messages flagged")
    assert (
        "do not exist" in blocks[1]["text"]["text"]
        or "does not exist" in (blocks[1]["text"]["text"])
    )
    fields = {
        f["text"].split("\n", 1)[0].strip("*"): f["text"].split("\n", 1)[1]
        for f in blocks[2]["fields"]
    }
    assert fields == {
        "Canary": "orphaned_messages",
        "Severity": "ERROR",
        "Count": "1",
        "Tenants": str(a.tenant),
        "Sample ids": str(a.message),
        "Runbook": "docs/runbook.md#canary-orphaned-messages",
    }
    details = blocks[3]["text"]["text"]
    assert f"tenant {a.tenant} / messages: 1" in details and str(a.message) in details
    query = blocks[4]["text"]["text"]
    assert query.startswith("*Investigate with:*\n```")
    assert "messages_unit_development_tenant_idx" not in query  # comments are stripped
    assert "FROM public.messages m" in query and "NOT EXISTS" in query
    assert payload["text"].startswith("FAILURE: Canary orphaned_messages")


def test_runbook_link_when_a_base_url_is_given(db_url, admin, two_tenants, slack_receiver):
    plant_orphan(admin, two_tenants[0])
    alert_canaries(
        db_url,
        run_canaries(db_url),
        SlackNotifier(slack_receiver.url, **FAST),
        runbook_base_url="https://example.org/docs/runbook.md",
    )
    links = slack_receiver.requests[0]["blocks"][-1]["text"]["text"]
    assert links == (
        "<https://example.org/docs/runbook.md#canary-orphaned-messages|Runbook: what to do>"
    )


def test_no_repeat_for_an_unchanged_finding_realert_when_it_grows_resolved_when_clear(
    db_url, admin, two_tenants, slack_receiver
):
    a, b = two_tenants
    notifier = SlackNotifier(slack_receiver.url, **FAST)
    plant_orphan(admin, a)

    def run():
        results = run_canaries(db_url, names=["orphaned_messages"])
        return alert_canaries(db_url, results, notifier)[0].action

    assert run() == "sent"
    assert run() == "suppressed"
    assert run() == "suppressed"
    assert len(slack_receiver.requests) == 1
    # more orphans in the same tenant: bigger, so alert again
    add_more = uuid.uuid4()
    replica(
        admin,
        "INSERT INTO messages (id, tenant_id, development_id, unit_id, sender, body) "
        "VALUES (%s, %s, %s, %s, 'x', 'y')",
        (add_more, a.tenant, a.development, a.unit),
    )
    assert run() == "sent"
    # another tenant affected: a different finding, alert again
    plant_orphan(admin, b)
    assert run() == "sent"
    assert run() == "suppressed"
    assert len(slack_receiver.requests) == 3
    # clean up: resolved once, then nothing
    replica(admin, "DELETE FROM messages WHERE unit_id = ANY(%s)", ([a.unit, b.unit],))
    assert run() == "resolved"
    assert run() == "nothing"
    assert len(slack_receiver.requests) == 4
    resolved = slack_receiver.requests[-1]
    assert resolved["blocks"][0]["text"]["text"] == (
        ":large_green_circle: Canary orphaned_messages: resolved"
    )
    assert admin.execute("SELECT count(*) AS n FROM hardening.alert_state").fetchone()["n"] == 0


def test_two_concurrent_runs_send_a_new_alert_once(db_url, admin, two_tenants, slack_receiver):
    """Two schedulers (or a schedule and someone at the CLI) alerting at the same moment: the
    second must see what the first recorded, not the empty state they both started from."""
    plant_orphan(admin, two_tenants[0])
    results = run_canaries(db_url, names=["orphaned_messages"])
    slack_receiver.respond_with([SLOW, SLOW])  # a window in which both would have sent
    start = threading.Barrier(2)
    actions: list[str] = []

    def run() -> None:
        start.wait()
        notifier = SlackNotifier(slack_receiver.url, **FAST)
        actions.append(alert_canaries(db_url, results, notifier)[0].action)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(actions) == ["sent", "suppressed"]
    assert len(slack_receiver.requests) == 1


def test_a_run_never_waits_for_another_run_that_is_sending(
    db_url, admin, two_tenants, slack_receiver
):
    """The other run holds this alert's lock (a slow Slack): this run moves on at once and says
    why it did not send, instead of queueing behind it or failing."""
    plant_orphan(admin, two_tenants[0])
    results = run_canaries(db_url, names=["orphaned_messages"])
    with admin_connect(db_url, autocommit=True) as other:
        other.execute(
            "SELECT pg_advisory_lock(%s, hashtext(%s))",
            (state_module._NOTIFY_LOCK_CLASS, "canary:orphaned_messages"),
        )
        started = time.monotonic()
        [outcome] = alert_canaries(db_url, results, SlackNotifier(slack_receiver.url, **FAST))
        assert time.monotonic() - started < 5
    assert (outcome.action, outcome.detail) == ("suppressed", "another run is sending this alert")
    assert slack_receiver.requests == []
    [again] = alert_canaries(db_url, results, SlackNotifier(slack_receiver.url, **FAST))
    assert again.action == "sent"  # the lock is gone with the other run's session


def test_slack_down_still_reports_and_retries_next_run(
    db_url, admin, two_tenants, slack_receiver, caplog
):
    plant_orphan(admin, two_tenants[0])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/services/x"
    caplog.set_level(logging.ERROR)
    results = run_canaries(db_url, names=["orphaned_messages"])
    assert not results[0].passed  # the failure is reported whatever Slack does
    down = alert_canaries(db_url, results, SlackNotifier(dead_url, timeout=2, max_retries=0))
    assert down[0].action == "not_delivered" and down[0].undelivered
    logged = [r.getMessage() for r in caplog.records if NOT_DELIVERED_MARKER in r.getMessage()]
    assert logged and "orphaned_messages" in logged[0] and "investigate with:" in logged[0]
    state = admin.execute("SELECT count(*) AS n FROM hardening.alert_state").fetchone()["n"]
    assert state == 0  # nothing recorded as sent
    # Slack answers 500 (retries exhausted): still not delivered, still not recorded
    slack_receiver.respond_with([SERVER_ERROR])
    flaky = alert_canaries(db_url, results, SlackNotifier(slack_receiver.url, **FAST))
    assert flaky[0].action == "not_delivered"
    # Slack back: the alert goes out on the next run
    again = alert_canaries(db_url, results, SlackNotifier(slack_receiver.url, **FAST))
    assert again[0].action == "sent"
    assert len(slack_receiver.requests) == 2


def test_no_webhook_means_logged_not_delivered(db_url, admin, two_tenants, caplog):
    plant_orphan(admin, two_tenants[0])
    caplog.set_level(logging.ERROR)
    outcome = alert_canaries(db_url, run_canaries(db_url), SlackNotifier(None))
    assert [o.action for o in outcome if o.key == "canary:orphaned_messages"] == ["not_delivered"]
    assert any("SLACK_WEBHOOK_URL is not set" in r.getMessage() for r in caplog.records)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_canaries_prints_a_table_and_exits_1_when_red(db_url, admin, two_tenants, tmp_path):
    from tests.test_cli import run_cli

    env = {"HARDENING_DATABASE_URL": db_url, "COLUMNS": "200"}
    green = run_cli("canaries", "--no-alert", env=env)
    assert green.returncode == 0, green.stderr
    assert green.stdout.count("pass") == len(CANARIES)
    plant_orphan(admin, two_tenants[0])
    redrun = run_cli("canaries", env=env)
    assert redrun.returncode == 1
    assert "orphaned_messages" in redrun.stdout and "FAIL" in redrun.stdout
    # The same sentence a failed Dagster canary run shows (jobs/canaries.py builds it once).
    assert "failed: canary orphaned_messages failed: 1 found in 1 tenant(s)" in redrun.stderr
    assert "runbook.md#canary-orphaned-messages" in redrun.stderr
    assert "NOT delivered" in redrun.stderr  # no SLACK_WEBHOOK_URL in the test env
    assert "Traceback" not in redrun.stderr
