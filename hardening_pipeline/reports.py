"""Timestamped report files (Markdown for people, JSON for machines) in the reports folder.

Every report kind (status, restore drill, ...) lands as ``<kind>-YYYYMMDDTHHMMSSZ.md`` and
``.json`` side by side, so an auditor can sort a folder by name and read it as a history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hardening_pipeline.errors import ConfigError


def green_or_red(passed: bool) -> str:
    """Green or red in words as well as colour: without an emoji font the mark is an empty box."""
    return "🟢 green" if passed else "🔴 red"


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    json: Path


def report_stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_report(
    reports_dir: Path,
    kind: str,
    markdown: str,
    data: dict[str, Any],
    *,
    moment: datetime | None = None,
) -> ReportFiles:
    """Write both files; a second report in the same second gets a suffix instead of clobbering."""
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the reports folder {reports_dir} ({exc.strerror}); set "
            "HARDENING_REPORTS_DIR to a writable folder."
        ) from exc
    stem = f"{kind}-{report_stamp(moment)}"
    candidate, n = stem, 1
    while (reports_dir / f"{candidate}.md").exists() or (
        reports_dir / f"{candidate}.json"
    ).exists():
        n += 1
        candidate = f"{stem}-{n}"
    files = ReportFiles(reports_dir / f"{candidate}.md", reports_dir / f"{candidate}.json")
    files.markdown.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    files.json.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return files
