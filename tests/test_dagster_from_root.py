"""Dagster's own commands from the repository root, with nothing set: no DAGSTER_HOME, no
database, no storage variables. Manual materialization for evidence capture is one of the ways
this project is used, and it must not need the compose deployment's environment.

Each command runs in a subprocess in a copy of the repository (it writes a temporary Dagster
home, the embedded database and reports into the folder it runs in), with that copy first on
the Python path so its own code and ``dagster.yaml`` are the ones loaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.checkout import clean_environment, copy_checkout

BIN = Path(sys.executable).parent
JOBS = [
    "audit_seal_job",
    "backup_freshness_job",
    "canary_job",
    "database_schema_job",
    "evidence_job",
    "nightly_backup_job",
    "restore_drill_job",
    "status_check_job",
]


@pytest.fixture(scope="module")
def checkout() -> Iterator[Path]:
    root = copy_checkout()
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


def run(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=root,
        env=clean_environment(PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_temporary_dagster_home(root: Path) -> bool:
    return not list(root.glob(".tmp_dagster_home_*"))


def test_definitions_validate(checkout: Path) -> None:
    result = run(checkout, str(BIN / "dagster"), "definitions", "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stderr + result.stdout
    assert no_temporary_dagster_home(checkout)


def test_dg_check_defs(checkout: Path) -> None:
    result = run(checkout, str(BIN / "dg"), "check", "defs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout
    assert no_temporary_dagster_home(checkout)


def test_dg_list_defs(checkout: Path) -> None:
    result = run(checkout, str(BIN / "dg"), "list", "defs", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    listed = json.loads(result.stdout)
    assert sorted(job["name"] for job in listed["jobs"]) == JOBS


def test_job_list(checkout: Path) -> None:
    result = run(
        checkout, str(BIN / "dagster"), "job", "list", "-m", "hardening_pipeline.definitions"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listed = [
        line.split(":", 1)[1].strip()
        for line in result.stdout.splitlines()
        if line.startswith("Job: ")
    ]
    assert sorted(j for j in listed if not j.startswith("__")) == JOBS


def test_materialize_the_status_report_on_the_embedded_database(checkout: Path) -> None:
    migrated = run(checkout, sys.executable, "-m", "hardening_pipeline.cli", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    result = run(
        checkout,
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "--select",
        "hardening_status_report",
        "-m",
        "hardening_pipeline.definitions",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "RUN_SUCCESS" in output
    reports = sorted((checkout / "scripts" / "hardening" / "reports").glob("status-*.json"))
    assert len(reports) == 1, reports
    report = json.loads(reports[0].read_text())
    assert report["passed"] is True, report
    assert (checkout / ".hardening" / "pgdata").is_dir(), "expected the embedded default"
    assert no_temporary_dagster_home(checkout)


def test_the_deployment_instance_config_would_not_work_from_the_root() -> None:
    """The failure this layout prevents: the compose config at the root needs DAGSTER_PG_*."""
    broken = copy_checkout()
    try:
        shutil.copy(broken / "deploy" / "dagster.yaml", broken / "dagster.yaml")
        result = run(broken, str(BIN / "dagster"), "definitions", "validate", timeout=300)
        assert result.returncode != 0
        assert "DAGSTER_PG_" in result.stdout + result.stderr
    finally:
        shutil.rmtree(broken.parent, ignore_errors=True)
