"""Installs are reproducible: every dependency comes from a hash-checked lock, everywhere.

``requirements.lock`` holds the runtime dependencies (the image and the workflows install it),
``requirements-dev.lock`` the same versions plus the dev extra (`.ci/run` and the README's set-up).
Both are ``uv pip compile --generate-hashes --universal`` output; their first lines name the
command that regenerates them after pyproject.toml changes.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@dataclass(frozen=True)
class Locked:
    version: str
    hashes: frozenset[str]
    marker: str


def read_lock(text: str) -> dict[str, Locked]:
    """name -> what the lock pins; every entry is `name==version [; marker]` then its hashes."""
    entries: dict[str, Locked] = {}
    logical = re.sub(r"\\\n\s*", " ", text)
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split(" --hash=")
        # Extras stay in the pin (uv's --no-strip-extras): pip then holds `gql[requests]` to the
        # locked gql instead of resolving it afresh (and failing in --require-hashes mode).
        name, _, rest = requirement.partition("==")
        name = name.split("[", 1)[0]
        version, _, marker = rest.partition(";")
        assert name and version, f"not a pin: {line}"
        entries[canonicalize_name(name)] = Locked(
            version.strip(), frozenset(o.strip() for o in options), marker.strip()
        )
    return entries


@pytest.fixture(scope="module")
def runtime_lock() -> dict[str, Locked]:
    return read_lock(RUNTIME_LOCK.read_text())


@pytest.fixture(scope="module")
def dev_lock() -> dict[str, Locked]:
    return read_lock(DEV_LOCK.read_text())


def extra_packages(requirement: Requirement) -> set[str]:
    """What `requirement`'s extras add on this machine (psycopg[binary] -> psycopg-binary)."""
    if not requirement.extras:
        return set()
    try:
        declared = requires(requirement.name) or []
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed; install from the lock first")
    names = set()
    for line in declared:
        dependency = Requirement(line)
        for extra in requirement.extras:
            environment = {**default_environment(), "extra": extra}
            if dependency.marker and dependency.marker.evaluate(environment):
                names.add(canonicalize_name(dependency.name))
    return names


def lock_problems(requirements: list[str], lock: dict[str, Locked]) -> list[str]:
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name not in lock:
            problems.append(f"{requirement} is not in the lock")
            continue
        if not requirement.specifier.contains(lock[name].version, prereleases=True):
            problems.append(f"{requirement}: the lock has {lock[name].version}")
        problems += [
            f"{requirement}: {n} is not in the lock"
            for n in extra_packages(requirement) - lock.keys()
        ]
    return problems


def test_every_pin_carries_hashes(runtime_lock, dev_lock) -> None:
    for lock in (runtime_lock, dev_lock):
        assert lock
        for name, locked in lock.items():
            assert locked.hashes, f"{name} has no hash"
            assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in locked.hashes), name


def test_the_runtime_lock_covers_every_dependency_at_its_pinned_version(runtime_lock) -> None:
    assert lock_problems(PYPROJECT["dependencies"], runtime_lock) == []


def test_the_dev_lock_covers_the_dependencies_and_the_dev_extra(dev_lock) -> None:
    everything = PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["dev"]
    assert lock_problems(everything, dev_lock) == []


def test_the_two_locks_agree(runtime_lock, dev_lock) -> None:
    """The image runs exactly what the tests ran: the dev lock only adds to the runtime one."""
    assert not runtime_lock.keys() - dev_lock.keys()
    for name, locked in runtime_lock.items():
        assert (locked.version, locked.hashes) == (dev_lock[name].version, dev_lock[name].hashes)


def test_the_lock_check_catches_a_stale_lock(runtime_lock) -> None:
    stale = dict(runtime_lock)
    stale["dagster"] = Locked("1.13.26", runtime_lock["dagster"].hashes, "")
    del stale["dagster-dg-cli"]
    del stale["psycopg-pool"]
    assert lock_problems(PYPROJECT["dependencies"], stale) == [
        "dagster==1.13.27: the lock has 1.13.26",
        "dagster-dg-cli==1.13.27 is not in the lock",
        "psycopg[binary,pool]<4,>=3.2: psycopg-pool is not in the lock",
    ]


# --- every place that installs, installs from a lock ----------------------------------------------

PIP_INSTALL = re.compile(r"pip3?\s+install\b[^&;|\n`]*")
INSTALLERS = [
    ROOT / "Dockerfile",
    ROOT / ".ci" / "run",
    ROOT / "README.md",
    *sorted((ROOT / ".github" / "workflows").glob("*.yml")),
]


def installs(text: str) -> list[str]:
    return [m.group(0).strip() for m in PIP_INSTALL.finditer(re.sub(r"\\\n\s*", " ", text))]


def install_problem(command: str) -> str | None:
    """A pip install either takes exactly a lock with hashes, or adds the project alone."""
    args = shlex.split(command)[2:]
    if "--no-deps" in args:
        return None
    if "--require-hashes" in args and "-r" in args:
        lock = Path(args[args.index("-r") + 1]).name
        if lock in (RUNTIME_LOCK.name, DEV_LOCK.name) and args.count("-r") == 1:
            return None
    return f"`{command}` does not install from a lock"


def test_every_install_uses_a_lock() -> None:
    found = {path.relative_to(ROOT).as_posix(): installs(path.read_text()) for path in INSTALLERS}
    for where in ("Dockerfile", ".ci/run", "README.md", ".github/workflows/nightly-backup.yml"):
        assert any("--require-hashes" in c for c in found[where]), f"{where} installs no lock"
    problems = [
        f"{where}: {problem}"
        for where, commands in found.items()
        for command in commands
        if (problem := install_problem(command))
    ]
    assert problems == []


def test_the_install_check_catches_an_unlocked_install() -> None:
    text = 'RUN pip install "dagster==1.13.27" && python -m pip install -e ".[dev]"'
    assert [install_problem(c) for c in installs(text)] == [
        '`pip install "dagster==1.13.27"` does not install from a lock',
        '`pip install -e ".[dev]"` does not install from a lock',
    ]
    assert install_problem("pip install --require-hashes -r requirements.lock") is None
    assert install_problem("pip install --no-deps -e .") is None
    assert install_problem("pip install -r requirements.lock") is not None
    assert install_problem("pip install --require-hashes -r other.txt") is not None
