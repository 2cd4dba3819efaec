"""Who owns each asset and where its code lives, as the Dagster catalog shows them.

Owners come from HARDENING_DAGSTER_OWNERS, read where the definitions are built; a bad value
stops the code location from loading with one sentence naming the variable and the fix.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from hardening_pipeline.defs.assets import database_schema, observe_application_tables
from hardening_pipeline.defs.backup import backup_retention, nightly_backup
from hardening_pipeline.defs.catalog import catalog_assets
from hardening_pipeline.defs.restore import restore_drill_report
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.settings import (
    DEFAULT_DAGSTER_OWNERS,
    DagsterCatalogSettings,
    load_dagster_catalog_settings,
    parse_dagster_owners,
)
from tests.support.checkout import clean_environment
from tests.test_defs_snapshot import ASSETS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRINT_OWNERS = """
import json
from hardening_pipeline.definitions import defs
graph = defs.resolve_asset_graph()
keys = graph.get_all_asset_keys()
print(json.dumps({k.to_user_string(): list(graph.get(k).owners) for k in keys}))
"""
BAD_OWNERS = [
    "platform",  # a bare name: neither an email nor team:<name>
    "team:",
    "team:platform,ops",
    "ops@example",
    "ops@example.c",
    ".ops@example.com",  # Dagster's rule wants a letter or digit first
    "+ops@example.com",
    ",",
]


def load_owners(**env: str) -> subprocess.CompletedProcess:
    """Import the code location in a fresh interpreter, as ``dagster dev`` does."""
    return subprocess.run(
        [sys.executable, "-c", PRINT_OWNERS],
        env=clean_environment(PYTHONPATH=str(ROOT), **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("value", "owners"),
    [
        (None, list(DEFAULT_DAGSTER_OWNERS)),
        ("  ", list(DEFAULT_DAGSTER_OWNERS)),
        (" team:dba , oncall@example.com,team:dba", ["team:dba", "oncall@example.com"]),
    ],
    ids=["unset", "blank", "set"],
)
def test_every_asset_has_the_configured_owners(value: str | None, owners: list[str]) -> None:
    env = {} if value is None else {"HARDENING_DAGSTER_OWNERS": value}
    loaded = load_owners(**env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    by_asset = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert set(by_asset) == ASSETS
    assert by_asset == {key: owners for key in ASSETS}


@pytest.mark.parametrize("value", BAD_OWNERS)
def test_a_bad_owner_is_refused_with_one_sentence_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_dagster_owners(value)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("HARDENING_DAGSTER_OWNERS must be comma-separated owners")
    assert "email or team:<name>" in message and message.endswith("for team:platform.")


@pytest.mark.parametrize(
    "owner",
    ["ops@example.com", "first.last+oncall@sub.example.co.uk", "team:platform", "team:data eng"],
)
def test_every_owner_the_variable_accepts_dagster_accepts(owner: str) -> None:
    # Ours must be no looser than Dagster's rule, or Dagster would refuse it later, naming an
    # asset instead of the variable.
    assert parse_dagster_owners(owner) == (owner,)
    assert dg.AssetSpec("x", owners=[owner]).owners == [owner]


@pytest.mark.parametrize("value", BAD_OWNERS[:-1])
def test_what_the_variable_refuses_is_an_owner_dagster_would_refuse_or_a_typo(value: str) -> None:
    # "team:platform,ops" splits into a valid team and a bare name; the rest Dagster refuses too.
    refused = [part for part in value.split(",") if part]
    with pytest.raises(dg.DagsterInvalidDefinitionError):
        dg.AssetSpec("x", owners=[refused[-1]])


def test_the_code_location_does_not_load_with_a_bad_owner_and_says_why(tmp_path: Path) -> None:
    # Run elsewhere: without DAGSTER_HOME, Dagster makes its temporary home in the working folder.
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "hardening_pipeline.definitions"],
        env=clean_environment(PYTHONPATH=str(ROOT), HARDENING_DAGSTER_OWNERS="platform"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "ConfigError: HARDENING_DAGSTER_OWNERS must be comma-separated owners, each an email or "
        "team:<name> like team:platform,oncall@example.com (got 'platform'); fix the variable or "
        "unset it for team:platform." in output
    ), output[-3000:]
    # Dagster itself never got as far as refusing an asset.
    assert "Invalid owner" not in output


ASSETS_HERE = [
    observe_application_tables,
    database_schema,
    nightly_backup,
    backup_retention,
    restore_drill_report,
]


def specs_of(assets: list) -> list[dg.AssetSpec]:
    specs = [spec for asset in assets for spec in asset.specs]
    assert len(specs) >= len(ASSETS_HERE)
    return specs


def test_code_references_link_to_the_repository_when_a_git_url_is_set() -> None:
    settings = load_dagster_catalog_settings(
        {"HARDENING_GIT_URL": "https://github.com/acme/hardening/", "HARDENING_GIT_BRANCH": "prod"}
    )
    link = re.compile(
        r"https://github\.com/acme/hardening/tree/prod/(?P<path>[^#]+)#L(?P<line>\d+)"
    )
    for spec in specs_of(catalog_assets(ASSETS_HERE, settings)):
        [reference] = spec.metadata["dagster/code_references"].code_references
        match = link.fullmatch(reference.url)
        assert match, reference
        # The link names a real file of this repository, at the line that defines the asset.
        source = (ROOT / match["path"]).read_text().splitlines()
        defined = source[int(match["line"]) - 1 :][:3]
        assert any("@dg." in line or "def " in line for line in defined), (reference, defined)


def test_without_a_git_url_code_references_are_local_files() -> None:
    for spec in specs_of(catalog_assets(ASSETS_HERE, DagsterCatalogSettings())):
        [reference] = spec.metadata["dagster/code_references"].code_references
        assert Path(reference.file_path).is_file() and reference.line_number, reference


@pytest.mark.parametrize(
    ("env", "start"),
    [
        ({"HARDENING_GIT_URL": "git@github.com:acme/hardening.git"}, "HARDENING_GIT_URL must"),
        ({"HARDENING_GIT_URL": "https://example.com/acme/hardening"}, "HARDENING_GIT_URL must"),
        ({"HARDENING_GIT_BRANCH": "main; rm -rf"}, "HARDENING_GIT_BRANCH must"),
        # Shown in the UI: a token in the URL would be on every asset page.
        ({"HARDENING_GIT_URL": "https://ci:tok@github.com/acme/h"}, "HARDENING_GIT_URL must"),
        ({"HARDENING_GIT_URL": "https://github.com/acme/h?ref=x"}, "HARDENING_GIT_URL must"),
        ({"HARDENING_GIT_URL": "https://github.com/acme/h#readme"}, "HARDENING_GIT_URL must"),
        ({"HARDENING_GIT_URL": "https://github.com/acme"}, "HARDENING_GIT_URL must"),
        ({"HARDENING_GIT_URL": "https://example.com/github/h"}, "HARDENING_GIT_URL must"),
        ({"HARDENING_GIT_BRANCH": "../main"}, "HARDENING_GIT_BRANCH must"),
        ({"HARDENING_GIT_BRANCH": "-main"}, "HARDENING_GIT_BRANCH must"),
    ],
)
def test_a_bad_git_setting_is_refused_with_one_sentence(env: dict[str, str], start: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_dagster_catalog_settings(env)
    message = str(raised.value)
    assert message.startswith(start) and "\n" not in message and "fix the variable" in message


@pytest.mark.parametrize(
    ("url", "layout"),
    [
        ("https://GitHub.com/acme/hardening", "https://GitHub.com/acme/hardening/tree/main/"),
        (
            "https://github.com/acme/gitlab-mirror",
            "https://github.com/acme/gitlab-mirror/tree/main/",
        ),
        (
            "https://gitlab.example.org/acme/github-tools",
            "https://gitlab.example.org/acme/github-tools/-/tree/main/",
        ),
    ],
    ids=["host-in-capitals", "github-repo-named-gitlab", "gitlab-repo-named-github"],
)
def test_the_link_layout_follows_the_host_not_the_rest_of_the_url(url: str, layout: str) -> None:
    """Left to Dagster, the first fails to load (a traceback) and the second gets GitLab links."""
    settings = load_dagster_catalog_settings({"HARDENING_GIT_URL": url})
    for spec in specs_of(catalog_assets(ASSETS_HERE, settings)):
        [reference] = spec.metadata["dagster/code_references"].code_references
        assert reference.url.startswith(layout), reference


def test_every_asset_of_the_code_location_links_to_its_code() -> None:
    """Including the external `slack_failure_alerts`, linked to the sensor code that records it."""
    from hardening_pipeline.definitions import defs

    graph = defs.get_repository_def().asset_graph
    for key in graph.get_all_asset_keys():
        if key.path[0] == "app":
            continue  # the application's own tables: their code is the app's, not the kit's
        references = graph.get(key).metadata.get("dagster/code_references")
        assert references is not None, key
        [reference] = references.code_references
        assert Path(reference.file_path).is_file() and reference.line_number, reference
