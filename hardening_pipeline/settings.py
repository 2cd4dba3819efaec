"""Every environment variable the project reads, parsed and documented in one place.

Nothing else in the project calls ``os.environ`` for configuration: pass a ``Settings`` around
instead, so tests can build one without touching the process environment and so a typo in a
variable name is caught here, once. The one exception is where PostgreSQL installations are
looked for (``HARDENING_PG_BIN_DIRS``, ``HARDENING_PG_CACHE``, in ``db/pg_installs.py``): it is a
fact of the machine, reached from places that have no ``Settings`` (a throwaway server).

| variable | meaning | default |
|---|---|---|
| HARDENING_DATABASE_URL | Postgres to harden (libpq URL) | embedded Postgres in ``.hardening/`` |
| BACKUP_ENCRYPTION_KEY | base64 of 32 random bytes (``hardening keygen``) | embedded only: |
|  |  | generated once into ``.hardening/`` |
| BACKUP_ENCRYPTION_KEYS_PREVIOUS | comma-separated older keys, decrypt-only | none |
| BACKUP_STORE_URL | ``s3://bucket/prefix`` or ``file:///path`` | ``file://<state dir>/backups`` |
| BACKUP_S3_ENDPOINT_URL | S3 endpoint, e.g. ``https://s3.us-west-004.backblazeb2.com`` | AWS |
| BACKUP_S3_REGION | region matching the endpoint, e.g. ``us-west-004`` | ``us-east-1`` |
| AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY | B2 keyID / applicationKey | boto3's usual chain |
| BACKUP_OBJECT_LOCK | ``compliance``, ``governance`` or ``off``: lock each backup | ``off`` |
|  | object until its retention horizon (bucket needs Object Lock) |  |
| BACKUP_PRUNE_KEY_ID / BACKUP_PRUNE_APPLICATION_KEY | the pruning key retention deletes | unset: |
|  | with (both or neither); the AWS_* key then need not delete | the AWS_* key |
| SLACK_WEBHOOK_URL | Slack incoming-webhook URL | unset: alerts are logged as NOT DELIVERED |
| HARDENING_REPORTS_DIR | where status and drill reports land | ``scripts/hardening/reports`` |
| HARDENING_STATE_DIR | embedded database, local key, default backups | ``.hardening`` |
| DAGSTER_WEBSERVER_URL | base URL used for run links in alerts | ``http://localhost:3000`` |
| HARDENING_RUNBOOK_URL | where docs/runbook.md is published, for links in alerts | unset: alerts |
|  |  | name the repository path |
| BACKUP_SCHEMAS | comma-separated schemas a backup carries (schema and rows), | ``public,`` |
|  | e.g. ``public,auth``; ``hardening`` is always added | ``hardening`` |
| HARDENING_PG_DUMP | path of the ``pg_dump`` to use for the schema part of backups | found: the |
|  |  | installations of ``db/pg_installs.py``, then PATH |
| HARDENING_DRILL_TARGET_URL | superuser URL of a Postgres, separate from the app's, that | unset: |
|  | restore drills recreate and drop a ``restore_drill`` database on; | a throwaway |
|  | at least the backup's major (``--target-dsn`` / launch config win) | Postgres |
| HARDENING_PG_BIN_DIRS | PostgreSQL ``bin`` folders searched first for ``pg_dump`` and | none |
|  | drill servers, ``:``-separated (read by ``db/pg_installs.py``) |  |
| HARDENING_PG_CACHE | where ``hardening postgres fetch`` unpacks releases | root: ``/var/cache/`` |
|  | (read by ``db/pg_installs.py``) | else ``~/.cache/`` |
| HARDENING_DAGSTER_OWNERS | owners of every Dagster asset, comma-separated, | ``team:platform`` |
|  | each an email or ``team:<name>`` |  |
| HARDENING_GIT_URL | GitHub/GitLab repository URL: asset code links open it there | unset: local |
|  |  | file paths |
| HARDENING_GIT_BRANCH | branch those links point at | ``main`` |

How policies find the current tenant is deliberately not an environment variable: PostgREST and
every other client must see the same rule, so it is kept in the database
(``hardening.tenant_resolver``) and set with ``hardening tenant-resolver`` (see
``hardening_pipeline.db.tenant_resolver``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from hardening_pipeline.errors import ConfigError

ENV_DATABASE_URL = "HARDENING_DATABASE_URL"
ENV_ENCRYPTION_KEY = "BACKUP_ENCRYPTION_KEY"
ENV_ENCRYPTION_KEYS_PREVIOUS = "BACKUP_ENCRYPTION_KEYS_PREVIOUS"
ENV_STORE_URL = "BACKUP_STORE_URL"
ENV_S3_ENDPOINT_URL = "BACKUP_S3_ENDPOINT_URL"
ENV_S3_REGION = "BACKUP_S3_REGION"
ENV_OBJECT_LOCK = "BACKUP_OBJECT_LOCK"
ENV_PRUNE_KEY_ID = "BACKUP_PRUNE_KEY_ID"
ENV_PRUNE_APPLICATION_KEY = "BACKUP_PRUNE_APPLICATION_KEY"
OBJECT_LOCK_CHOICES = ("compliance", "governance", "off")
ENV_SLACK_WEBHOOK_URL = "SLACK_WEBHOOK_URL"
ENV_REPORTS_DIR = "HARDENING_REPORTS_DIR"
ENV_STATE_DIR = "HARDENING_STATE_DIR"
ENV_WEBSERVER_URL = "DAGSTER_WEBSERVER_URL"
ENV_RUNBOOK_URL = "HARDENING_RUNBOOK_URL"
ENV_BACKUP_SCHEMAS = "BACKUP_SCHEMAS"
ENV_PG_DUMP = "HARDENING_PG_DUMP"
ENV_DRILL_TARGET_URL = "HARDENING_DRILL_TARGET_URL"
# The app's own schema plus the kit's; ``auth`` (Supabase) is opt-in because its rows are
# Supabase's to restore, not every team wants them in the app's backup.
DEFAULT_BACKUP_SCHEMAS = ("public", "hardening")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


@dataclass(frozen=True)
class Settings:
    """Parsed configuration. ``database_url is None`` means the embedded default database."""

    database_url: str | None = None
    encryption_key: str | None = field(default=None, repr=False)
    previous_encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    store_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    slack_webhook_url: str | None = field(default=None, repr=False)
    reports_dir: Path = Path("scripts/hardening/reports")
    state_dir: Path = Path(".hardening")
    webserver_url: str = "http://localhost:3000"
    runbook_url: str | None = None
    backup_schemas: tuple[str, ...] = DEFAULT_BACKUP_SCHEMAS
    pg_dump_path: str | None = None
    drill_target_url: str | None = field(default=None, repr=False)
    object_lock: str = "off"
    prune_credentials: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    def drill_target(self, explicit: str | None = None) -> str | None:
        """Where a restore drill restores: the target asked for at launch (``--target-dsn``,
        the Dagster launch config), else ``HARDENING_DRILL_TARGET_URL``, else None (a throwaway
        Postgres of the backup's major)."""
        return explicit or self.drill_target_url

    @property
    def effective_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return (self.state_dir / "backups").resolve().as_uri()


def _clean(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _check_url(
    name: str, value: str | None, schemes: tuple[str, ...], *, need_host: bool = False
) -> None:
    """Refuse a value that is not a URL of one of ``schemes``; never echoes it (may be secret).

    ``need_host`` is for HTTP endpoints: without it ``https:///x`` or a host with a space in it
    passes here and fails later, inside boto3 or urllib, as a traceback.
    """
    if value is None:
        return
    try:
        parsed = urlparse(value)
        host = parsed.hostname
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 address
        raise ConfigError(
            f"{name} is not a valid URL ({exc}); fix the variable or unset it to use the default."
        ) from None
    if parsed.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ConfigError(
            f"{name} must start with one of {allowed} (got {parsed.scheme or 'no scheme'!r}); "
            f"fix the variable or unset it to use the default."
        )
    if need_host and (not host or any(c.isspace() for c in value)):
        raise ConfigError(
            f"{name} must name a host and contain no spaces, like {schemes[-1]}://host/path; "
            f"fix the variable or unset it to use the default."
        )


def check_database_url(value: str | None, name: str = ENV_DATABASE_URL) -> None:
    """Accept a postgres:// URL or a libpq ``key=value`` string, as libpq itself does."""
    if value is None or "://" in value:
        _check_url(name, value, ("postgres", "postgresql"))
        return
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"{name} is neither a postgresql:// URL nor a libpq key=value string "
            f"({str(exc).strip()}); fix the variable or unset it to use the embedded database."
        ) from exc


@dataclass(frozen=True)
class StoreLocation:
    """A checked ``BACKUP_STORE_URL``: a folder (``path``), or a bucket and a key prefix."""

    scheme: Literal["file", "s3"]
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""


def _unusable_prefix(prefix: str) -> bool:
    # The store's own key rules (backup/store/interface.py check_key), restated here so that
    # settings needs nothing from the backup package; a test holds the two together.
    if "\\" in prefix or "\x00" in prefix:
        return True
    return any(part in ("", ".", "..") or part.startswith(".tmp-") for part in prefix.split("/"))


def parse_store_url(url: str, name: str = ENV_STORE_URL) -> StoreLocation:
    """The one check of a store URL: ``file:///absolute/path`` or ``s3://bucket/prefix``.

    ``load_settings`` runs it on the variable and ``open_store`` on whatever URL it is handed
    (the Dagster resource may carry its own), so both refuse the same URLs with the same
    sentence. Raises ``ConfigError`` naming ``name`` and the fix; never echoes credentials.
    """
    url = url.strip()
    _check_url(name, url, ("s3", "file"))
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"{name} file URLs need an absolute path, like file:///var/backups "
                f"(three slashes), got a host {parsed.netloc!r}; fix the variable."
            )
        path = unquote(parsed.path)
        if not path.startswith("/") or "\x00" in path:
            raise ConfigError(
                f"{name} file URLs need an absolute path, like file:///var/backups; "
                f"fix the variable."
            )
        return StoreLocation("file", path=Path(path))
    if not parsed.netloc:
        raise ConfigError(
            f"{name} must name a bucket, like s3://my-bucket/backups; fix the variable."
        )
    if parsed.username or parsed.password or parsed.query:
        raise ConfigError(
            f"{name} must be just s3://bucket/prefix; put credentials in "
            f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the endpoint in {ENV_S3_ENDPOINT_URL}."
        )
    prefix = unquote(parsed.path).strip("/")
    if prefix and _unusable_prefix(prefix):
        raise ConfigError(
            f"{name} has an unusable prefix {prefix!r} (no '.', '..' or empty segments); "
            f"fix the variable."
        )
    return StoreLocation("s3", bucket=parsed.netloc, prefix=prefix)


