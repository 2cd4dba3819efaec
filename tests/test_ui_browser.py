"""The Dagster UI in a real browser: what an on-call engineer clicks, on a seeded database.

``dagster dev`` (webserver and daemon) runs from a temporary folder against a seeded database;
Playwright drives Debian's ``chromium`` (Playwright cannot download a browser of its own here).
Screenshots of the pages visited land in ``tests/ui_screenshots/`` (git-ignored).
Skipped, with the reason, where chromium or Playwright is missing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hardening_pipeline.seed import seed_demo_data
from tests.support.checkout import clean_environment
from tests.support.db import admin_connect, create_database
from tests.support.servers import wait_for, wait_for_dagster
from tests.support.slack_receiver import SlackReceiver, running_slack_receiver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
try:
    from playwright.sync_api import Page, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (dev extra)"),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason="no chromium binary (apt-get install chromium; .ci/run does it)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHOTS = ROOT / "tests" / "ui_screenshots"
LOCATION = "hardening_pipeline"
REPOSITORY = "__repository__"
OWNERS = "team:platform,oncall@example.com"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The order a new deployment would use: the backup first, since the drill, freshness and seal
# read it.
JOBS = [
    "database_schema_job",
    "nightly_backup_job",
    "restore_drill_job",
    "backup_freshness_job",
    "audit_seal_job",
    "canary_job",
    "status_check_job",
    "evidence_job",
]
SEAL_INTERVAL = 5
RUN_STATUS = """
query ($id: ID!) {
  runOrError(runId: $id) {
    ... on Run { status }
  }
}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base: str, query: str, variables: dict[str, Any] | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for_run(base: str, run_id: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        data = graphql(base, RUN_STATUS, {"id": run_id})
        status = data["data"]["runOrError"].get("status", "?")
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    return f"still {status} after {timeout:.0f}s"


class UI:
    def __init__(
        self, base: str, page: Page, runbook_base: str, db_url: str, slack: SlackReceiver
    ) -> None:
        self.base = base
        self.page = page
        self.runbook_base = runbook_base
        self.db_url = db_url
        self.slack = slack

    def shot(self, name: str) -> None:
        SHOTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def dismiss_welcome(self) -> None:
        """A fresh browser profile gets Dagster's one-time community dialog over the page."""
        skip = self.page.get_by_role("button", name="Skip")
        try:
            skip.wait_for(timeout=5_000)
            skip.click()
        except PlaywrightTimeout:  # the dialog only shows once per profile
            pass

    def launch_from_launchpad(self, job: str) -> str:
        """Open the job's Launchpad, launch exactly what it shows, return the run id."""
        page = self.page
        page.goto(f"{self.base}/locations/{REPOSITORY}@{LOCATION}/jobs/{job}/playground")
        self.dismiss_welcome()
        button = page.get_by_role("button", name=re.compile("Launch run", re.I))
        button.wait_for(timeout=60_000)
        # The editor is filled asynchronously from the job's default config.
        page.wait_for_timeout(1500)
        self.shot(f"launchpad-{job}")
        button.click()
        page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}.*"), timeout=60_000)
        return re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)


@pytest.fixture(scope="module")
def ui_slack() -> Iterator[SlackReceiver]:
    with running_slack_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def ui(
    pg_server_url: str, template_db: str, tmp_path_factory, ui_slack: SlackReceiver
) -> Iterator[UI]:
    slack = ui_slack
    work = tmp_path_factory.mktemp("ui")
    db_url = create_database(pg_server_url, template=template_db)
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)

    # The runbook, published where HARDENING_RUNBOOK_URL points.
    handler = partial(SimpleHTTPRequestHandler, directory=str(ROOT / "docs"))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    docs = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=docs.serve_forever, daemon=True).start()
    runbook_base = f"http://127.0.0.1:{docs.server_address[1]}/runbook.md"

    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_environment(
        DAGSTER_HOME=str(home),
        PYTHONPATH=str(ROOT),
        HARDENING_DATABASE_URL=db_url,
        BACKUP_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode(),
        BACKUP_STORE_URL=(work / "store").as_uri(),
        HARDENING_REPORTS_DIR=str(work / "reports"),
        HARDENING_STATE_DIR=str(work / "state"),
        HARDENING_RUNBOOK_URL=runbook_base,
        HARDENING_DAGSTER_OWNERS=OWNERS,
        DAGSTER_WEBSERVER_URL=base,
        SLACK_WEBHOOK_URL=slack.url,
        # The seal sensor's tick, shortened so an incident plays out in seconds, not minutes.
        HARDENING_SEAL_INTERVAL_SECONDS=str(SEAL_INTERVAL),
    )
    log = (work / "dagster-dev.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "dagster"),
            "dev",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_dagster(
            base,
            proc,
            120,
            "dagster dev",
            lambda: (work / "dagster-dev.log").read_text()[-3000:],
        )
        with sync_playwright() as pw:
            # A fresh profile per run: nothing cached from an earlier UI build or session.
            context = pw.chromium.launch_persistent_context(
                str(work / "chromium-profile"),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 900},
            )
            page = context.pages[0] if context.pages else context.new_page()
            yield UI(base, page, runbook_base, db_url, slack)
            context.close()
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        docs.shutdown()
        log.close()


