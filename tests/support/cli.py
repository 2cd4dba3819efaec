"""The ``hardening`` command in a subprocess, as a user runs it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_hardening(
    *args: str,
    url: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``hardening ARGS`` against ``url``, without the caller's HARDENING_*/BACKUP_*."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HARDENING_", "BACKUP_"))}
    full_env.update({"HARDENING_DATABASE_URL": url, "COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "hardening_pipeline.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
        input=input_text,
    )


def keyed_store_env(folder: Path) -> dict[str, str]:
    """A fresh random backup key and a file store in ``folder``/store."""
    return {
        "BACKUP_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "BACKUP_STORE_URL": (folder / "store").as_uri(),
    }