def parse_backup_schemas(value: str | None) -> tuple[str, ...]:
    """``BACKUP_SCHEMAS``: plain schema names, comma-separated; ``hardening`` is always added."""
    if value is None:
        return DEFAULT_BACKUP_SCHEMAS
    names = [part.strip() for part in value.split(",") if part.strip()]
    bad = [name for name in names if not _SCHEMA_NAME.fullmatch(name) or name.startswith("pg_")]
    if bad or not names:
        raise ConfigError(
            f"{ENV_BACKUP_SCHEMAS} must be comma-separated schema names like public,auth (got "
            f"{(bad[0] if bad else value)!r}); fix the variable or unset it for public,hardening."
        )
    # The kit's own schema holds the migration record and the audit log a restore needs.
    return tuple(dict.fromkeys([*names, "hardening"]))


def _server_address(url: str) -> tuple[str, str]:
    import psycopg

    params = psycopg.conninfo.conninfo_to_dict(url)
    return str(params.get("host") or ""), str(params.get("port") or "5432")


def check_drill_target_url(value: str | None, database_url: str | None) -> None:
    """``HARDENING_DRILL_TARGET_URL``: a Postgres URL, and not the application's own server.

    A restore runs the backup's functions, triggers and defaults, which came from a database
    whose table owner may be hostile; on the application's server they would sit beside the
    live data. The comparison is of host and port as written, so it catches the plain mistake
    (the same URL reused), not a second name for the same server.
    """
    check_database_url(value, ENV_DRILL_TARGET_URL)
    if value is None or database_url is None:
        return
    if _server_address(value) == _server_address(database_url):
        raise ConfigError(
            f"{ENV_DRILL_TARGET_URL} names the same server as {ENV_DATABASE_URL}; a drill "
            "restores a backup's code, so point it at a separate Postgres (compose: the "
            "drill_postgres service) or unset it to restore into a throwaway Postgres."
        )