def test_every_launchpad_opens_ready_to_launch_and_a_launch_runs_what_it_shows(ui: UI) -> None:
    """Each job's Launchpad shows its config with no error and an enabled "Launch run"; one job
    (the backup, whose secret fields are masked) is launched from it and succeeds.

    That every job's shown config runs is test_defs_launchpad.py's, against the same GraphQL
    the Launchpad reads, in seconds rather than a run of every job through the browser.
    """
    page = ui.page
    for job in JOBS:
        page.goto(f"{ui.base}/locations/{REPOSITORY}@{LOCATION}/jobs/{job}/playground")
        ui.dismiss_welcome()
        button = page.get_by_role("button", name=re.compile("Launch run", re.I))
        button.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # the editor is filled asynchronously
        assert button.is_enabled(), job
        body = page.inner_text("body")
        assert "Invalid" not in body and "Missing required" not in body, job
    run_id = ui.launch_from_launchpad("nightly_backup_job")
    assert wait_for_run(ui.base, run_id) == "SUCCESS"
    page.goto(f"{ui.base}/runs/{run_id}")
    page.wait_for_timeout(1000)
    ui.shot("run-nightly_backup_job")


def test_lineage_shows_table_to_backup_to_drill(ui: UI) -> None:
    # The backup's nearest neighbours: what it reads (the application tables) on one side and
    # what reads it (the drill) on the other.
    page = ui.page
    page.goto(f"{ui.base}/assets/nightly_backup?view=lineage&lineageScope=neighbors")
    ui.dismiss_welcome()
    for table in ("tenants", "units", "messages", "audit_events"):
        page.get_by_text(table, exact=True).first.wait_for(timeout=30_000)
    # Long names are shortened in the middle on graph nodes ("restore_dr…_report").
    page.get_by_text(re.compile(r"^restore_dr.*report$")).first.wait_for(timeout=30_000)
    ui.shot("lineage-table-backup-drill")


def test_an_asset_page_names_its_owners(ui: UI) -> None:
    page = ui.page
    page.goto(f"{ui.base}/assets/nightly_backup")
    ui.dismiss_welcome()
    page.get_by_text("Owners", exact=True).first.wait_for(timeout=30_000)
    # The ones HARDENING_DAGSTER_OWNERS names: a team (shown by its name) and an email.
    page.get_by_text("oncall@example.com").first.wait_for(timeout=30_000)
    page.get_by_text("platform", exact=True).first.wait_for(timeout=30_000)
    ui.shot("asset-owners")


def test_a_broken_canary_fails_its_run_with_the_canary_sentence_first(ui: UI) -> None:
    with admin_connect(ui.db_url) as conn:
        unit = conn.execute("SELECT id FROM units LIMIT 1").fetchone()["id"]
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("SELECT set_config('app.actor', 'test:replica', true)")
            conn.execute("DELETE FROM units WHERE id = %s", (unit,))
    run_id = ui.launch_from_launchpad("canary_job")
    assert wait_for_run(ui.base, run_id) == "FAILURE"
    page = ui.page
    page.goto(f"{ui.base}/runs/{run_id}")
    sentence = page.get_by_text(re.compile(r"^canary orphaned_messages failed: \d+ found")).first
    sentence.wait_for(timeout=30_000)
    ui.shot("run-canary-failed")
    body = page.inner_text("body")
    assert "DagsterAssetCheckFailedError" not in body
    assert "dagster._core" not in body.split("canary orphaned_messages failed", 1)[0]

    # The table's page shows it observed by that run, with the failed check, not as an asset
    # that was "Never materialized".
    page.goto(f"{ui.base}/assets/app/messages")
    ui.dismiss_welcome()
    page.get_by_text("Latest observation").first.wait_for(timeout=30_000)
    page.get_by_text("live_rows_estimate").first.wait_for(timeout=30_000)
    ui.shot("table-messages-canary-failed")
    assert "Never materialized" not in page.inner_text("body")
    page.goto(f"{ui.base}/assets/app/messages?view=checks")
    page.get_by_text("orphaned_messages").first.wait_for(timeout=30_000)
    ui.shot("table-messages-checks")
    # Each canary check can be run on its own from here.
    execute = page.locator("button", has_text=re.compile(r"^\s*Execute\s*$")).first
    assert execute.is_enabled()


