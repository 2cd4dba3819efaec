"""A claim resolver never reads the tenant from a claim the user writes (user_metadata): the
command refuses such a path, and status is red if one is configured anyway.
"""

from __future__ import annotations

import pytest

from hardening_pipeline.db.tenant_resolver import read_resolver, set_claim_resolver
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.hardening.status import run_status_check
from tests.test_cli import run_cli

LINE = "tenant_resolver_not_user_writable"


@pytest.mark.parametrize(
    "paths", [["user_metadata.tenant_id"], ["app_metadata.tenant_id", "user_metadata.org.id"]]
)
def test_setting_a_user_writable_claim_path_is_refused(db_url, paths):
    with pytest.raises(ConfigError, match=r"user_metadata.*app_metadata\.tenant_id"):
        set_claim_resolver(db_url, paths)
    assert read_resolver(db_url).claim_paths == ["tenant_id", "app_metadata.tenant_id"]


def test_the_cli_refuses_it_in_one_sentence_with_exit_2(db_url):
    result = run_cli(
        "tenant-resolver",
        "claim",
        "user_metadata.tenant_id",
        env={"HARDENING_DATABASE_URL": db_url},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "user_metadata.tenant_id" in result.stderr and "app_metadata" in result.stderr
    assert read_resolver(db_url).claim_paths == ["tenant_id", "app_metadata.tenant_id"]


def line(db_url: str):
    return next(x for x in run_status_check(db_url).lines if x.name == LINE)


def test_status_is_green_for_the_default_resolver(db_url):
    found = line(db_url)
    assert found.passed and "app_metadata.tenant_id" in found.detail


def test_status_is_red_when_the_database_already_reads_user_metadata(db_url, admin):
    admin.execute(
        "UPDATE hardening.tenant_resolver SET claim_paths = ARRAY['user_metadata.tenant_id']"
    )
    admin.commit()
    found = line(db_url)
    assert not found.passed
    assert "user_metadata.tenant_id" in found.detail
    assert "hardening tenant-resolver claim app_metadata.tenant_id" in found.fix
