"""The workflows hold the backup keys, so they must pass zizmor's audit and pin what they run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"
USES = re.compile(r"^\s*-?\s*uses:\s*(?P<ref>\S+)(?P<comment>.*)$")


def _zizmor() -> str:
    found = shutil.which("zizmor") or str(Path(sys.executable).with_name("zizmor"))
    if not Path(found).exists():
        pytest.fail("zizmor is not installed; pip install -e '.[dev]' installs it")
    return found


def test_zizmor_offline_finds_nothing() -> None:
    result = subprocess.run(
        [_zizmor(), "--offline", "--no-progress", str(WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_commit_with_its_version_named() -> None:
    uses = [
        (path.name, match)
        for path in sorted(WORKFLOWS.glob("*.yml"))
        for line in path.read_text().splitlines()
        if (match := USES.match(line))
    ]
    assert uses, "no workflow step uses an action; the pattern above is out of date"
    for name, match in uses:
        ref = match["ref"]
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{name}: {ref} is not a SHA"
        assert re.search(r"#\s*v\d+\.\d+\.\d+", match["comment"]), f"{name}: {ref} names no version"


def test_checkout_never_persists_credentials() -> None:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        text = path.read_text()
        checkouts = text.count("uses: actions/checkout@")
        assert text.count("persist-credentials: false") == checkouts, path.name