def test_red_checklist_names_the_table_and_its_runbook_link_opens_the_section(ui: UI) -> None:
    with admin_connect(ui.db_url) as conn:
        conn.execute("ALTER TABLE messages DISABLE ROW LEVEL SECURITY")
        conn.commit()
    try:
        run_id = ui.launch_from_launchpad("status_check_job")
        # A red report fails the run: the Runs list shows it red, not green.
        assert wait_for_run(ui.base, run_id) == "FAILURE"
        page = ui.page
        page.goto(f"{ui.base}/assets/hardening_status_report")
        ui.dismiss_welcome()
        ui.shot("status-asset-page")
        # The checklist is Markdown metadata: the table shows a button that opens it rendered.
        page.get_by_text("[Show Markdown]").first.click()
        fix = page.get_by_text("ALTER TABLE public.messages ENABLE ROW LEVEL SECURITY;").first
        fix.wait_for(timeout=30_000)
        ui.shot("status-checklist-red")
        link = page.locator(f'a[href^="{ui.runbook_base}#status-rls-tenant-tables"]').first
        href = link.get_attribute("href")
    finally:
        with admin_connect(ui.db_url) as conn:
            conn.execute("ALTER TABLE messages ENABLE ROW LEVEL SECURITY")
            conn.commit()
    anchor = href.split("#", 1)[1]
    page.goto(href)
    text = page.inner_text("body")
    assert f'<a id="{anchor}"></a>' in text or f'id="{anchor}"' in text
    assert "### `rls_tenant_tables`" in text.split(f'id="{anchor}"', 1)[1][:200]


def seal_messages(slack: SlackReceiver) -> list[str]:
    texts = [json.dumps(body) for body in list(slack.requests)]
    return [text for text in texts if "audit seal" in text.lower()]


def test_a_tampered_seal_alerts_once_with_the_first_bad_id_then_resolves(ui: UI) -> None:
    """The seal sensor, under the real daemon: one Slack message with the sentence and the first
    bad id, nothing new while the incident lasts, "resolved" once the row is put back; the check
    page shows the same sentence."""
    with admin_connect(ui.db_url, autocommit=True) as su:

        def sealed_through() -> int:
            row = su.execute("SELECT coalesce(max(to_id), 0) AS n FROM hardening.audit_seals")
            return row.fetchone()["n"]

        wait_for(lambda: sealed_through() >= 2, "the sensor's first seal", 120, every=1)
        victim = su.execute("SELECT min(id) AS id FROM audit_events").fetchone()["id"]
        original = su.execute("SELECT actor FROM audit_events WHERE id = %s", (victim,))
        actor = original.fetchone()["actor"]

        def rewrite(value: str) -> None:
            with su.transaction():
                su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
                su.execute("UPDATE audit_events SET actor = %s WHERE id = %s", (value, victim))
                su.execute(
                    "ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only"
                )

        rewrite("forged")
        try:
            wait_for(lambda: seal_messages(ui.slack), "the tampered-seal alert", 120, every=1)
            (alert,) = seal_messages(ui.slack)
            assert "Audit seal chain broken" in alert and f"first bad id {victim}" in alert
            assert "DagsterAssetCheckFailedError" not in alert
            page = ui.page
            page.goto(f"{ui.base}/assets/audit_seal?view=checks")
            ui.dismiss_welcome()
            page.get_by_text(f"first bad id {victim}").first.wait_for(timeout=60_000)
            ui.shot("seal-chain-broken-check")
            assert "DagsterAssetCheckFailedError" not in page.inner_text("body")
            # Many more ticks: the incident stays one message.
            time.sleep(SEAL_INTERVAL * 8)
            assert len(seal_messages(ui.slack)) == 1
        finally:
            rewrite(actor)
        wait_for(
            lambda: any("Resolved: audit seal chain" in m for m in seal_messages(ui.slack)),
            "the resolved message",
            120,
            every=1,
        )
        assert len(seal_messages(ui.slack)) == 2
