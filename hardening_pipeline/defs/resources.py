"""Dagster resources shared by every op: thin handles over the plain-Python core."""

from dataclasses import replace
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from hardening_pipeline.backup.crypto import Keyring, parse_master_key
from hardening_pipeline.backup.store import DEFAULT_PART_SIZE, BackupStore
from hardening_pipeline.db.connection import resolve_database_url
from hardening_pipeline.db.tenant_scoped_client import Mode, TenantScopedClient
from hardening_pipeline.jobs.wiring import open_configured_store, open_keyring, slack_notifier
from hardening_pipeline.settings import Settings, load_settings

if TYPE_CHECKING:  # built by jobs.wiring; named here only for the return type
    from hardening_pipeline.alerts.slack import SlackNotifier


class AppDatabaseResource(dg.ConfigurableResource):
    """The multi-tenant application database being hardened.

    Left empty, it follows HARDENING_DATABASE_URL, read when a run starts (never at import), and
    falls back to the embedded database in `.hardening/` like the CLI does.
    """

    database_url: str | None = None

    def settings(self) -> Settings:
        settings = load_settings()
        if self.database_url:
            settings = replace(settings, database_url=self.database_url)
        return settings

    def url(self) -> str:
        return resolve_database_url(self.settings())

    def tenant_client(
        self,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        mode: Mode = "service_role",
    ) -> TenantScopedClient:
        """A TenantScopedClient whose actor names this job and run, so the run id shown in the
        UI can be found in `audit_events.actor` (`dagster:<job>:<run id>`)."""
        run = context.run
        return TenantScopedClient(
            self.url(), actor=f"dagster:{run.job_name}:{run.run_id}", mode=mode
        )


# Marks a field secret in Dagster's config schema, so the UI masks it.
_SECRET = {"dagster__is_secret": True}
# What the Launchpad pre-fills a secret field with (Dagster masks any default of a secret field
# this way). Launched unchanged it means "the default", which for every field here is "follow
# the environment", never a literal URL or key.
LAUNCHPAD_MASK = "********"


def configured(value: str | None) -> str | None:
    """A config value the user really set, or None for empty, blank or the Launchpad's mask."""
    text = (value or "").strip()
    if not text or text == LAUNCHPAD_MASK:
        return None
    return text


class BackupStoreResource(dg.ConfigurableResource):
    """Where backups go: `s3://bucket/prefix` (Backblaze B2) or `file:///path`.

    Each field left empty follows its environment variable (BACKUP_STORE_URL,
    BACKUP_S3_ENDPOINT_URL, BACKUP_S3_REGION), read when a run opens the store, so a deploy
    changes the target without a code change. Credentials stay in AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY and never pass through Dagster config.
    """

    store_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    part_size: int = DEFAULT_PART_SIZE

    def open(self) -> BackupStore:
        return open_configured_store(
            load_settings(),
            store_url=self.store_url,
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            part_size=self.part_size,
        )


class EncryptionKeysResource(dg.ConfigurableResource):
    """The master key that encrypts backups, plus older keys kept to read older backups.

    Left empty, the keys follow BACKUP_ENCRYPTION_KEY and BACKUP_ENCRYPTION_KEYS_PREVIOUS, read
    when a run starts. A real database without a key is refused before any data is read.
    """

    # Strings, not lists: the Launchpad pre-fills every secret field with one masked string, so
    # a list field would refuse to launch as shown. Comma-separated, like the environment.
    key: str = Field(default="", json_schema_extra=_SECRET)
    previous_keys: str = Field(default="", json_schema_extra=_SECRET)

    def keyring(self, settings: Settings | None = None) -> Keyring:
        """Build the keyring; ``settings`` says which database it is for (embedded or real)."""
        settings = settings or load_settings()
        key = configured(self.key)
        if key:
            # Checked here so a bad value blames this config field, not the environment.
            parse_master_key(key, "the encryption_keys resource's `key` config")
            settings = replace(settings, encryption_key=key)
        previous = configured(self.previous_keys)
        if previous:
            keys = tuple(k.strip() for k in previous.split(",") if k.strip())
            for index, value in enumerate(keys, start=1):
                parse_master_key(
                    value, f"entry {index} of the encryption_keys resource's `previous_keys` config"
                )
            settings = replace(settings, previous_encryption_keys=keys)
        return open_keyring(settings)


class SlackAlertsResource(dg.ConfigurableResource):
    """The Slack incoming webhook alerts go to.

    Left empty, it follows SLACK_WEBHOOK_URL, read when an alert is sent; with neither, alerts
    are logged as NOT DELIVERED (and senders that track delivery try again later).
    """

    webhook_url: str = Field(default="", json_schema_extra=_SECRET)
    timeout: float = 10.0
    max_retries: int = 3

    def notifier(self) -> "SlackNotifier":
        return slack_notifier(
            load_settings(),
            webhook_url=configured(self.webhook_url),
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def runbook_base_url(self) -> str | None:
        """Where the runbook is published (HARDENING_RUNBOOK_URL), for links in alerts."""
        return load_settings().runbook_url
