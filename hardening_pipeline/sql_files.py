"""Where the SQL files are, whether the package runs from a checkout or from an installed wheel.

``sql/`` at the top of the repository is the only copy in git; ``hardening_pipeline/sql`` is a
symbolic link to it, so the same files are package data: the wheel carries them, and a checkout
(editable install or ``PYTHONPATH``) reads the repository's own folder. They are found through
``importlib.resources`` rather than a path relative to this file's parents, which points at
``site-packages`` once the package is installed.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def sql_folder(kind: str) -> Path:
    """The folder ``sql/<kind>`` (migrations, revisions, canaries, status) as a real path.

    Resolved, so a checkout names the repository's ``sql/`` folder in messages and reports
    rather than the link; callers copy and list these folders, so a path (not a zip member)
    is what they need, and pip always installs wheels unpacked.
    """
    return Path(str(files("hardening_pipeline").joinpath("sql", kind))).resolve()


MIGRATIONS_DIR = sql_folder("migrations")
CANARIES_DIR = sql_folder("canaries")
STATUS_QUERIES_DIR = sql_folder("status")
REVISIONS_DIR = sql_folder("revisions")
BASELINE_DIR = sql_folder("baseline")
DEFINITIONS_DIR = sql_folder("definitions")
