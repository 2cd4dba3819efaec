"""Smoke test of the UI: start the real Dagster webserver on 127.0.0.1 and read our code location
back over its GraphQL API, as the UI does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.servers import wait_for_dagster
from tests.test_defs_snapshot import ASSETS, JOBS, SCHEDULES, SENSORS

ROOT = Path(__file__).resolve().parents[1]
QUERY = """
{
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        jobs { name }
        assetNodes {
          assetKey { path } description groupName
          owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
        }
        schedules { name cronSchedule executionTimezone scheduleState { status } }
        sensors { name sensorState { status } }
      }
    }
    ... on PythonError { message }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, query: str) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def webserver(tmp_path):
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        HARDENING_DAGSTER_OWNERS="team:platform,oncall@example.com",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_dagster(base, proc, 90, "webserver", lambda: proc.stdout.read()[-2000:])
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_ui_shows_our_assets_jobs_schedules_and_sensors(webserver):
    data = post(f"{webserver}/graphql", QUERY)
    nodes = data["data"]["repositoriesOrError"]["nodes"]
    (repo,) = [n for n in nodes if n["location"]["name"] == "hardening_pipeline"]
    assert {j["name"] for j in repo["jobs"] if not j["name"].startswith("__")} == JOBS
    assets = {"/".join(a["assetKey"]["path"]): a for a in repo["assetNodes"]}
    assert set(assets) == ASSETS
    assert all(a["description"] for a in assets.values())
    assert assets["app/messages"]["groupName"] == "application_tables"
    # The catalog's owners are the ones HARDENING_DAGSTER_OWNERS names, on every asset.
    owners = [{"team": "platform"}, {"email": "oncall@example.com"}]
    assert {key: a["owners"] for key, a in assets.items()} == {key: owners for key in ASSETS}
    schedules = {s["name"]: s for s in repo["schedules"]}
    assert {n: (s["cronSchedule"]) for n, s in schedules.items()} == {
        n: cron for n, (cron, _) in SCHEDULES.items()
    }
    assert all(s["scheduleState"]["status"] == "RUNNING" for s in schedules.values())
    assert all(s["executionTimezone"] == "UTC" for s in schedules.values())
    sensors = {s["name"]: s for s in repo["sensors"]}
    assert set(sensors) == SENSORS
    assert all(s["sensorState"]["status"] == "RUNNING" for s in sensors.values())
