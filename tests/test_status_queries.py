"""Every status query file is used, and every query a check names is a file.

A check names its query by file (``query_rows(conn, "<name>", ...)``): a misspelt name only
shows as a red "could not run" line, and a file left behind when a check stops using it
misleads whoever reads ``sql/status/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import hardening_pipeline.hardening.status as status_package
from hardening_pipeline.sql_files import STATUS_QUERIES_DIR

NAMED = re.compile(r"query_rows\(\s*conn,\s*\"(\w+)\"")


def named_queries() -> set[str]:
    folder = Path(status_package.__file__).parent
    return {name for path in folder.glob("*.py") for name in NAMED.findall(path.read_text())}


def test_every_named_query_is_a_file_and_every_file_is_named() -> None:
    files = {path.stem for path in STATUS_QUERIES_DIR.glob("*.sql")}
    named = named_queries()
    assert len(named) > 20  # the reader finds the calls
    assert named - files == set(), "named by a check, missing in sql/status/"
    assert files - named == set(), "in sql/status/, used by no check"
