"""Text the Dagster UI renders as Markdown keeps its ``<...>`` parts, and runbook links lead to
the runbook.

Dagster renders descriptions and Markdown metadata as Markdown with inline HTML, where
``<table>`` is a tag and disappears. These tests find every ``<word>`` outside a code span,
which is what the UI would drop.
"""

import re

import dagster as dg
import pytest

from hardening_pipeline.definitions import defs
from hardening_pipeline.defs.failures import runbook_metadata
from hardening_pipeline.defs.resources import AppDatabaseResource, SlackAlertsResource
from hardening_pipeline.defs.status import hardening_status_report
from hardening_pipeline.hardening.report import checklist_markdown
from hardening_pipeline.hardening.status import run_status_check
from tests.support.db import admin_connect

CODE_SPAN = re.compile(r"`[^`]*`")
HTML_LOOKING = re.compile(r"<[A-Za-z/][^>]*>")


def vanishing_tags(markdown: str) -> list[str]:
    """The ``<...>`` bits a Markdown renderer would treat as HTML (and so not show)."""
    without_code = CODE_SPAN.sub("", re.sub(r"```.*?```", "", markdown, flags=re.S))
    return HTML_LOOKING.findall(without_code)


def test_the_detector_sees_what_would_vanish() -> None:
    assert vanishing_tags("ALTER TABLE public.<table> ENABLE") == ["<table>"]
    assert vanishing_tags("writes `status-<UTC>.md`") == []


def descriptions() -> list[tuple[str, str]]:
    repo = defs.get_repository_def()
    found = []
    for key in repo.asset_graph.get_all_asset_keys():
        node = repo.asset_graph.get(key)
        found.append((key.to_user_string(), node.description or ""))
    for check_key in repo.asset_graph.asset_check_keys:
        spec = repo.asset_graph.get_check_spec(check_key)
        found.append((check_key.to_user_string(), spec.description or ""))
    for job in repo.get_all_jobs():
        found.append((job.name, job.description or ""))
    for item in [*repo.schedule_defs, *repo.sensor_defs]:
        found.append((item.name, item.description or ""))
    # Sorted: the repository's sets come in any order, and parallel workers must collect the
    # same list.
    return sorted(found)


@pytest.mark.parametrize("name,description", [pytest.param(n, d, id=n) for n, d in descriptions()])
def test_no_description_loses_text_in_markdown(name: str, description: str) -> None:
    assert vanishing_tags(description) == []


def test_the_red_checklist_names_the_table_and_keeps_every_word(db_url: str) -> None:
    with admin_connect(db_url) as conn:
        conn.execute("ALTER TABLE messages DISABLE ROW LEVEL SECURITY")
        conn.commit()
    report = run_status_check(db_url)
    markdown = checklist_markdown(report)
    assert vanishing_tags(markdown) == []
    [red] = [line for line in markdown.splitlines() if "`rls_tenant_tables`" in line]
    assert "ALTER TABLE public.messages ENABLE ROW LEVEL SECURITY;" in red


def test_runbook_links_are_absolute_urls_or_plain_text(db_url: str, tmp_path, monkeypatch) -> None:
    published = "https://runbook.example.com/hardening/runbook.html"
    link = runbook_metadata("canary-orphaned-messages", published)
    assert isinstance(link, dg.UrlMetadataValue)
    assert link.value == f"{published}#canary-orphaned-messages"
    # Unpublished: the path as text, never a relative link the UI would open as a Dagster page.
    assert isinstance(runbook_metadata("canary-orphaned-messages", None), dg.TextMetadataValue)
    with admin_connect(db_url) as conn:
        conn.execute("ALTER TABLE messages DISABLE ROW LEVEL SECURITY")
        conn.commit()
    report = run_status_check(db_url)
    assert "](docs/" not in checklist_markdown(report)
    assert f"]({published}#status-" in checklist_markdown(report, runbook_base_url=published)

    monkeypatch.setenv("HARDENING_RUNBOOK_URL", published)
    monkeypatch.setenv("HARDENING_REPORTS_DIR", str(tmp_path))
    result = dg.materialize(
        [hardening_status_report],
        resources={
            "app_db": AppDatabaseResource(database_url=db_url),
            "slack": SlackAlertsResource(webhook_url="", max_retries=0),
        },
        raise_on_error=False,
    )
    [materialization] = result.asset_materializations_for_node("hardening_status_report")
    checklist = materialization.metadata["checklist"].value
    links = re.findall(r"\]\(([^)]+)\)", checklist)
    assert links and all(link.startswith(f"{published}#status-") for link in links)
