"""The workflows hold the backup keys, so they must pass zizmor's audit, pin what they run, give
each secret only to the steps that use it, and leave the schedules to one scheduler."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"
USES = re.compile(r"^\s*-?\s*uses:\s*(?P<ref>\S+)(?P<comment>.*)$")


def _zizmor() -> str:
    found = shutil.which("zizmor") or str(Path(sys.executable).with_name("zizmor"))
    if not Path(found).exists():
        pytest.fail("zizmor is not installed; install requirements-dev.lock (README)")
    return found


def test_zizmor_offline_finds_nothing() -> None:
    result = subprocess.run(
        [_zizmor(), "--offline", "--no-progress", str(WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_commit_with_its_version_named() -> None:
    uses = [
        (path.name, match)
        for path in sorted(WORKFLOWS.glob("*.yml"))
        for line in path.read_text().splitlines()
        if (match := USES.match(line))
    ]
    assert uses, "no workflow step uses an action; the pattern above is out of date"
    for name, match in uses:
        ref = match["ref"]
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{name}: {ref} is not a SHA"
        assert re.search(r"#\s*v\d+\.\d+\.\d+", match["comment"]), f"{name}: {ref} names no version"


def test_checkout_never_persists_credentials() -> None:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        text = path.read_text()
        checkouts = text.count("uses: actions/checkout@")
        assert text.count("persist-credentials: false") == checkouts, path.name


# --- secrets reach only the steps that use them ---------------------------------------------------
#
# A step USES an environment variable when its `run` script names it (`$NAME` or `${NAME}`) or
# runs a `hardening` command that reads it: COMMAND_READS below, from settings.py and what each
# command does with the settings. A secret may be set only in a step's own `env`, never for a
# job or the whole workflow (then `pip install` and every action would see it), and only on a
# step that uses it. A step running a `hardening` command must also get every variable that
# command reads, or it would silently run on a default (the embedded database, AWS, no alerts).

STORE = {
    "BACKUP_STORE_URL",
    "BACKUP_S3_ENDPOINT_URL",
    "BACKUP_S3_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
COMMAND_READS = {
    # Encrypts with the current key only; names the runbook in its failure sentence.
    "backup": STORE
    | {
        "HARDENING_DATABASE_URL",
        "BACKUP_ENCRYPTION_KEY",
        "HARDENING_RUNBOOK_URL",
        "BACKUP_SCHEMAS",
        "HARDENING_PG_DUMP",
    },
    # Verifies every manifest (older keys too) before deleting; never connects to the database.
    "retention": STORE | {"BACKUP_ENCRYPTION_KEY", "BACKUP_ENCRYPTION_KEYS_PREVIOUS"},
    # Decrypts any backup; the database URL only makes a missing key an error; alerts Slack.
    "restore-drill": STORE
    | {
        "HARDENING_DATABASE_URL",
        "BACKUP_ENCRYPTION_KEY",
        "BACKUP_ENCRYPTION_KEYS_PREVIOUS",
        "SLACK_WEBHOOK_URL",
        "HARDENING_RUNBOOK_URL",
    },
    # --backup-freshness verifies the newest manifest; red lines go to Slack.
    "status": STORE
    | {
        "HARDENING_DATABASE_URL",
        "BACKUP_ENCRYPTION_KEY",
        "BACKUP_ENCRYPTION_KEYS_PREVIOUS",
        "SLACK_WEBHOOK_URL",
        "HARDENING_RUNBOOK_URL",
    },
}
SECRET = re.compile(r"\$\{\{\s*secrets\.")
CONTEXT_VALUE = re.compile(r"^\$\{\{\s*(secrets|vars)\.(\w+)\s*\}\}$")
HARDENING_COMMAND = re.compile(r"(?:^|[;&|]\s*|\n\s*)hardening\s+(?:-v\s+)?([a-z-]+)")


def load_workflows() -> dict[str, dict[str, Any]]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(WORKFLOWS.glob("*.yml"))}


def hardening_commands(script: str) -> set[str]:
    return set(HARDENING_COMMAND.findall(script))


def names_variable(script: str, name: str) -> bool:
    return re.search(rf"\$(\{{{name}\}}|{name}\b)", script) is not None


def secret_misuse(name: str, workflow: dict[str, Any]) -> list[str]:
    """Every place `workflow` hands a secret to something that does not use it."""
    found = []
    if SECRET.search(yaml.safe_dump(workflow.get("env", {}))):
        found.append(f"{name}: a secret in the workflow's env reaches every step")
    for job_name, job in workflow["jobs"].items():
        if SECRET.search(yaml.safe_dump(job.get("env", {}))):
            found.append(f"{name} {job_name}: a secret in the job's env reaches every step")
        for index, step in enumerate(job.get("steps", [])):
            where = f"{name} {job_name} step {step.get('name', index)}"
            outside_env = {key: value for key, value in step.items() if key != "env"}
            if SECRET.search(yaml.safe_dump(outside_env)):
                found.append(f"{where}: a secret outside the step's env")
            script = step.get("run", "")
            commands = hardening_commands(script)
            unknown = commands - COMMAND_READS.keys()
            if unknown:
                found.append(f"{where}: add hardening {sorted(unknown)} to COMMAND_READS")
            read = set().union(*(COMMAND_READS.get(c, set()) for c in commands))
            given = {}
            for variable, value in (step.get("env") or {}).items():
                match = CONTEXT_VALUE.match(str(value).strip())
                if SECRET.search(str(value)) and not match:
                    found.append(f"{where}: {variable} mixes a secret into a longer value")
                if match:
                    given[variable] = match[1]
                if (
                    match
                    and match[1] == "secrets"
                    and not (variable in read or names_variable(script, variable))
                ):
                    found.append(f"{where}: {variable} is a secret the step does not use")
            for variable in sorted(read - given.keys()):
                found.append(f"{where}: runs hardening {sorted(commands)} without {variable}")
    return found


def test_every_secret_reaches_only_the_steps_that_use_it() -> None:
    workflows = load_workflows()
    assert {"nightly-backup.yml", "monthly-restore-drill.yml", "backup-freshness.yml"} <= set(
        workflows
    )
    found = [p for name, workflow in workflows.items() for p in secret_misuse(name, workflow)]
    assert found == []


def _step(workflow: dict[str, Any], job: str, step_name: str) -> dict[str, Any]:
    (step,) = [s for s in workflow["jobs"][job]["steps"] if s.get("name") == step_name]
    return step


def test_the_secret_check_catches_a_secret_given_to_a_step_that_does_not_use_it() -> None:
    workflows = load_workflows()
    original = workflows["nightly-backup.yml"]

    install_sees_key = copy.deepcopy(original)
    _step(install_sees_key, "backup", "Install")["env"] = {
        "AWS_SECRET_ACCESS_KEY": "${{ secrets.AWS_SECRET_ACCESS_KEY }}"
    }
    assert secret_misuse("copy", install_sees_key) == [
        "copy backup step Install: AWS_SECRET_ACCESS_KEY is a secret the step does not use"
    ]

    retention_sees_database = copy.deepcopy(original)
    _step(retention_sees_database, "backup", "Apply retention")["env"]["HARDENING_DATABASE_URL"] = (
        "${{ secrets.HARDENING_DATABASE_URL }}"
    )
    assert secret_misuse("copy", retention_sees_database) == [
        "copy backup step Apply retention: HARDENING_DATABASE_URL is a secret the step does not use"
    ]

    job_wide = copy.deepcopy(original)
    job_wide["jobs"]["backup"]["env"] = {
        "BACKUP_ENCRYPTION_KEY": "${{ secrets.BACKUP_ENCRYPTION_KEY }}"
    }
    assert secret_misuse("copy", job_wide) == [
        "copy backup: a secret in the job's env reaches every step"
    ]

    schemas_unwired = copy.deepcopy(original)
    del _step(schemas_unwired, "backup", "Back up")["env"]["BACKUP_SCHEMAS"]
    assert secret_misuse("copy", schemas_unwired) == [
        "copy backup step Back up: runs hardening ['backup'] without BACKUP_SCHEMAS"
    ]

    # The alert step names SLACK_WEBHOOK_URL in its script: that is a use.
    assert names_variable(
        _step(original, "backup", "Tell Slack the nightly backup failed")["run"],
        "SLACK_WEBHOOK_URL",
    )


def test_the_backup_step_takes_schemas_and_pg_dump_from_repository_variables() -> None:
    backup = _step(load_workflows()["nightly-backup.yml"], "backup", "Back up")
    assert backup["env"]["BACKUP_SCHEMAS"] == "${{ vars.BACKUP_SCHEMAS }}"
    assert backup["env"]["HARDENING_PG_DUMP"] == "${{ vars.HARDENING_PG_DUMP }}"


def test_every_repository_variable_is_explained_in_the_header() -> None:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        text = path.read_text()
        header = text.split("\nname:", 1)[0]
        for variable in set(re.findall(r"vars\.(\w+)", text)):
            assert re.search(rf"\b{variable}\b", header), f"{path.name}: {variable}"


# --- one scheduler --------------------------------------------------------------------------------
#
# HARDENING_SCHEDULER (a repository variable) says who runs the schedules. Unset (the default)
# or anything else: Dagster, and the workflows' scheduled runs only say they did nothing.
# `github`: the workflows. `dagster`: Dagster, watched from outside by backup-freshness.
# A manual run (workflow_dispatch) always does the work.

RUNS_ON_SCHEDULE_WHEN = {
    "nightly-backup.yml": {"github"},
    "monthly-restore-drill.yml": {"github"},
    "backup-freshness.yml": {"github", "dagster"},
}
EXPRESSION_TOKEN = re.compile(
    r"\s*(?:(?P<op>\|\||&&|==|!=|!|\(|\))|'(?P<string>[^']*)'|(?P<name>[A-Za-z_][\w.-]*))"
)


def evaluate(expression: str, context: dict[str, str]) -> bool:
    """GitHub's expression syntax, as far as the workflows' `if:` use it: names, '...' strings,
    ==, !=, !, &&, || and parentheses. A name not in `context` is '' (an unset variable)."""
    python = []
    position = 0
    while position < len(expression.rstrip()):
        token = EXPRESSION_TOKEN.match(expression, position)
        assert token, f"cannot read {expression[position:]!r}"
        position = token.end()
        if token["op"]:
            python.append({"||": " or ", "&&": " and ", "!": " not "}.get(token["op"], token["op"]))
        elif token["string"] is not None:
            python.append(repr(token["string"]))
        else:
            python.append(repr(context.get(token["name"], "")))
    # Every token was read above and rewritten as a Python literal or operator: nothing else runs.
    return bool(eval("".join(python), {"__builtins__": {}}))


def jobs_that_run(workflow: dict[str, Any], event: str, scheduler: str | None) -> set[str]:
    context = {"github.event_name": event}
    if scheduler is not None:
        context["vars.HARDENING_SCHEDULER"] = scheduler
    return {
        name
        for name, job in workflow["jobs"].items()
        if "if" not in job or evaluate(str(job["if"]), context)
    }


@pytest.mark.parametrize("name", sorted(RUNS_ON_SCHEDULE_WHEN))
def test_scheduled_runs_follow_hardening_scheduler(name: str) -> None:
    workflow = load_workflows()[name]
    # YAML 1.1 reads the key `on` as True.
    assert "schedule" in workflow[True] and "workflow_dispatch" in workflow[True]
    (notice,) = [
        n
        for n, job in workflow["jobs"].items()
        if "steps" in job
        and len(job["steps"]) == 1
        and "::notice" in job["steps"][0].get("run", "")
    ]
    work = set(workflow["jobs"]) - {notice}
    for scheduler in (None, "", "github", "dagster", "GitHub", "both"):
        running = jobs_that_run(workflow, "schedule", scheduler)
        expected = work if scheduler in RUNS_ON_SCHEDULE_WHEN[name] else {notice}
        assert running == expected, (scheduler, running)
        # A manual run always does the work and never says it was skipped.
        assert jobs_that_run(workflow, "workflow_dispatch", scheduler) == work, scheduler


def test_the_schedule_evaluator_reads_what_it_is_given() -> None:
    context = {"github.event_name": "schedule", "vars.X": "a"}
    for expression, expected in [
        ("github.event_name == 'schedule'", True),
        ("github.event_name != 'schedule' || vars.X == 'a'", True),
        ("github.event_name == 'schedule' && vars.X != 'a'", False),
        ("!(vars.Y == '')", False),
        ("vars.Y == '' && (vars.X == 'b' || vars.X == 'a')", True),
    ]:
        assert evaluate(expression, context) is expected, expression
