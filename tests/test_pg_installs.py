"""Which PostgreSQL a backup dumps with and a drill restores into, and what a release lacks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hardening_pipeline.db.pg_installs import (
    PgInstall,
    describe_missing_libraries,
    fetch_release,
    find_installs,
    newest_server,
    server_for,
)
from hardening_pipeline.errors import ConfigError
from tests.support.cli import run_hardening


def _server(tmp_path: Path, major: int, minor: int) -> PgInstall:
    bin_dir = tmp_path / f"pg{major}.{minor}" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        (bin_dir / name).touch()
    return PgInstall(bin_dir, major, minor, "test")


def test_a_drill_takes_the_sources_major_else_the_newest_never_an_older_one(tmp_path):
    installs = [_server(tmp_path, 15, 20), _server(tmp_path, 17, 9), _server(tmp_path, 17, 11)]
    installs.append(_server(tmp_path, 18, 6))
    assert server_for(17, installs).version == "17.11"
    assert server_for(16, installs).version == "18.6"
    assert newest_server(installs).version == "18.6"
    with pytest.raises(ConfigError) as refused:
        server_for(18, installs[:3])
    assert str(refused.value) == (
        "the backup came from PostgreSQL 18 but the newest Postgres server here is older "
        "(found: 15.20, 17.9, 17.11); run `hardening postgres fetch 18` or set "
        "HARDENING_PG_BIN_DIRS to the bin folder of a PostgreSQL 18 or newer."
    )
    client_only = PgInstall(tmp_path, 18, 0, "test")
    with pytest.raises(ConfigError, match="no PostgreSQL server is installed"):
        newest_server([client_only])


def test_named_bin_dirs_come_first(tmp_path, monkeypatch):
    newest = newest_server()
    monkeypatch.setenv("HARDENING_PG_BIN_DIRS", f"{tmp_path / 'absent'}:{newest.bin_dir}")
    first = find_installs()[0]
    assert (first.bin_dir, first.source) == (newest.bin_dir, "HARDENING_PG_BIN_DIRS")


def test_an_unsupported_major_is_refused_before_downloading():
    with pytest.raises(ConfigError, match="PostgreSQL 14 is not supported; choose one of"):
        fetch_release(14)
    result = run_hardening("postgres", "fetch", "14", url="postgresql:///unused")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_listing_names_every_installation():
    result = run_hardening("postgres", url="postgresql:///unused")
    assert result.returncode == 0, result.stderr
    assert f"PostgreSQL {newest_server().version}" in result.stdout


def test_a_library_a_release_lacks_is_named_with_what_needs_it(tmp_path):
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build a library that links to a missing one")
    # A release whose extension links to a library this machine does not have, as uuid-ossp
    # of a fetched release does without libossp-uuid16.
    newest = newest_server()
    release = tmp_path / "release"
    (release / "bin").mkdir(parents=True)
    (release / "lib").mkdir()
    (release / "bin" / "postgres").symlink_to(newest.bin_dir / "postgres")
    absent = tmp_path / "libhp_absent.so"
    provider, user = tmp_path / "provider.c", tmp_path / "user.c"
    provider.write_text("int hp_absent(void) { return 1; }\n")
    user.write_text("int hp_absent(void);\nint uses(void) { return hp_absent(); }\n")
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(absent), f"-Wl,-soname,{absent.name}",
         str(provider)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(release / "lib" / "needs_absent.so"), str(user),
         f"-L{tmp_path}", "-lhp_absent"],
        check=True,
    )  # fmt: skip
    absent.unlink()
    install = PgInstall(release / "bin", newest.major, newest.minor, "test")
    assert install.missing_libraries() == {"libhp_absent.so": ["needs_absent.so"]}
    assert describe_missing_libraries(install) == [
        f"warning: PostgreSQL {newest.version} lacks libhp_absent.so (needed by "
        "needs_absent.so); a backup whose app uses it will not restore there until you "
        "install the package providing libhp_absent.so."
    ]
    assert newest.missing_libraries() == {}
