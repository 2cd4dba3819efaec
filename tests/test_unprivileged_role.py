"""A login without privileges on the ``hardening`` schema gets one sentence, not a traceback.

``migrate``, ``migrate --status`` and ``status`` run as such a role (a read-only analyst login, a
wrong user in HARDENING_DATABASE_URL) must say which role lacks what, and exit 2: it is
configuration, not a red check.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.support.cli import run_hardening


@pytest.fixture
def unprivileged_url(db_url: str, admin) -> Iterator[tuple[str, str]]:
    role = f"analyst_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    admin.commit()
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info["user"] = role
    yield psycopg.conninfo.make_conninfo(**info), role
    admin.rollback()
    admin.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))
    admin.commit()


@pytest.mark.parametrize("args", [("migrate",), ("migrate", "--status"), ("status",)], ids=" ".join)
def test_a_role_without_privileges_on_hardening_is_told_in_one_sentence(
    unprivileged_url, tmp_path, args
):
    url, role = unprivileged_url
    result = run_hardening(*args, url=url, env={"HARDENING_REPORTS_DIR": str(tmp_path)})
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode == 2, out
    assert role in out, out
    assert "lacks USAGE on schema hardening" in out, out
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
