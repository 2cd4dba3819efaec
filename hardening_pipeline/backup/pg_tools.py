"""Find a ``pg_dump`` (and its ``pg_restore``) that can read the server being backed up.

``pg_dump`` refuses a server newer than itself only after connecting, and an older one that did
not refuse would write a schema the target misreads; so the version is compared with the
server's ``server_version_num`` before any data is read, and the backup refuses with the fix.
Candidates, first match wins: ``HARDENING_PG_DUMP`` when set (the only one tried), then ``PATH``,
then ``/usr/lib/postgresql/<server major>/bin`` (Debian and Ubuntu packages), then the binaries
the embedded ``pgserver`` wheel ships.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hardening_pipeline.db.embedded import pgserver_bin_dir
from hardening_pipeline.errors import ConfigError

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgTool:
    """A client binary and the version it reported."""

    path: Path
    major: int
    minor: int

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"


def tool_version(path: Path) -> PgTool | None:
    """The version ``path --version`` reports, or None when it does not run or is not Postgres."""
    try:
        stat = path.stat()
    except OSError:
        return None
    # A long-running process (the Dagster code server) backs up every night: ask each binary
    # once, again only if it was replaced.
    return _tool_version(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _tool_version(path_text: str, _mtime_ns: int, _size: int) -> PgTool | None:
    path = Path(path_text)
    try:
        proc = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(proc.stdout)
    if proc.returncode != 0 or not match:
        return None
    return PgTool(path, int(match.group(1)), int(match.group(2) or 0))


def candidate_paths(name: str, server_major: int) -> list[Path]:
    """Where ``name`` may live, in the order they are tried (duplicates removed)."""
    found: list[Path] = []
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    found.append(Path(f"/usr/lib/postgresql/{server_major}/bin") / name)
    with contextlib.suppress(ConfigError):  # no embedded server: PATH and the system only
        found.append(pgserver_bin_dir() / name)
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
                "--version; set it to a pg_dump binary or unset it to search PATH."
            )
        candidates = [tool]
    else:
        candidates = [t for t in map(tool_version, candidate_paths(name, server_major)) if t]
    for tool in candidates:
        if tool.major >= server_major:
            return tool
    seen = ", ".join(f"{t.path} ({t.version})" for t in candidates) or "none found"
    raise ConfigError(
        f"the database runs PostgreSQL {server_major} but the only {name} available is older "
        f"({seen}); install the PostgreSQL {server_major} client tools (e.g. "
        f"postgresql-client-{server_major}) or set HARDENING_PG_DUMP to a {name} of version "
        f"{server_major} or newer."
    )
