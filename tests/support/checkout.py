"""A throwaway copy of the repository, for tests that must run commands from its root.

Commands such as ``dagster asset materialize`` or ``pip wheel .`` write into the folder they run
in (a temporary Dagster home, the embedded database, reports, ``build/``); running them in a copy
leaves the real checkout exactly as it was. Symbolic links are copied as links, as git checks
them out (``hardening_pipeline/sql`` points at ``sql/``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Local state and build output, never part of a checkout.
_SKIP = {
    ".git",
    ".venv",
    ".hardening",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "__pycache__",
    "build",
    "dist",
    "evidence",
    ".env",
}


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in _SKIP or n.endswith(".egg-info")}
    skipped |= {n for n in names if n.startswith(".tmp_dagster_home_")}
    if Path(folder).resolve() == (ROOT / "scripts" / "hardening" / "reports"):
        skipped |= {n for n in names if n != ".gitkeep"}
    return skipped


def copy_checkout(prefix: str = "hp-root-") -> Path:
    """Copy the repository into a new short-named folder under the system temp dir.

    Short, because the embedded Postgres puts its Unix socket under ``.hardening/`` and a socket
    path must fit in 107 bytes. The caller removes the folder.
    """
    target = Path(tempfile.mkdtemp(prefix=prefix)) / "repo"
    shutil.copytree(ROOT, target, symlinks=True, ignore=_ignore)
    return target


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any project, Dagster home or Dagster storage setting,
    and without PYTHONPATH (which would put a checkout ahead of what is installed)."""
    prefixes = ("HARDENING_", "BACKUP_", "SLACK_", "DAGSTER_", "AWS_", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return env | extra
