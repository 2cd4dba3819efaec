"""What every ``hardening`` command shares: the consoles, the settings loaded once, the mapping
of the kit's errors to exit codes, and the keyring, store and notifier a command presents jobs with.

It lives apart from ``cli.py`` so the command modules never import ``cli.py``: under
``python -m hardening_pipeline.cli`` that file runs as ``__main__``, and importing it again by
name would build a second root group and a second ``Context`` class.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from hardening_pipeline.db.connection import resolve_database_url
from hardening_pipeline.errors import CheckFailed, ConfigError, HardeningError
from hardening_pipeline.jobs import JobResult
from hardening_pipeline.settings import Settings, load_settings

if TYPE_CHECKING:
    from hardening_pipeline.alerts.slack import SlackNotifier
    from hardening_pipeline.backup.crypto import Keyring
    from hardening_pipeline.backup.store import BackupStore

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_RED = 1
EXIT_USAGE = 2


def friendly_errors(func: F) -> F:
    """Turn our own errors into one line on stderr and the documented exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            err_console.print(f"[bold red]error:[/] {exc}")
            sys.exit(EXIT_USAGE)
        except CheckFailed as exc:
            err_console.print(f"[bold red]failed:[/] {exc}")
            sys.exit(EXIT_RED)
        except HardeningError as exc:
            # The store or a backup object failed (network, corruption): red, not a traceback.
            err_console.print(f"[bold red]failed:[/] {exc}")
            sys.exit(EXIT_RED)

    return wrapper  # type: ignore[return-value]


class Context:
    """Lazily loaded settings and database URL shared by the subcommands."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._url: str | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def database_url(self) -> str:
        if self._url is None:
            if self.settings.uses_embedded_database:
                err_console.print(
                    f"[dim]HARDENING_DATABASE_URL is not set: using the embedded database in "
                    f"{self.settings.state_dir}/[/]"
                )
            self._url = resolve_database_url(self.settings)
        return self._url


pass_context = click.make_pass_decorator(Context, ensure=True)


def warn_local_key(path: Path | None) -> None:
    """Say that backups made now are only restorable with the generated key file."""
    err_console.print(
        f"[yellow]warning:[/] BACKUP_ENCRYPTION_KEY is not set, so a local key was generated "
        f"at {path} for the embedded demo database; backups are only restorable with that "
        "file. Set BACKUP_ENCRYPTION_KEY for real use."
    )


def keyring_and_store(ctx: Context, *, pruning: bool = False) -> tuple[Keyring, BackupStore]:
    """Key first, store second, database last: bad configuration stops before any data is read."""
    from hardening_pipeline.jobs.wiring import open_configured_store, open_keyring

    keyring = open_keyring(ctx.settings)
    if keyring.local_key_created:
        warn_local_key(keyring.local_key_path)
    return keyring, open_configured_store(ctx.settings, pruning=pruning)


def alert_notifier(ctx: Context, no_alert: bool = False) -> SlackNotifier | None:
    """The configured Slack webhook, or None when the user asked for no alert."""
    from hardening_pipeline.jobs.wiring import slack_notifier

    return None if no_alert else slack_notifier(ctx.settings)


def red_job_failure(result: JobResult) -> CheckFailed:
    """A red job result as the one sentence the CLI prints before exiting 1."""
    return CheckFailed(f"{result.subject}: {result.failure}")
