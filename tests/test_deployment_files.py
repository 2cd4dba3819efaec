"""Static checks of the deployment files: compose, Dockerfile, dagster.yaml, workspaces, workflows.

No Docker engine is available where these run, so nothing is started; instead every file is parsed
and cross-checked against the others and against the installed Dagster's own config schemas. These
are the mistakes that otherwise surface only at 02:00 on a server: a variable compose substitutes
with nothing, a COPY of a file that moved, a dagster.yaml key Dagster rejects, a secret a workflow
uses but nobody was told to set.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.dockerfile import Stage, stages

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DAGSTER_YAML = ROOT / "dagster.yaml"
DEPLOY_DAGSTER_YAML = ROOT / "deploy" / "dagster.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
WORKSPACE = ROOT / "workspace.yaml"
DOCKER_WORKSPACE = ROOT / "deploy" / "workspace.docker.yaml"
WORKFLOWS = ROOT / ".github" / "workflows"

YAML_FILES = [
    COMPOSE,
    DAGSTER_YAML,
    DEPLOY_DAGSTER_YAML,
    WORKSPACE,
    DOCKER_WORKSPACE,
    WORKFLOWS / "nightly-backup.yml",
    WORKFLOWS / "monthly-restore-drill.yml",
    WORKFLOWS / "ci.yml",
]

# The environment contract (DESIGN.md): every one is documented in .env.example and, for the
# scheduled workflows, in their header comments.
DESIGN_ENV_VARS = [
    "HARDENING_DATABASE_URL",
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_ENCRYPTION_KEYS_PREVIOUS",
    "BACKUP_STORE_URL",
    "BACKUP_S3_ENDPOINT_URL",
    "BACKUP_S3_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SLACK_WEBHOOK_URL",
    "HARDENING_REPORTS_DIR",
]
WORKFLOW_ENV_VARS = [v for v in DESIGN_ENV_VARS if v != "HARDENING_REPORTS_DIR"]
DAGSTER_PG_VARS = [
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
]
DAGSTER_SERVICES = ("user_code", "webserver", "daemon")

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
COMPOSE_VAR = re.compile(
    r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def resolve_defaults(text: str) -> str:
    """Substitute ``${VAR:-default}`` with its default, as compose does with an empty .env."""
    return COMPOSE_VAR.sub(lambda m: m.group("arg") if m.group("op") in ("-", ":-") else "", text)


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# --- every file parses --------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    assert isinstance(load_yaml(path), dict)


# --- docker-compose.yml -------------------------------------------------------------------------


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("app_postgres", "dagster_postgres", "s3", "user_code", "webserver", "daemon"):
        assert name in services, f"compose lacks the {name} service"
    assert services["app_postgres"]["image"].startswith("postgres:")
    assert services["dagster_postgres"]["image"].startswith("postgres:")
    assert services["user_code"]["command"] == [
        *"dagster code-server start -m hardening_pipeline.definitions".split(),
        *"-h 0.0.0.0 -p 4000".split(),
    ]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]


def test_s3_image_is_maintained_and_pinned(compose: dict[str, Any]) -> None:
    image = compose["services"]["s3"]["image"]
    assert not image.startswith("minio/"), "MinIO's Docker Hub image is gone"
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest", f"pin the S3 server image, got {image!r}"


def test_the_application_and_dagster_databases_are_separate(compose: dict[str, Any]) -> None:
    services = compose["services"]
    app_volumes = set(services["app_postgres"].get("volumes", []))
    dagster_volumes = set(services["dagster_postgres"].get("volumes", []))
    assert not app_volumes & dagster_volumes
    env = environment_of(services["user_code"])
    assert "@app_postgres:" in env["HARDENING_DATABASE_URL"]
    assert env["DAGSTER_PG_HOST"] == "dagster_postgres"


def test_every_compose_variable_is_documented(
    compose: dict[str, Any], env_example_names: set[str]
) -> None:
    used = {m.group("name"): m.group("op") for m in COMPOSE_VAR.finditer(COMPOSE.read_text())}
    assert used, "expected compose to read settings from the environment"
    undocumented = sorted(set(used) - env_example_names)
    assert not undocumented, f"add these to .env.example: {undocumented}"
    # Without a default or a :? message, compose silently substitutes an empty string.
    silent = sorted(name for name, op in used.items() if op is None)
    assert not silent, f"give these a default or a ${{VAR:?message}}: {silent}"


def test_published_ports_are_unique_and_local(compose: dict[str, Any]) -> None:
    host_ports: list[str] = []
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            parts = resolve_defaults(str(mapping)).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", (
                f"{name} publishes {mapping!r}; bind it to 127.0.0.1"
            )
            host_ports.append(parts[1])
    assert host_ports, "the UI must be published"
    assert len(host_ports) == len(set(host_ports)), f"duplicate host ports: {host_ports}"
    assert "3000" in host_ports


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if not source.startswith((".", "/", "~")):
                used.add(source)
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"
    assert declared <= used, f"declared but unused volumes: {sorted(declared - used)}"


def test_dagster_processes_get_the_storage_variables(compose: dict[str, Any]) -> None:
    referenced = set(re.findall(r"\{env: *([A-Z_]+)\}", DEPLOY_DAGSTER_YAML.read_text()))
    assert referenced == set(DAGSTER_PG_VARS)
    (home,) = set(
        re.findall(r"DAGSTER_HOME=(\S+)", " ".join(sum(final_stage().args_of("ENV"), [])))
    )
    for name in DAGSTER_SERVICES:
        env = environment_of(compose["services"][name])
        missing = sorted(referenced - set(env))
        assert not missing, f"{name} lacks {missing}, which deploy/dagster.yaml reads"
        assert env["DAGSTER_HOME"] == home, f"{name} must read the image's instance config"


def test_compose_storage_credentials_match_the_storage_database(compose: dict[str, Any]) -> None:
    db_env = environment_of(compose["services"]["dagster_postgres"])
    for name in DAGSTER_SERVICES:
        env = environment_of(compose["services"][name])
        assert env["DAGSTER_PG_USER"] == db_env["POSTGRES_USER"]
        assert env["DAGSTER_PG_PASSWORD"] == db_env["POSTGRES_PASSWORD"]
        assert env["DAGSTER_PG_DB"] == db_env["POSTGRES_DB"]


def test_only_the_code_location_holds_application_secrets(compose: dict[str, Any]) -> None:
    # Webserver and daemon reach user code over gRPC; they never need the key or the database.
    for name in ("webserver", "daemon"):
        env = environment_of(compose["services"][name])
        assert not {
            "BACKUP_ENCRYPTION_KEY",
            "HARDENING_DATABASE_URL",
            "AWS_SECRET_ACCESS_KEY",
        } & set(env)
    env = environment_of(compose["services"]["user_code"])
    assert env["BACKUP_ENCRYPTION_KEY"].startswith("${BACKUP_ENCRYPTION_KEY:?")
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"


def test_services_wait_for_what_they_need(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert services["user_code"]["depends_on"]["app_postgres"]["condition"] == "service_healthy"
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["user_code"]["condition"] == "service_healthy"


def test_workspace_used_by_compose_points_at_the_code_server(compose: dict[str, Any]) -> None:
    for name in ("webserver", "daemon"):
        command = compose["services"][name]["command"]
        workspace = command[command.index("-w") + 1]
        assert (ROOT / workspace).resolve() == DOCKER_WORKSPACE
    (entry,) = load_yaml(DOCKER_WORKSPACE)["load_from"]
    user_code = compose["services"]["user_code"]
    assert entry["grpc_server"]["host"] in compose["services"]
    assert entry["grpc_server"]["host"] == "user_code"
    assert str(entry["grpc_server"]["port"]) == user_code["command"][-1]


# --- Dockerfile ---------------------------------------------------------------------------------


def final_stage() -> Stage:
    return stages(DOCKERFILE)[-1]


def build_stage() -> Stage:
    (stage,) = stages(DOCKERFILE)[:-1]
    return stage


def test_dockerfile_copies_only_files_that_exist() -> None:
    copies = [c for stage in stages(DOCKERFILE) for c in stage.copies()]
    assert copies
    for origin, sources, _destination in copies:
        if origin is not None:
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_dockerfile_builds_the_wheel_from_the_package_and_its_sql() -> None:
    build = build_stage()
    assert build.name and build.base == "python:3.11-slim"
    sources = {s.rstrip("/") for origin, srcs, _ in build.copies() for s in srcs}
    # hardening_pipeline/sql links to ../sql: without sql/ in the stage the wheel has no SQL.
    assert {"pyproject.toml", "hardening_pipeline", "sql"} <= sources
    assert "tests" not in sources
    (run,) = build.args_of("RUN")
    assert run[:2] == ["pip", "wheel"] and "--no-deps" in run and run[-1] == "."


def test_image_installs_the_built_wheel_without_dev_extra_or_tests() -> None:
    build, final = build_stage(), final_stage()
    assert final.base == "python:3.11-slim"
    wheel_run = build.args_of("RUN")[0]
    wheel_dir = wheel_run[wheel_run.index("--wheel-dir") + 1]
    from_build = [(srcs, dest) for origin, srcs, dest in final.copies() if origin == build.name]
    assert from_build == [([f"{wheel_dir}/"], "/tmp/wheels/")]
    installs = [" ".join(args) for args in final.args_of("RUN") if "pip install" in " ".join(args)]
    assert installs == [
        "pip install --require-hashes -r /tmp/requirements.lock"
        " && pip install --no-deps /tmp/wheels/hardening_pipeline-*.whl"
        " && rm -rf /tmp/wheels /tmp/requirements.lock"
    ]
    everything = " ".join(" ".join(a) for s in stages(DOCKERFILE) for _, a in s.instructions)
    assert "[dev]" not in everything and "pip install -e" not in everything
    local_sources = {
        s.rstrip("/") for origin, srcs, _ in final.copies() if origin is None for s in srcs
    }
    assert not any(s == "tests" or s.startswith("tests/") for s in local_sources)
    assert (None, ["requirements.lock"], "/tmp/requirements.lock") in final.copies()
    assert not {"sql", "hardening_pipeline"} & local_sources, "the code comes from the wheel"


def test_dockerfile_installs_the_deployment_instance_config() -> None:
    final = final_stage()
    env = " ".join(" ".join(args) for args in final.args_of("ENV"))
    home = re.search(r"DAGSTER_HOME=(\S+)", env)
    assert home, "the image must set DAGSTER_HOME"
    assert (None, ["deploy/dagster.yaml"], f"{home.group(1)}/dagster.yaml") in final.copies()
    assert any(args != ["root"] for args in final.args_of("USER"))


def test_secrets_stay_out_of_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored
    assert ".git" in ignored


# --- dagster.yaml -------------------------------------------------------------------------------


def test_root_dagster_yaml_needs_no_environment() -> None:
    from dagster._core.instance.config import dagster_instance_config

    config, custom_class = dagster_instance_config(str(ROOT))
    assert custom_class is None
    text = DAGSTER_YAML.read_text()
    assert "storage" not in load_yaml(DAGSTER_YAML), "Dagster's default local storage"
    assert "{env:" not in text and "env:" not in re.sub(r"#.*", "", text)
    assert config["telemetry"] == {"enabled": False}


def test_root_and_deployment_instance_configs_differ_only_in_storage() -> None:
    root, deploy = load_yaml(DAGSTER_YAML), load_yaml(DEPLOY_DAGSTER_YAML)
    assert set(deploy) - set(root) == {"storage"}
    assert {k: v for k, v in deploy.items() if k != "storage"} == root


def test_deployment_dagster_yaml_validates_against_the_instance_schema() -> None:
    from dagster._core.instance.config import dagster_instance_config

    config, custom_class = dagster_instance_config(str(DEPLOY_DAGSTER_YAML.parent))
    assert custom_class is None
    postgres = config["storage"]["postgres"]["postgres_db"]
    assert postgres == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }
    assert config["telemetry"] == {"enabled": False}


def test_dagster_yaml_storage_resolves_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster._config import process_config
    from dagster_postgres import DagsterPostgresStorage

    values = {
        "DAGSTER_PG_HOST": "dagster_postgres",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": "s3cret",
        "DAGSTER_PG_DB": "dagster",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    storage = load_yaml(DEPLOY_DAGSTER_YAML)["storage"]["postgres"]

    result = process_config(DagsterPostgresStorage.config_type(), storage)

    assert result.success, result.errors
    db = result.value["postgres_db"]
    assert (db["hostname"], db["port"], db["password"]) == ("dagster_postgres", 5432, "s3cret")


@pytest.mark.parametrize("source", [DAGSTER_YAML, DEPLOY_DAGSTER_YAML], ids=["root", "deploy"])
def test_dagster_yaml_settings_take_effect_in_a_real_instance(tmp_path: Path, source: Path) -> None:
    """Loads a real instance from each dagster.yaml, with the storage set to SQLite.

    Schema validation accepts any run coordinator config (it is a free-form mapping); building
    the instance makes Dagster parse and apply every setting the way the daemon will.
    """
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.run_coordinator import QueuedRunCoordinator

    shutil.copy(source, tmp_path / "dagster.yaml")
    ref = InstanceRef.from_dir(
        str(tmp_path), overrides={"storage": {"sqlite": {"base_dir": str(tmp_path)}}}
    )
    instance = DagsterInstance.from_ref(ref)
    try:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None
        assert queue.max_concurrent_runs >= 1
        assert {"key": "hardening/exclusive", "value": "backup", "limit": 1} in (
            queue.tag_concurrency_limits
        )
        assert queue.max_user_code_failure_retries > 0
        assert instance.run_monitoring_enabled
        settings = instance.run_monitoring_settings
        assert settings["start_timeout_seconds"] > 0
        assert settings["max_runtime_seconds"] > 0
        assert instance.run_retries_enabled
        assert instance.run_retries_max_retries >= 1
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.telemetry_enabled is False
    finally:
        instance.dispose()


# --- workspaces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [WORKSPACE, DOCKER_WORKSPACE], ids=lambda p: p.name)
def test_workspace_validates(path: Path) -> None:
    from dagster._core.workspace.config_schema import ensure_workspace_config

    ensure_workspace_config(load_yaml(path), str(path))


def test_local_workspace_loads_the_definitions_module() -> None:
    (entry,) = load_yaml(WORKSPACE)["load_from"]
    module = entry["python_module"]["module_name"]
    assert module == "hardening_pipeline.definitions"
    # find_spec locates the module without running it, so this checks the path, not its imports.
    assert importlib.util.find_spec(module) is not None, f"{module} does not exist"
    assert (
        entry["python_module"]["location_name"]
        == load_yaml(DOCKER_WORKSPACE)["load_from"][0]["grpc_server"]["location_name"]
    ), "both workspaces must name the location alike, or schedule state splits"


# --- .env.example -------------------------------------------------------------------------------


def test_env_example_documents_every_setting(env_example_names: set[str]) -> None:
    from hardening_pipeline import settings

    from_settings = {value for name, value in vars(settings).items() if name.startswith("ENV_")}
    expected = set(DESIGN_ENV_VARS) | set(DAGSTER_PG_VARS) | from_settings
    missing = sorted(expected - env_example_names)
    assert not missing, f"add these to .env.example: {missing}"


def test_env_example_documents_each_variable_with_a_comment() -> None:
    # A variable may share the comment of the group it sits in (AWS key pair, DAGSTER_PG_*), but
    # every group of assignments must be introduced by a comment.
    assignment = re.compile(r"^[A-Z][A-Z0-9_]*=")
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if assignment.match(line) and not assignment.match(lines[index - 1]):
            assert index > 0 and lines[index - 1].startswith("#"), (
                f"{line.split('=')[0]} needs a comment above it"
            )


def test_env_example_holds_no_secrets() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith(("BACKUP_ENCRYPTION_KEY=", "AWS_SECRET_ACCESS_KEY=", "SLACK_")):
            assert line.endswith("="), f"example values only: {line}"


# --- workflows ----------------------------------------------------------------------------------


def workflow(name: str) -> tuple[dict[str, Any], str]:
    path = WORKFLOWS / name
    text = path.read_text()
    data = load_yaml(path)
    # YAML 1.1 reads the bare key `on` as the boolean True.
    data["on"] = data.pop(True, data.get("on"))
    return data, text


def header_comment(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("name", "cron"),
    [("nightly-backup.yml", "0 2 * * *"), ("monthly-restore-drill.yml", "0 4 1 * *")],
)
def test_scheduled_workflows_run_when_promised(name: str, cron: str) -> None:
    data, _ = workflow(name)
    assert [entry["cron"] for entry in data["on"]["schedule"]] == [cron]
    assert "workflow_dispatch" in data["on"], "operators need a manual run button"


@pytest.mark.parametrize("name", ["nightly-backup.yml", "monthly-restore-drill.yml", "ci.yml"])
def test_every_secret_a_workflow_uses_is_documented_in_its_header(name: str) -> None:
    _, text = workflow(name)
    header = header_comment(text)
    used = set(re.findall(r"secrets\.([A-Za-z0-9_]+)", text))
    undocumented = sorted(s for s in used if not re.search(rf"\b{s}\b", header))
    assert not undocumented, f"{name} uses secrets its header does not explain: {undocumented}"


def work_job(data: dict[str, Any]) -> dict[str, Any]:
    """The job that does the work (the other one only says a scheduled run was skipped)."""
    (job,) = [job for name, job in data["jobs"].items() if name != "not-the-scheduler"]
    return job


@pytest.mark.parametrize("name", ["nightly-backup.yml", "monthly-restore-drill.yml"])
def test_scheduled_workflows_document_and_pass_every_variable(name: str) -> None:
    data, text = workflow(name)
    header = header_comment(text)
    given = {
        variable: value
        for step in work_job(data)["steps"]
        for variable, value in (step.get("env") or {}).items()
    }
    for variable in WORKFLOW_ENV_VARS:
        assert re.search(rf"^#\s+{variable}\s", header, re.M), f"{variable} undocumented"
        assert given[variable] == f"${{{{ secrets.{variable} }}}}"


def run_steps(name: str) -> list[str]:
    data, _ = workflow(name)
    return [step["run"] for step in work_job(data)["steps"] if "run" in step]


def test_nightly_backup_backs_up_then_applies_retention_and_alerts() -> None:
    data, _ = workflow("nightly-backup.yml")
    runs = run_steps("nightly-backup.yml")
    assert any("pip install" in run for run in runs)
    commands = [run.strip() for run in runs]
    assert commands.index("hardening backup") < commands.index("hardening retention")
    alert = [step for step in work_job(data)["steps"] if step.get("if") == "failure()"]
    assert alert and "curl" in alert[0]["run"] and "SLACK_WEBHOOK_URL" in alert[0]["run"]


def test_monthly_drill_runs_the_drill_and_alerts() -> None:
    data, _ = workflow("monthly-restore-drill.yml")
    runs = [run.strip() for run in run_steps("monthly-restore-drill.yml")]
    assert "hardening restore-drill" in runs
    assert any(
        step.get("if") == "failure()" and "curl" in step["run"]
        for step in work_job(data)["steps"]
        if "run" in step
    )


def test_ci_runs_the_ci_entry_point_on_push_and_pull_request() -> None:
    data, _ = workflow("ci.yml")
    assert {"push", "pull_request"} <= set(data["on"])
    assert "bash .ci/run" in run_steps("ci.yml")
