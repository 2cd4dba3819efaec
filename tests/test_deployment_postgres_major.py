"""The Postgres majors of the deployment files agree: compose's databases, the image's tools, Helm.

A backup prefers a ``pg_dump`` of the server's own major and a drill restores into a server of
the backup's major (a ``pg_dump`` 17 writes settings a 16 server refuses). So in compose the
drill's Postgres runs exactly the application database's image, and the image fetches the
PostgreSQL release of that major at build time. No Docker engine runs here: the files are parsed.
Each check is a function of the files' text, so the tests below also run it on altered copies
and prove that it notices a disagreement.

Dagster's own storage Postgres (``dagster_postgres``; Helm's ``postgresql`` key) is deliberately
left out of the agreement: the project never backs it up, dumps or restores it, so its major may
differ from the application's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from hardening_pipeline.db.pg_installs import ENV_CACHE, SUPPORTED_MAJORS
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.settings import (
    ENV_DATABASE_URL,
    ENV_DRILL_TARGET_URL,
    Settings,
    load_settings,
)
from tests.support.dockerfile import Stage, stages_of
from tests.test_deployment_files import environment_of, resolve_defaults

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
HELM_VALUES = ROOT / "deploy" / "helm" / "values.yaml"

APP_SERVICE = "app_postgres"
STORAGE_SERVICE = "dagster_postgres"
CODE_SERVICE = "user_code"
# Helm's key for Dagster's own storage database (the chart's postgresql subchart).
HELM_STORAGE_KEY = "postgresql"
_FETCH = re.compile(r"\bhardening\s+postgres\s+fetch\s+(?P<majors>(?:\d+\s*)+)")
_ARG_REFERENCE = re.compile(r"\$\{(?P<braced>[A-Za-z_]\w*)\}|\$(?P<bare>[A-Za-z_]\w*)")
# An image reference, not a postgresql:// URL.
_POSTGRES_IMAGE = re.compile(r"(?:^|/)postgres(?:ql)?:(?!//)\S+$")


def image_major(image: str) -> int:
    """The major of an official ``postgres`` image tag: ``postgres:17-alpine`` -> 17.

    A floating tag (``latest``, none) names no major and cannot be kept equal to anything.
    """
    _, _, tag = image.rpartition(":")
    match = re.match(r"(\d+)(?:[.\-]|$)", tag) if "/" not in tag else None
    if match is None:
        raise ValueError(f"{image!r} names no Postgres major; pin one, like postgres:17-alpine")
    return int(match.group(1))


def drill_service_name(compose: dict[str, Any]) -> str | None:
    """The compose service the code location's ``HARDENING_DRILL_TARGET_URL`` points at."""
    env = environment_of(compose["services"][CODE_SERVICE])
    url = env.get(ENV_DRILL_TARGET_URL)
    return urlparse(resolve_defaults(url)).hostname if url else None


def _arg_values(stage: Stage, overrides: dict[str, str]) -> dict[str, str]:
    values = {}
    for args in stage.args_of("ARG"):
        name, _, default = args[0].partition("=")
        values[name] = overrides.get(name, default.strip("\"'"))
    return values


def _substitute(text: str, values: dict[str, str]) -> str:
    return _ARG_REFERENCE.sub(
        lambda m: values.get(m.group("braced") or m.group("bare"), m.group(0)), text
    ).replace('"', "")


def image_postgres_majors(dockerfile_text: str, build_args: dict[str, str]) -> tuple[set[int], str]:
    """The majors the image's final stage fetches, and what is wrong with how it does so ('' =
    nothing): as root (the fetched release lives in a system folder the processes read) and
    with ``HARDENING_PG_CACHE`` set, so the processes, which are not root, search that folder."""
    final = stages_of(dockerfile_text)[-1]
    values = _arg_values(final, build_args)
    majors: set[int] = set()
    user, cache_set, wrong = "root", False, ""
    for keyword, args in final.instructions:
        if keyword == "USER":
            user = args[0]
        elif keyword == "ENV" and any(a.startswith(f"{ENV_CACHE}=") for a in args):
            cache_set = True
        elif keyword == "RUN":
            for match in _FETCH.finditer(_substitute(" ".join(args), values)):
                majors.update(int(m) for m in match.group("majors").split())
                if user not in ("root", "0"):
                    wrong = f"it fetches PostgreSQL as {user}, not as root"
                elif not cache_set:
                    wrong = f"it fetches PostgreSQL before setting {ENV_CACHE}"
    return majors, wrong


