"""Lint and format are part of the test run, so a red lint fails CI like a red test."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed; install the project with its dev extra")
    return [exe]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args):
    result = subprocess.run(ruff() + args, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def private_dagster_imports(text: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [
            f"{node.lineno}: {m}"
            for m in modules
            if m.split(".")[0].startswith("dagster")
            and any(part.startswith("_") for part in m.split(".")[1:])
        ]
    return found


def test_the_package_uses_only_dagsters_public_api():
    # Private modules (dagster._core...) move between releases without notice.
    offenders = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "hardening_pipeline").rglob("*.py"))
        if (lines := private_dagster_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "planted",
    [
        "from dagster._core.events import DagsterEventType",
        "import dagster._core.storage.tags",
        "from dagster_k8s._internal import thing",
    ],
)
def test_the_private_import_scan_catches_planted_imports(planted):
    assert private_dagster_imports(planted)
    assert private_dagster_imports("import dagster as dg\nfrom dagster import asset") == []
