"""The observations from trying the Dagster UI as an on-call engineer (two passes), and their tests.

``OBSERVATIONS`` below is the table: observation number -> (what was observed, the tests that
fail on the code as it was observed and pass now). ``test_every_observation_names_real_tests``
keeps it true: each named test must exist. Browser tests are in ``test_ui_browser.py``
(Chromium against ``dagster dev``); the rest run without a browser.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import dagster_webserver
import pytest
import yaml

from hardening_pipeline.definitions import defs
from hardening_pipeline.defs.backup import nightly_backup

ROOT = Path(__file__).resolve().parents[1]
HERE = "test_ui_observations.py"
OBSERVATIONS: dict[int, tuple[str, list[str]]] = {
    1: (
        "Launchpad secrets pre-filled with '********' broke runs; a bad key blamed the env",
        [
            "test_defs_launchpad.py::test_the_launchpad_masks_secret_fields_so_the_mask_is_what_gets_launched",
            "test_defs_launchpad.py::test_every_job_succeeds_when_launched_as_the_launchpad_shows_it",
            "test_defs_launchpad.py::test_the_mask_falls_back_to_the_environment",
            "test_defs_launchpad.py::test_a_bad_key_in_config_blames_the_config_field_not_the_environment",
            "test_ui_browser.py::test_every_launchpad_opens_ready_to_launch_and_a_launch_runs_what_it_shows",
        ],
    ),
    2: (
        "text in <...> vanished in rendered Markdown (the RLS fix lost its table name)",
        [
            "test_defs_markdown.py::test_no_description_loses_text_in_markdown",
            "test_defs_markdown.py::test_the_red_checklist_names_the_table_and_keeps_every_word",
            "test_ui_browser.py::test_red_checklist_names_the_table_and_its_runbook_link_opens_the_section",
        ],
    ),
    3: (
        "runbook links were relative (a dead asset page) or plain text in check metadata",
        [
            "test_defs_markdown.py::test_runbook_links_are_absolute_urls_or_plain_text",
            "test_ui_browser.py::test_red_checklist_names_the_table_and_its_runbook_link_opens_the_section",
        ],
    ),
    4: (
        "daily backup partitions could never look healthy",
        [
            "test_defs_backup.py::test_backups_are_not_partitioned",
            "test_backup_freshness.py::test_dagster_check_is_blocking_error_and_scheduled_hourly",
        ],
    ),
    5: (
        "a backup passed with rows the restore drill could not load",
        [
            "test_defs_backup.py::test_a_backup_with_rows_the_drill_cannot_load_is_kept_but_fails_with_the_canary",
        ],
    ),
    6: (
        "lineage lacked table -> backup -> drill; no kind, owners or code references",
        [
            "test_defs_snapshot.py::test_lineage_runs_from_the_tables_through_the_backup_to_the_drill",
            "test_defs_snapshot.py::test_every_asset_has_a_kind_and_each_defined_here_a_code_reference",
            "test_defs_catalog.py::test_every_asset_has_the_configured_owners",
            "test_defs_catalog.py::test_code_references_link_to_the_repository_when_a_git_url_is_set",
            "test_webserver.py::test_ui_shows_our_assets_jobs_schedules_and_sensors",
            "test_ui_browser.py::test_lineage_shows_table_to_backup_to_drill",
            "test_ui_browser.py::test_an_asset_page_names_its_owners",
        ],
    ),
    7: (
        "evidence_job and the assets it exercised: it records its own asset only, so their pages "
        "keep the state their own jobs wrote",
        [
            "test_evidence.py::test_dagster_evidence_asset_green_on_a_seeded_database_and_other_assets_keep_their_state"
        ],
    ),
    8: (
        "no job materialized database_schema",
        [
            "test_defs_snapshot.py::test_database_schema_has_a_job",
            "test_ui_browser.py::test_every_launchpad_opens_ready_to_launch_and_a_launch_runs_what_it_shows",
        ],
    ),
    9: (
        "failures began with 'dagster._core...Failure:', chained six tracebacks, or said only "
        "DagsterAssetCheckFailedError",
        [
            "test_defs_failure_messages.py::test_a_broken_canary_fails_the_run_with_its_own_sentence",
            "test_defs_failure_messages.py::test_a_backup_that_cannot_start_says_why_in_one_sentence",
            "test_defs_failure_messages.py::test_a_store_failure_reads_as_one_sentence_without_chained_tracebacks",
            "test_defs_failure_messages.py::test_under_the_sentence_dagster_still_records_its_own_frames_down_to_the_raising_line",
            "test_ui_browser.py::test_a_broken_canary_fails_its_run_with_the_canary_sentence_first",
        ],
    ),
    10: (
        "a failed drill showed nothing on its asset page; rto_seconds read 0.1",
        [
            "test_defs_restore.py::test_red_drill_fails_the_run_and_still_reports",
            "test_defs_restore.py::test_green_drill_materializes_with_report_and_slack",
        ],
    ),
    11: (
        "canary checks' Execute was disabled; app/messages showed 'Never materialized'",
        [
            "test_defs_checks.py::test_one_canary_runs_on_its_own_so_its_execute_button_works",
            "test_defs_checks.py::test_the_canary_run_observes_each_table",
            "test_ui_browser.py::test_a_broken_canary_fails_its_run_with_the_canary_sentence_first",
        ],
    ),
    12: (
        "the failure sensor stalled on one undelivered alert, hid it in tick logs, and linked "
        "to port 3000 whatever the port",
        [
            "test_defs_backup.py::test_one_undelivered_alert_never_holds_back_the_others",
            "test_defs_backup.py::test_the_pending_check_reads_the_sensor_state",
            "test_defs_backup.py::test_each_tick_says_what_it_did",
            "test_defs_backup.py::test_failed_run_is_alerted_once_with_job_step_error_and_link",
            f"{HERE}::test_compose_run_links_follow_the_published_port",
        ],
    ),
    13: (
        "sentinels (first_bad_id 0, backup age -1), raw byte counts, relative report paths",
        [
            "test_audit_seals.py::test_the_asset_seals_and_checks_the_chain",
            "test_backup_freshness.py::test_dagster_check_is_blocking_error_and_scheduled_hourly",
            "test_defs_backup.py::test_materialize_backup_then_retention",
            "test_defs_checks.py::test_status_report_asset",
            "test_defs_restore.py::test_red_drill_fails_the_run_and_still_reports",
        ],
    ),
    14: (
        "'task-list item A-G' and 'safe horizon'; retention's 'why' one word per line; "
        "'Partition set: None'",
        [
            f"{HERE}::test_no_description_an_operator_reads_uses_jargon",
            "test_defs_backup.py::test_materialize_backup_then_retention",
            f"{HERE}::test_partition_set_none_is_dagster_s_own_text",
        ],
    ),
    15: (
        "the backup said store errors may be retried, and no retry policy existed",
        [
            f"{HERE}::test_the_backup_promises_only_the_retries_that_exist",
            "test_backup_store.py::test_a_flaky_part_is_retried_by_botocore_and_the_object_is_whole",
        ],
    ),
}
# The second on-call pass: observation -> the tests that failed on the code as observed.
ON_CALL_OBSERVATIONS: dict[int, tuple[str, list[str]]] = {
    1: (
        "a tampered seal read as DagsterAssetCheckFailedError and alerted every minute",
        [
            "test_ui_browser.py::test_a_tampered_seal_alerts_once_with_the_first_bad_id_then_resolves",
            "test_audit_seals.py::test_the_sensor_seals_in_its_tick_alerts_a_broken_chain_once_then_resolved",
            "test_audit_seals.py::test_the_asset_seals_and_checks_the_chain",
            "test_defs_backup.py::test_the_same_failure_run_after_run_alerts_once_then_resolves",
            "test_defs_backup.py::test_an_incident_that_lasts_is_reminded_not_repeated",
        ],
    ),
    2: (
        "sealing every minute added 1,440 runs a day and failed before the schema existed",
        [
            "test_audit_seals.py::test_a_day_of_sealing_adds_no_runs",
            "test_audit_seals.py::test_before_the_schema_exists_the_sensor_waits_and_names_the_job",
        ],
    ),
    3: (
        "Observe on an app/* table page raised DagsterInvalidSubsetError",
        [
            "test_defs_checks.py::test_observe_on_one_application_table_page_observes_that_table_only"
        ],
    ),
    4: (
        "evidence_job overwrote the state of the assets it exercised",
        [
            "test_evidence.py::test_dagster_evidence_asset_green_on_a_seeded_database_and_other_assets_keep_their_state"
        ],
    ),
    5: (
        "one failed backup turned backup_is_fresh red with 'Execution failed'",
        [
            "test_defs_backup.py::test_a_failed_backup_run_leaves_backup_is_fresh_as_the_last_check_left_it"
        ],
    ),
    6: (
        "a backup-store failure carried no runbook link",
        [
            "test_defs_backup.py::test_a_backup_store_failure_carries_the_runbook_link_in_the_ui_and_in_slack"
        ],
    ),
    7: (
        "a red status check said only its name, and its run was green",
        [
            "test_defs_checks.py::test_status_report_asset",
            "test_ui_browser.py::test_red_checklist_names_the_table_and_its_runbook_link_opens_the_section",
        ],
    ),
    8: (
        "a drill failure did not name the failing test",
        ["test_drill_checks.py::test_a_red_drill_names_what_failed"],
    ),
    9: (
        "each incident sent two Slack messages",
        [
            "test_defs_backup.py::test_a_run_its_own_job_already_alerted_gets_no_second_message",
            "test_defs_checks.py::test_canary_job_reports_each_canary_on_its_table",
            "test_defs_failure_messages.py::test_a_broken_canary_fails_the_run_with_its_own_sentence",
        ],
    ),
    10: (
        "the pending-alert age went stale and showed URLError",
        [
            "test_defs_backup.py::test_an_unreachable_slack_reads_as_a_sentence_and_the_pending_age_keeps_moving"
        ],
    ),
    11: (
        "seal_chain_intact ignored HARDENING_RUNBOOK_URL",
        ["test_audit_seals.py::test_the_seal_check_links_the_published_runbook"],
    ),
    12: (
        "small things: empty error row, blank digest, RST markup, no code link, emoji only",
        [
            "test_defs_checks.py::test_canary_job_reports_each_canary_on_its_table",
            "test_audit_seals.py::test_the_asset_seals_and_checks_the_chain",
            "test_defs_resources.py::test_the_launchpad_config_docs_have_no_rst_markup",
            "test_defs_catalog.py::test_every_asset_of_the_code_location_links_to_its_code",
            "test_status_check.py::test_report_files_are_timestamped_markdown_and_json",
        ],
    ),
}
JARGON = re.compile(r"task[- ]list|\bitems? [A-G]\b|\bA ?[-–] ?G\b|safe horizon", re.IGNORECASE)


@pytest.mark.parametrize(
    ("table", "count"), [(OBSERVATIONS, 15), (ON_CALL_OBSERVATIONS, 12)], ids=["first", "on-call"]
)
def test_every_observation_names_real_tests(table, count) -> None:
    assert sorted(table) == list(range(1, count + 1))
    for number, (_, tests) in table.items():
        assert tests, number
        for test in tests:
            file, name = test.split("::")
            source = (ROOT / "tests" / file).read_text()
            assert re.search(rf"^def {name}\(", source, re.MULTILINE), (number, test)


@pytest.fixture(scope="module")
def repo() -> dg.RepositoryDefinition:
    return defs.get_repository_def()


def operator_texts(repo: dg.RepositoryDefinition) -> dict[str, str]:
    """Every description the UI shows: assets, checks, jobs, schedules, sensors."""
    texts = {}
    graph = repo.asset_graph
    for key in graph.get_all_asset_keys():
        texts[f"asset {key.to_user_string()}"] = graph.get(key).description or ""
    for check_key in graph.asset_check_keys:
        spec = graph.get_check_spec(check_key)
        texts[f"check {check_key.name}"] = spec.description or ""
    for job in repo.get_all_jobs():
        if job.name.startswith("__"):  # Dagster's implicit asset job, not shown as a job
            continue
        texts[f"job {job.name}"] = job.description or ""
    for schedule in repo.schedule_defs:
        texts[f"schedule {schedule.name}"] = schedule.description or ""
    for sensor in repo.sensor_defs:
        texts[f"sensor {sensor.name}"] = sensor.description or ""
    return texts


def test_no_description_an_operator_reads_uses_jargon(repo: dg.RepositoryDefinition) -> None:
    texts = operator_texts(repo)
    assert len(texts) > 30 and all(texts.values())
    # The detector itself: each phrase the UI once showed is caught.
    for phrase in ("task-list item A-G", "up to the safe horizon", "items A–G", "item B"):
        assert JARGON.search(phrase), phrase
    assert {
        where: JARGON.search(text)[0] for where, text in texts.items() if JARGON.search(text)
    } == {}


def test_partition_set_none_is_dagster_s_own_text(repo: dg.RepositoryDefinition) -> None:
    """A schedule page's "Partition set" row is printed for every schedule; an unpartitioned job
    gets the literal ``"None"`` (dagster-webserver's bundle, below). The README says so."""
    build = Path(dagster_webserver.__file__).parent / "webapp" / "build"
    row = re.compile(r'"td",\{children:"Partition set"\}\),[^;]{0,120}?:"None"\}')
    bundles = [p.name for p in build.rglob("*.js") if row.search(p.read_text(errors="ignore"))]
    assert bundles, "dagster-webserver no longer hard-codes the row: drop the README note"
    # None of our schedules targets a partitioned job, so every one of them shows "None".
    for schedule in repo.schedule_defs:
        assert repo.get_job(schedule.job_name).partitions_def is None, schedule.name


def test_the_backup_promises_only_the_retries_that_exist(repo: dg.RepositoryDefinition) -> None:
    description = repo.asset_graph.get(nightly_backup.key).description
    assert "may be retried" not in description
    # What it does promise: S3 requests retried inside the run (test_backup_store.py proves
    # it) and a failed run not relaunched, which holds only while nothing relaunches it.
    assert "S3 errors are retried request by request inside the run" in description
    assert "a failed run is not relaunched" in description
    job = repo.get_job("nightly_backup_job")
    assert all(node.definition.retry_policy is None for node in job.nodes)
    assert job.op_retry_policy is None
    assert not {t for t in job.tags if t.startswith("dagster/") and "retr" in t}
    for config in (ROOT / "dagster.yaml", ROOT / "deploy" / "dagster.yaml"):
        run_retries = yaml.safe_load(config.read_text()).get("run_retries", {})
        assert run_retries.get("retry_on_asset_or_op_failure") is False, config


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}``, nested, innermost first."""
    inner = re.compile(r"\$\{([A-Z_]+):-([^${}]*)\}")
    while inner.search(text):
        text = inner.sub(lambda m: env.get(m[1]) or m[2], text)
    return text


@pytest.mark.parametrize("port", [None, "3123"])
def test_compose_run_links_follow_the_published_port(port: str | None) -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    env = {"DAGSTER_WEBSERVER_PORT": port} if port else {}
    link_base = interpolate(services["user_code"]["environment"]["DAGSTER_WEBSERVER_URL"], env)
    [published] = [interpolate(p, env) for p in services["webserver"]["ports"]]
    host_port = published.split(":")[-2]
    assert host_port == (port or "3000")
    assert link_base == f"http://localhost:{host_port}"