def helm_postgres_images(values: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (key path, image) in the Helm values that names a Postgres image, as a string
    (``postgres:17``) or as an ``image`` map (``repository: .../postgres``, ``tag: "17"``)."""
    found: list[tuple[str, str]] = []
    if isinstance(values, dict):
        repository, tag = values.get("repository"), values.get("tag")
        if isinstance(repository, str) and re.search(r"(^|/)postgres(ql)?$", repository):
            found.append((path, f"{repository}:{tag}"))
        for key, value in values.items():
            found += helm_postgres_images(value, f"{path}/{key}" if path else str(key))
    elif isinstance(values, list):
        for index, item in enumerate(values):
            found += helm_postgres_images(item, f"{path}/{index}")
    elif isinstance(values, str) and _POSTGRES_IMAGE.search(values):
        found.append((path, values))
    return found


def postgres_major_problems(compose_text: str, dockerfile_text: str, helm_text: str) -> list[str]:
    """Every disagreement about the application's Postgres major between the three files."""
    compose = yaml.safe_load(compose_text)
    services = compose["services"]
    app_image = services[APP_SERVICE]["image"]
    major = image_major(app_image)
    problems = []

    drill = drill_service_name(compose)
    if drill is None or drill not in services:
        problems.append(f"{CODE_SERVICE} has no {ENV_DRILL_TARGET_URL} naming a compose service")
    elif drill == APP_SERVICE or services[drill].get("image") != app_image:
        problems.append(
            f"the drill's service {drill} runs {services[drill].get('image')!r}, not a separate "
            f"server on the application database's image {app_image!r}"
        )

    build_args = (services[CODE_SERVICE].get("build") or {}).get("args") or {}
    fetched, wrong = image_postgres_majors(
        dockerfile_text, {k: str(v) for k, v in build_args.items()}
    )
    if major not in fetched:
        problems.append(
            f"the Dockerfile fetches PostgreSQL {sorted(fetched) or 'none'}, not {major} "
            f"(the major of {APP_SERVICE}'s {app_image})"
        )
    if wrong:
        problems.append(f"the Dockerfile's PostgreSQL cannot be found at run time: {wrong}")

    for path, image in helm_postgres_images(yaml.safe_load(helm_text)):
        if path.split("/")[0] != HELM_STORAGE_KEY and image_major(image) != major:
            problems.append(f"Helm {path} names {image}, not PostgreSQL {major}")
    return problems


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return {
        "compose_text": COMPOSE.read_text(),
        "dockerfile_text": DOCKERFILE.read_text(),
        "helm_text": HELM_VALUES.read_text(),
    }


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_the_image_and_helm_agree_on_the_postgres_major(texts: dict[str, str]) -> None:
    assert postgres_major_problems(**texts) == []


def test_the_application_database_runs_a_supported_pinned_major(compose: dict[str, Any]) -> None:
    assert image_major(compose["services"][APP_SERVICE]["image"]) in SUPPORTED_MAJORS


def test_dagster_storage_postgres_may_run_another_major(compose: dict[str, Any]) -> None:
    """Dagster's storage is never dumped or restored here: pinned, but free to differ."""
    image = compose["services"][STORAGE_SERVICE]["image"]
    assert image.startswith("postgres:") and image_major(image) >= min(SUPPORTED_MAJORS)


@pytest.mark.parametrize(
    "image",
    ["postgres:latest", "postgres", "postgres:alpine", "registry:5000/postgres"],
)
def test_a_floating_postgres_tag_is_refused(image: str) -> None:
    with pytest.raises(ValueError, match="names no Postgres major"):
        image_major(image)


@pytest.mark.parametrize(
    ("image", "major"),
    [("postgres:17-alpine", 17), ("postgres:16.4-bookworm", 16), ("docker.io/postgres:15", 15)],
)
def test_image_major_reads_the_tag(image: str, major: int) -> None:
    assert image_major(image) == major


# --- the check notices each disagreement (altered copies; the real files are not touched) -------


def _swap(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected {old!r} once in the file"
    return text.replace(old, new)


def _other_major(major: int) -> int:
    return next(m for m in reversed(SUPPORTED_MAJORS) if m != major)


def _service_image_line(compose: dict[str, Any], service: str) -> str:
    return f"{service}:\n    image: {compose['services'][service]['image']}"


def _mutations(compose: dict[str, Any]) -> dict[str, tuple[str, str, str, str]]:
    """name -> (file, old text, new text, words the problem must contain)."""
    app_image = compose["services"][APP_SERVICE]["image"]
    major = image_major(app_image)
    other = _other_major(major)
    other_image = app_image.replace(f"postgres:{major}", f"postgres:{other}", 1)
    drill = drill_service_name(compose)
    assert drill is not None
    return {
        "app database moves to another major": (
            "compose_text",
            _service_image_line(compose, APP_SERVICE),
            f"{APP_SERVICE}:\n    image: {other_image}",
            f"not {other}",
        ),
        "drill service on another major": (
            "compose_text",
            _service_image_line(compose, drill),
            f"{drill}:\n    image: {other_image}",
            f"the drill's service {drill}",
        ),
        "drill service on another variant of the same major": (
            "compose_text",
            _service_image_line(compose, drill),
            f"{drill}:\n    image: postgres:{major}",
            f"the drill's service {drill}",
        ),
        "drill pointed at the application database": (
            "compose_text",
            f"@{drill}:5432/",
            f"@{APP_SERVICE}:5432/",
            f"the drill's service {APP_SERVICE}",
        ),
        "no drill target": (
            "compose_text",
            f"      {ENV_DRILL_TARGET_URL}:",
            "      HARDENING_UNUSED_SETTING:",
            f"no {ENV_DRILL_TARGET_URL}",
        ),
        "compose builds the image for another major": (
            "compose_text",
            "    dockerfile: Dockerfile\n",
            f'    dockerfile: Dockerfile\n    args:\n      POSTGRES_MAJOR: "{other}"\n',
            f"fetches PostgreSQL [{other}]",
        ),
        "image fetches another major": (
            "dockerfile_text",
            f"ARG POSTGRES_MAJOR={major}\n",
            f"ARG POSTGRES_MAJOR={other}\n",
            f"fetches PostgreSQL [{other}]",
        ),
        "image fetches nothing": (
            "dockerfile_text",
            'hardening postgres fetch "${POSTGRES_MAJOR}"',
            "hardening postgres",
            "fetches PostgreSQL none",
        ),
        "image fetches as the unprivileged user": (
            "dockerfile_text",
            "ARG POSTGRES_MAJOR=",
            "USER dagster\nARG POSTGRES_MAJOR=",
            "as dagster, not as root",
        ),
        "processes do not search the fetched folder": (
            "dockerfile_text",
            f"ENV {ENV_CACHE}=",
            f"ENV UNUSED_{ENV_CACHE}=",
            f"before setting {ENV_CACHE}",
        ),
        "helm names a drill postgres of another major": (
            "helm_text",
            "\ntelemetry:\n",
            f"\ndrillPostgres:\n  image:\n    repository: docker.io/library/postgres\n"
            f'    tag: "{other}"\n\ntelemetry:\n',
            f"Helm drillPostgres/image names docker.io/library/postgres:{other}",
        ),
    }


MUTATIONS = [
    "app database moves to another major",
    "drill service on another major",
    "drill service on another variant of the same major",
    "drill pointed at the application database",
    "no drill target",
    "compose builds the image for another major",
    "image fetches another major",
    "image fetches nothing",
    "image fetches as the unprivileged user",
    "processes do not search the fetched folder",
    "helm names a drill postgres of another major",
]


@pytest.mark.parametrize("name", MUTATIONS)
def test_the_check_fails_on_an_altered_copy(
    texts: dict[str, str], compose: dict[str, Any], name: str
) -> None:
    file, old, new, expected = _mutations(compose)[name]
    altered = {**texts, file: _swap(texts[file], old, new)}
    problems = postgres_major_problems(**altered)
    assert any(expected in problem for problem in problems), problems


def test_every_mutation_is_exercised(compose: dict[str, Any]) -> None:
    assert sorted(_mutations(compose)) == sorted(MUTATIONS)


def test_helm_storage_postgres_may_run_another_major(texts: dict[str, str]) -> None:
    helm = yaml.safe_load(texts["helm_text"])
    helm[HELM_STORAGE_KEY]["image"] = {"repository": "postgres", "tag": "12"}
    assert postgres_major_problems(**{**texts, "helm_text": yaml.safe_dump(helm)}) == []


# --- the compose drill service ------------------------------------------------------------------


def test_the_drill_service_is_private_throwaway_and_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    drill = drill_service_name(compose)
    assert drill is not None and drill != APP_SERVICE
    service = services[drill]
    assert not service.get("ports"), "only the code location may reach the drill's Postgres"
    assert not service.get("volumes"), "restored rows must not outlive the container"
    assert service["healthcheck"]["test"]
    condition = services[CODE_SERVICE]["depends_on"][drill]["condition"]
    assert condition == "service_healthy"
    # The image's POSTGRES_USER is a superuser: the drill creates and drops its database there.
    url = urlparse(resolve_defaults(environment_of(services[CODE_SERVICE])[ENV_DRILL_TARGET_URL]))
    env = {k: resolve_defaults(v) for k, v in environment_of(service).items()}
    assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert url.path.lstrip("/") == env["POSTGRES_DB"]
    for name in ("webserver", "daemon"):
        assert ENV_DRILL_TARGET_URL not in environment_of(services[name])


def test_settings_accept_the_compose_drill_target(compose: dict[str, Any]) -> None:
    env = {
        k: resolve_defaults(v) for k, v in environment_of(compose["services"][CODE_SERVICE]).items()
    }
    settings = load_settings({k: env[k] for k in (ENV_DATABASE_URL, ENV_DRILL_TARGET_URL)})
    assert urlparse(settings.drill_target()).hostname == drill_service_name(compose)


# --- HARDENING_DRILL_TARGET_URL -----------------------------------------------------------------

APP_URL = "postgresql://app:secret@db.internal:5432/app"
DRILL_URL = "postgresql://drill:secret@drill.internal:5432/drill"


def test_an_explicit_target_wins_over_the_setting() -> None:
    settings = Settings(drill_target_url=DRILL_URL)
    assert settings.drill_target() == DRILL_URL
    assert settings.drill_target("postgresql://other/x") == "postgresql://other/x"
    assert Settings().drill_target() is None


@pytest.mark.parametrize(
    "drill_url",
    [APP_URL, "postgresql://drill:other@db.internal/drill", "host=db.internal dbname=drill"],
)
def test_a_drill_target_on_the_application_server_is_refused(drill_url: str) -> None:
    with pytest.raises(ConfigError, match=f"{ENV_DRILL_TARGET_URL} names the same server"):
        load_settings({ENV_DATABASE_URL: APP_URL, ENV_DRILL_TARGET_URL: drill_url})


def test_a_drill_target_must_be_a_postgres_url() -> None:
    with pytest.raises(ConfigError, match=ENV_DRILL_TARGET_URL):
        load_settings({ENV_DRILL_TARGET_URL: "mysql://drill.internal/drill"})


def test_the_drill_target_url_stays_out_of_reprs() -> None:
    settings = load_settings({ENV_DATABASE_URL: APP_URL, ENV_DRILL_TARGET_URL: DRILL_URL})
    assert settings.drill_target_url == DRILL_URL
    assert "secret@drill" not in repr(settings)
