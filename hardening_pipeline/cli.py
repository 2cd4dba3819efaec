"""The ``hardening`` command: the same functions the Dagster assets call, no Dagster needed.

Exit codes: 0 all good, 1 something checked came back red, 2 bad input or configuration.
User mistakes print one sentence naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from hardening_pipeline.db.connection import resolve_database_url
from hardening_pipeline.db.migrations import apply_migrations, migration_status
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.settings import Settings, load_settings

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what happens underneath.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Harden a multi-tenant Postgres database and prove it.

    Exit codes: 0 all good, 1 a check came back red, 2 bad input or configuration.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Context()


@main.command()
@click.option("--status", "show_status", is_flag=True, help="Show applied/pending; change nothing.")
@pass_context
@friendly_errors
def migrate(ctx: Context, show_status: bool) -> None:
    """Apply sql/migrations in order (each once, under a lock; drift is refused)."""
    url = ctx.database_url
    if not show_status:
        run = apply_migrations(
            url, on_applied=lambda name, secs: console.print(f"applied {name} ({secs:.2f}s)")
        )
        if not run.applied:
            console.print("nothing to apply: the database is up to date")
    states = migration_status(url)
    table = Table(title="migrations", title_justify="left")
    for column in ("file", "state", "applied at", "applied by"):
        table.add_column(column)
    colours = {"applied": "green", "pending": "yellow", "changed": "red", "unknown": "red"}
    for s in states:
        table.add_row(
            s.filename,
            f"[{colours[s.state]}]{s.state}[/]",
            s.applied.applied_at.isoformat(timespec="seconds") if s.applied else "",
            s.applied.applied_by if s.applied else "",
        )
    console.print(table)
    if any(s.state in ("changed", "unknown") for s in states):
        raise ConfigError(
            "the database and sql/migrations disagree (see the red lines); restore the "
            "original files or update the checkout."
        )
    if show_status and any(s.state == "pending" for s in states):
        sys.exit(EXIT_RED)


@main.command()
@click.option("--tenants", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--messages-per-unit", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--developments-per-tenant", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--units-per-development", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--random-seed", type=int, default=None, help="Make the data reproducible.")
@pass_context
@friendly_errors
def seed(
    ctx: Context,
    tenants: int,
    messages_per_unit: int,
    developments_per_tenant: int,
    units_per_development: int,
    random_seed: int | None,
) -> None:
    """Generate demo tenants through TenantScopedClient (service-role mode, audited)."""
    from rich.progress import Progress

    from hardening_pipeline.seed import seed_demo_data

    url = ctx.database_url
    apply_migrations(url)
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("seeding tenants", total=tenants)
        result = seed_demo_data(
            url,
            tenants=tenants,
            messages_per_unit=messages_per_unit,
            developments_per_tenant=developments_per_tenant,
            units_per_development=units_per_development,
            random_seed=random_seed,
            on_tenant=lambda done: progress.update(task, completed=done),
        )
    rate = result.rows / result.seconds if result.seconds else 0.0
    console.print(
        f"seeded {result.tenants} tenants, {result.developments} developments, "
        f"{result.units} units, {result.messages} messages, "
        f"{result.onboarding_attempts} onboarding attempts in {result.seconds:.1f}s "
        f"({rate:,.0f} rows/s)"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
