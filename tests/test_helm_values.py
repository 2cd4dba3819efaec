"""deploy/helm/values.yaml against the official Dagster chart's published values schema.

Helm validates the chart's own values.yaml merged with ours: maps merge key by key, lists are
replaced whole. The chart's defaults are not vendored, so a ``required`` key missing from a map
counts as supplied by them; inside a list item (our user deployment, our tag limits) nothing is
merged and every ``required`` key must be there. Every other rule applies as Helm applies it:
unknown keys where the schema forbids them, types, enums and the run launcher's ``if``/``then``.

The schema refers to Kubernetes object schemas on kubernetesjsonschema.dev, which no longer
serves them; those references are dropped (their sibling ``type`` rules still apply), so the
test runs offline.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "vendor" / "dagster_helm" / "values.schema.json"
VALUES = ROOT / "deploy" / "helm" / "values.yaml"
# tests/vendor/dagster_helm/SOURCE.md: dagster-io/dagster at bdb8547fab49, unchanged.
SCHEMA_SHA256 = "cccbf9a9956cf32b240ef7fc2f4735e03c02db369f15ff444b06492544f8503a"
SECRET_VARIABLES = {
    "HARDENING_DATABASE_URL",
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_ENCRYPTION_KEYS_PREVIOUS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "SLACK_WEBHOOK_URL",
}


def without_external_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: without_external_refs(value)
            for key, value in node.items()
            if not (key == "$ref" and not str(value).startswith("#"))
        }
    if isinstance(node, list):
        return [without_external_refs(item) for item in node]
    return node


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = without_external_refs(json.loads(SCHEMA.read_text()))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def problems(validator: Draft7Validator, values: dict[str, Any]) -> list[str]:
    found = []
    for error in validator.iter_errors(values):
        in_merged_map = all(isinstance(part, str) for part in error.absolute_path)
        if error.validator == "required" and in_merged_map:
            continue
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        # An anyOf failure says only that no branch matched; the branches say why.
        reasons = sorted({sub.message for sub in error.context or ()})
        found.append(f"{where}: {error.message}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return found


def test_the_vendored_schema_is_the_published_one() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_values_validate_against_the_chart_schema(validator, values) -> None:
    assert problems(validator, values) == []


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    for part in parents:
        tree = tree[part]
    if value is None:
        del tree[last]
    else:
        tree[last] = value


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("runLauncher/type", "K8sRunLaunchr", "is not one of"),
        ("dagsterDaemon/runCoordinater", {}, "Additional properties"),
        (
            "dagsterDaemon/runCoordinator/config/queuedRunCoordinator/tagConcurrencyLimits/0/limit",
            "one",
            "is not of type 'integer'",
        ),
        ("dagster-user-deployments/deployments/0/port", None, "'port' is a required property"),
        (
            "dagsterDaemon/runCoordinator/config/queuedRunCoordinator/tagConcurrencyLimits/0/key",
            None,
            "'key' is a required property",
        ),
        ("dagster-user-deployments/deployments/0/envSecrets", "hardening", "is not of type"),
    ],
    ids=["launcher-typo", "unknown-key", "limit-type", "no-port", "limit-key", "secrets"],
)
def test_the_validation_catches_mistakes(validator, values, path, value, expected) -> None:
    broken = copy.deepcopy(values)
    _set(broken, path, value)
    found = problems(validator, broken)
    assert any(expected in p for p in found), found


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def test_same_queue_concurrency_and_retention_as_dagster_yaml(values) -> None:
    instance = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queue = coordinator["config"]["queuedRunCoordinator"]
    runs = instance["concurrency"]["runs"]
    assert queue["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert queue["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    dequeue = instance["run_coordinator"]["config"]["dequeue_interval_seconds"]
    assert queue["dequeueIntervalSeconds"] == dequeue
    assert daemon["runMonitoring"] == {camel(k): v for k, v in instance["run_monitoring"].items()}
    assert daemon["runRetries"] == {camel(k): v for k, v in instance["run_retries"].items()}
    retention = values["retention"]
    assert retention["enabled"] is True
    for kind in ("schedule", "sensor"):
        ours = retention[kind]["purgeAfterDays"]
        theirs = instance["retention"][kind]["purge_after_days"]
        if isinstance(theirs, dict):
            ours = {k: v for k, v in ours.items() if k in theirs}
        assert ours == theirs, kind
    assert values["telemetry"] == instance["telemetry"]


def test_runs_are_kubernetes_jobs_from_this_image_with_secrets_from_kubernetes(values) -> None:
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    args = deployment["codeServerArgs"]
    assert args[args.index("-m") + 1] == module
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    secret_names = {s["name"] for s in deployment["envSecrets"]}
    assert secret_names and secret_names == {s["name"] for s in launcher["envSecrets"]}
    # Secret values never sit in the values file, only the names of Kubernetes Secrets.
    assert not SECRET_VARIABLES & set(deployment.get("env", {}))
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]
    assert "postgresqlPassword" not in values["postgresql"]
    header = VALUES.read_text().split("\n\n", 1)[0]
    for variable in SECRET_VARIABLES - {"BACKUP_ENCRYPTION_KEYS_PREVIOUS"}:
        assert re.search(rf"--from-literal={variable}=", header), f"{variable} not documented"