def parse_object_lock(value: str | None) -> str:
    """``BACKUP_OBJECT_LOCK``: compliance, governance or off (the default)."""
    mode = (value or "off").lower()
    if mode not in OBJECT_LOCK_CHOICES:
        raise ConfigError(
            f"{ENV_OBJECT_LOCK} must be compliance, governance or off (got {value!r}); "
            f"fix the variable or unset it."
        )
    return mode


def parse_prune_credentials(key_id: str | None, secret: str | None) -> tuple[str, str] | None:
    """The pruning key: both ``BACKUP_PRUNE_KEY_ID`` and ``BACKUP_PRUNE_APPLICATION_KEY``, or
    neither."""
    if key_id and secret:
        return key_id, secret
    if key_id or secret:
        missing = ENV_PRUNE_APPLICATION_KEY if key_id else ENV_PRUNE_KEY_ID
        raise ConfigError(
            f"{missing} is not set but its pair is; set both {ENV_PRUNE_KEY_ID} and "
            f"{ENV_PRUNE_APPLICATION_KEY} (the B2 pruning key) or neither."
        )
    return None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment; raises ``ConfigError`` naming the bad variable."""
    env = os.environ if environ is None else environ
    database_url = _clean(env, ENV_DATABASE_URL)
    check_database_url(database_url)
    store_url = _clean(env, ENV_STORE_URL)
    if store_url is not None:
        parse_store_url(store_url)
    endpoint = _clean(env, ENV_S3_ENDPOINT_URL)
    _check_url(ENV_S3_ENDPOINT_URL, endpoint, ("http", "https"), need_host=True)
    webhook = _clean(env, ENV_SLACK_WEBHOOK_URL)
    _check_url(ENV_SLACK_WEBHOOK_URL, webhook, ("http", "https"), need_host=True)
    runbook = _clean(env, ENV_RUNBOOK_URL)
    _check_url(ENV_RUNBOOK_URL, runbook, ("http", "https"), need_host=True)
    previous = _clean(env, ENV_ENCRYPTION_KEYS_PREVIOUS)
    drill_target_url = _clean(env, ENV_DRILL_TARGET_URL)
    check_drill_target_url(drill_target_url, database_url)
    return Settings(
        database_url=database_url,
        encryption_key=_clean(env, ENV_ENCRYPTION_KEY),
        previous_encryption_keys=tuple(k.strip() for k in (previous or "").split(",") if k.strip()),
        store_url=store_url,
        s3_endpoint_url=endpoint,
        s3_region=_clean(env, ENV_S3_REGION) or "us-east-1",
        slack_webhook_url=webhook,
        reports_dir=Path(_clean(env, ENV_REPORTS_DIR) or "scripts/hardening/reports"),
        state_dir=Path(_clean(env, ENV_STATE_DIR) or ".hardening"),
        webserver_url=(_clean(env, ENV_WEBSERVER_URL) or "http://localhost:3000").rstrip("/"),
        runbook_url=runbook.split("#", 1)[0] if runbook else None,
        backup_schemas=parse_backup_schemas(_clean(env, ENV_BACKUP_SCHEMAS)),
        pg_dump_path=_clean(env, ENV_PG_DUMP),
        drill_target_url=drill_target_url,
        object_lock=parse_object_lock(_clean(env, ENV_OBJECT_LOCK)),
        prune_credentials=parse_prune_credentials(
            _clean(env, ENV_PRUNE_KEY_ID), _clean(env, ENV_PRUNE_APPLICATION_KEY)
        ),
    )


# --- the Dagster catalog: who owns the assets, where their code lives ---------------------------

ENV_DAGSTER_OWNERS = "HARDENING_DAGSTER_OWNERS"
ENV_GIT_URL = "HARDENING_GIT_URL"
ENV_GIT_BRANCH = "HARDENING_GIT_BRANCH"
DEFAULT_DAGSTER_OWNERS = ("team:platform",)
# Dagster's own owner rule (an email, or "team:" and a name), restated so a bad value is refused
# here with the variable's name instead of by Dagster with an asset's name.
# The leading \b is Dagster's too: an address starting with ".", "%", "+" or "-" is refused.
_OWNER_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,7}")
_GIT_REPOSITORY_URL = re.compile(r"https?://[^/@?#\s]+(/[^/?#\s]+){2,}")
_OWNER_TEAM = re.compile(r"team:\S.*")
# A git branch name: no "..", no leading "-" (git refuses both), so the link names a real branch.
_GIT_BRANCH = re.compile(r"(?!-)(?!.*\.\.)[A-Za-z0-9._/-]+")


@dataclass(frozen=True)
class DagsterCatalogSettings:
    """How the assets present themselves in the Dagster UI: owners and links to their code."""

    owners: tuple[str, ...] = DEFAULT_DAGSTER_OWNERS
    git_url: str | None = None
    git_branch: str = "main"

    @property
    def git_platform(self) -> Literal["github", "gitlab"] | None:
        return git_platform(self.git_url)


def git_platform(url: str | None) -> Literal["github", "gitlab"] | None:
    """The link layout Dagster should use for ``url``, read from its host name only: Dagster
    itself looks for "gitlab" anywhere in the URL, case-sensitively, so
    https://github.com/acme/gitlab-tools would get GitLab links."""
    host = (urlparse(url).hostname or "") if url else ""
    return "gitlab" if "gitlab" in host else "github" if "github" in host else None


