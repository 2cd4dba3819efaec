"""The wheel stands alone: built the way the Dockerfile builds it, installed into a fresh virtual
environment, and run from an unrelated folder with nothing configured.

Installing every dependency afresh would take minutes, so the fresh environment borrows them: a
``.pth`` file adds this environment's ``site-packages`` to its path. Paths added by a ``.pth``
line are not scanned for ``.pth`` files themselves, so the checkout's editable-install finder
stays inactive there, and the wheel is installed with ``--no-deps``. The tests prove it: the
package, its SQL and its drill checks must come from inside the fresh environment.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardening_pipeline.restore.drill_checks import DRILL_CHECKS
from hardening_pipeline.sql_files import (
    BASELINE_DIR,
    CANARIES_DIR,
    DEFINITIONS_DIR,
    MIGRATIONS_DIR,
    STATUS_QUERIES_DIR,
)
from tests.support.checkout import ROOT, clean_environment
from tests.support.dockerfile import stages


@pytest.fixture(scope="module")
def wheel() -> Iterator[Path]:
    """Build the wheel from exactly the files the Dockerfile's build stage copies."""
    build_stage = stages(ROOT / "Dockerfile")[0]
    work = Path(tempfile.mkdtemp(prefix="hp-wheel-"))
    source = work / "src"
    source.mkdir()
    for origin, sources, _destination in build_stage.copies():
        assert origin is None
        for name in sources:
            path = ROOT / name.rstrip("/")
            if path.is_dir():
                shutil.copytree(
                    path,
                    source / path.name,
                    symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
            else:
                shutil.copy(path, source / path.name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (work / "dist").glob("hardening_pipeline-*.whl")
    yield path
    shutil.rmtree(work, ignore_errors=True)


def test_wheel_carries_the_sql_and_no_tests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = {f"hardening_pipeline/sql/migrations/{p.name}" for p in MIGRATIONS_DIR.iterdir()}
    canaries = {f"hardening_pipeline/sql/canaries/{p.name}" for p in CANARIES_DIR.iterdir()}
    status = {f"hardening_pipeline/sql/status/{p.name}" for p in STATUS_QUERIES_DIR.iterdir()}
    squashed = {
        f"hardening_pipeline/sql/{folder.name}/{p.name}"
        for folder in (BASELINE_DIR, DEFINITIONS_DIR)
        for p in folder.iterdir()
    }
    assert migrations and canaries and status and squashed
    assert migrations | canaries | status | squashed <= names
    assert "hardening_pipeline/restore/drill_checks.py" in names
    assert not [n for n in names if n.startswith(("tests/", "sql/"))]
    assert not [n for n in names if "__pycache__" in n]


def fresh_venv(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "borrowed_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Iterator[tuple[Path, Path]]:
    """(bin folder of a fresh venv with the wheel installed, an unrelated empty folder)."""
    base = Path(tempfile.mkdtemp(prefix="hp-venv-"))
    python = fresh_venv(base / "venv")
    installing = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installing.returncode == 0, installing.stdout + installing.stderr
    work = base / "w"
    work.mkdir()
    yield python.parent, work
    shutil.rmtree(base, ignore_errors=True)


def run(bin_dir: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=work,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_fresh_venv_imports_the_installed_package_not_the_checkout(installed) -> None:
    bin_dir, work = installed
    probe = (
        "import json, sys, hardening_pipeline\n"
        "from hardening_pipeline.sql_files import MIGRATIONS_DIR, CANARIES_DIR,"
        " STATUS_QUERIES_DIR\n"
        "print(json.dumps({'file': hardening_pipeline.__file__,"
        " 'migrations': str(MIGRATIONS_DIR), 'canaries': str(CANARIES_DIR),"
        " 'status': str(STATUS_QUERIES_DIR),"
        " 'finders': [type(f).__name__ + getattr(f, '__name__', '') for f in sys.meta_path],"
        " 'modules': [m for m in sys.modules if 'editable' in m]}))"
    )
    result = run(bin_dir, work, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    venv = bin_dir.parent.resolve()
    for key in ("file", "migrations", "canaries", "status"):
        assert Path(seen[key]).resolve().is_relative_to(venv), (key, seen[key])
        assert not Path(seen[key]).resolve().is_relative_to(ROOT), (key, seen[key])
    assert not seen["modules"], "the checkout's editable finder is active"
    assert not [f for f in seen["finders"] if "Editable" in f]


def test_commands_run_from_an_unrelated_folder_on_the_embedded_default(installed) -> None:
    bin_dir, work = installed
    for command in (
        ["hardening", "migrate"],
        ["hardening", "status"],
        ["hardening", "seed", "--tenants", "2", "--messages-per-unit", "2"],
        ["hardening", "backup"],
        ["hardening", "restore-drill"],
        ["hardening", "evidence"],
    ):
        result = run(bin_dir, work, *command)
        assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
        assert "Traceback" not in result.stderr, command

    assert (work / ".hardening" / "pgdata").is_dir(), "expected the embedded default database"
    # One from restore-drill, one from the evidence run.
    drills = sorted((work / "scripts" / "hardening" / "reports").glob("restore-drill-*.json"))
    assert len(drills) == 2
    for drill in drills:
        report = json.loads(drill.read_text())
        assert report["passed"] is True
        assert report["drill_tests"] == {"passed": len(DRILL_CHECKS), "failed": 0}
    (evidence,) = (work / "evidence").iterdir()
    assert (evidence / "SUMMARY.md").read_text().startswith("# Hardening evidence: ALL GREEN")
    tree = (evidence / "file-tree.txt").read_text().split()
    assert "hardening_pipeline/sql/migrations/002_audit_events.sql" in tree
    assert "hardening_pipeline/restore/drill_checks.py" in tree


DG = "from dagster_dg_cli.cli import main; main()"


def test_dg_loads_the_installed_package_from_an_empty_folder(installed) -> None:
    """dg needs a project folder; `hardening dg-project` makes an empty folder one."""
    bin_dir, work = installed
    folder = work / "dg"
    folder.mkdir()
    written = run(bin_dir, folder, "hardening", "dg-project")
    assert written.returncode == 0, written.stdout + written.stderr
    checked = run(bin_dir, folder, "python", "-c", DG, "check", "defs")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "All definitions loaded successfully" in checked.stdout
    listed = run(bin_dir, folder, "python", "-c", DG, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    assert "nightly_backup_job" in {job["name"] for job in json.loads(listed.stdout)["jobs"]}
    # Twice is harmless; a file of the same name with other content is refused, not replaced.
    assert run(bin_dir, folder, "hardening", "dg-project").returncode == 0
    (folder / "dg.toml").write_text("# mine\n")
    refused = run(bin_dir, folder, "hardening", "dg-project")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "dg.toml already exists" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (folder / "dg.toml").read_text() == "# mine\n"
