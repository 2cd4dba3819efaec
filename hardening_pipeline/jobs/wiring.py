"""A job's dependencies built from ``Settings`` in one place: the keyring, the store, Slack.

The CLI, the evidence run and the Dagster resources all open them here, so a configuration
rule (which key for the embedded database, which store URL wins) cannot differ between them.
"""

from __future__ import annotations

from pathlib import Path

from hardening_pipeline.alerts.slack import SlackNotifier
from hardening_pipeline.backup.crypto import Keyring, keyring_from_settings
from hardening_pipeline.backup.store import DEFAULT_PART_SIZE, BackupStore, open_store
from hardening_pipeline.hardening.seals.anchor import anchor_file_name
from hardening_pipeline.settings import Settings


def open_keyring(settings: Settings) -> Keyring:
    """The backup keys the settings name; a real database without a key is refused here."""
    return keyring_from_settings(settings)


def open_configured_store(
    settings: Settings,
    *,
    store_url: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    part_size: int = DEFAULT_PART_SIZE,
) -> BackupStore:
    """The backup store; each value given overrides its setting (Dagster resource config)."""
    return open_store(
        store_url or settings.effective_store_url,
        endpoint_url=endpoint_url or settings.s3_endpoint_url,
        region=region or settings.s3_region,
        part_size=part_size,
    )


def seal_anchor_path(settings: Settings, database_url: str) -> Path:
    """Where this host keeps the newest seal it made of that database (seals/anchor.py)."""
    return settings.state_dir / anchor_file_name(database_url)


def slack_notifier(
    settings: Settings,
    *,
    webhook_url: str | None = None,
    timeout: float = 10.0,
    max_retries: int = 3,
) -> SlackNotifier:
    """The Slack webhook alerts go to; without one, alerts are reported as NOT DELIVERED."""
    return SlackNotifier(
        webhook_url or settings.slack_webhook_url, timeout=timeout, max_retries=max_retries
    )