def parse_dagster_owners(value: str | None) -> tuple[str, ...]:
    """``HARDENING_DAGSTER_OWNERS``: comma-separated emails or ``team:<name>``; unset = default."""
    if value is None or not value.strip():
        return DEFAULT_DAGSTER_OWNERS
    owners = [part.strip() for part in value.split(",") if part.strip()]
    bad = [o for o in owners if not (_OWNER_EMAIL.fullmatch(o) or _OWNER_TEAM.fullmatch(o))]
    if bad or not owners:
        raise ConfigError(
            f"{ENV_DAGSTER_OWNERS} must be comma-separated owners, each an email or team:<name> "
            f"like team:platform,oncall@example.com (got {(bad[0] if bad else value)!r}); fix the "
            f"variable or unset it for {DEFAULT_DAGSTER_OWNERS[0]}."
        )
    return tuple(dict.fromkeys(owners))


def load_dagster_catalog_settings(
    environ: Mapping[str, str] | None = None,
) -> DagsterCatalogSettings:
    """Read the catalog variables alone, so a bad backup or Slack variable cannot stop the Dagster
    code location from loading (those are checked when a run uses them)."""
    env = os.environ if environ is None else environ
    git_url = _clean(env, ENV_GIT_URL)
    _check_url(ENV_GIT_URL, git_url, ("https", "http"), need_host=True)
    # Dagster knows GitHub's and GitLab's link layouts only. The URL is shown in the UI, so it
    # may carry no credentials; links are made by appending to it, so it names a repository and
    # has no query or fragment.
    if git_url is not None:
        if git_platform(git_url) is None or not _GIT_REPOSITORY_URL.fullmatch(git_url.rstrip("/")):
            raise ConfigError(
                f"{ENV_GIT_URL} must be a GitHub or GitLab repository URL like "
                f"https://github.com/acme/hardening, without credentials, query or fragment; "
                f"fix the variable or unset it for local file links."
            )
    branch = _clean(env, ENV_GIT_BRANCH) or "main"
    if not _GIT_BRANCH.fullmatch(branch):
        raise ConfigError(
            f"{ENV_GIT_BRANCH} must be a branch name like main (got {branch!r}); fix the variable "
            f"or unset it for main."
        )
    return DagsterCatalogSettings(
        owners=parse_dagster_owners(_clean(env, ENV_DAGSTER_OWNERS)),
        git_url=git_url.rstrip("/") if git_url else None,
        git_branch=branch,
    )
