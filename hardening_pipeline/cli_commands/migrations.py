"""``hardening migrate``, ``tenant-resolver`` and ``service-role-mode``: the schema the kit
installs and the two choices that decide what its policies let through."""

from __future__ import annotations

import shlex
import sys

import click
from rich.table import Table

from hardening_pipeline.cli_commands.shared import (
    EXIT_RED,
    Context,
    console,
    friendly_errors,
    pass_context,
)
from hardening_pipeline.db.migration_plan import (
    MigrationBlocked,
    apply_after_rehearsal,
    blocker_fix_sql,
    plan_migrations,
    render_blocker,
    render_plan,
)
from hardening_pipeline.db.migrations import (
    MigrationFailed,
    migration_status,
    stale_definition_files,
)
from hardening_pipeline.db.service_role_mode import SOURCE_IS_CLAIMED
from hardening_pipeline.db.tenant_resolver import (
    ResolverChoice,
    adoption_changes,
    apply_resolver_choice,
    parse_resolver_choice,
    read_resolver,
    resolver_lines,
    set_claim_resolver,
    set_membership_resolver,
)
from hardening_pipeline.errors import CheckFailed, ConfigError


@click.command()
@click.option("--status", "show_status", is_flag=True, help="Show applied/pending; change nothing.")
@click.option(
    "--plan",
    "show_plan",
    is_flag=True,
    help="Rehearse the pending migrations in a rolled-back transaction and print every change "
    "and blocker; change nothing. Exit 1 when something blocks.",
)
@click.option(
    "--tenant-resolver",
    "resolver_words",
    metavar="'claim PATH... | membership TABLE USER_COL TENANT_COL'",
    default=None,
    help="Set the tenant resolver in the same run, right after the migrations, with the words "
    "`hardening tenant-resolver` takes (their form is checked before anything is applied, the "
    "table and columns as the resolver is set).",
)
@pass_context
@friendly_errors
def migrate(ctx: Context, show_status: bool, show_plan: bool, resolver_words: str | None) -> None:
    """Apply sql/migrations in order (each once, under a lock; drift is refused)."""
    choice = _resolver_choice(resolver_words)
    if choice is not None and show_status:
        raise ConfigError("--tenant-resolver sets the resolver while migrating; drop --status.")
    url = ctx.database_url
    if show_plan:
        _print_plan(url, choice)
        return
    if not show_status:
        try:
            run = apply_after_rehearsal(
                url, on_applied=lambda name, secs: console.print(f"applied {name} ({secs:.2f}s)")
            )
        except MigrationBlocked as exc:
            for blocker in exc.plan.blockers:
                for line in render_blocker(blocker.failure, blocker.fix_sql):
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
            raise
        except MigrationFailed as exc:
            for line in render_blocker(exc.failure, blocker_fix_sql(url, exc.failure)):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            raise
        if not run.applied and not run.definitions:
            console.print("nothing to apply: the database is up to date")
        _print_mode_set_by_migration(url, run.applied)
        _print_adoption_changes(url, run.applied)
        if choice is not None:
            console.print(f"tenant resolver: {apply_resolver_choice(url, choice).describe()}")
        else:
            for line in resolver_lines(run.applied, None):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
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
    # A definition whose function the server runs in another form: migrate applies it again.
    stale = stale_definition_files(url)
    for filename in stale:
        table.add_row(filename, "[yellow]pending[/]", "", "differs from the server's function")
    console.print(table)
    if any(s.state in ("changed", "unknown") for s in states):
        raise ConfigError(
            "the database and sql/migrations disagree (see the red lines); restore the "
            "original files or update the checkout."
        )
    if show_status and (stale or any(s.state == "pending" for s in states)):
        sys.exit(EXIT_RED)


def _resolver_choice(words: str | None) -> ResolverChoice | None:
    if words is None:
        return None
    try:
        split = shlex.split(words)
    except ValueError as exc:
        raise ConfigError(
            f"--tenant-resolver {words!r} cannot be read ({exc}); quote it once."
        ) from None
    return parse_resolver_choice(split)


def _print_plan(url: str, choice: ResolverChoice | None = None) -> None:
    plan = plan_migrations(url)
    for line in render_plan(plan, choice):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if not plan.ok:
        raise CheckFailed(
            f"{len(plan.blockers)} blocker(s) stop hardening migrate; apply the fixes above and "
            "plan again."
        )


def _print_adoption_changes(url: str, migrations: list[str]) -> None:
    # What the run changed on objects the app had before the kit (adopted tables, replaced keys).
    if not migrations:
        return
    for change in adoption_changes(url, migrations):
        console.print(
            f"[yellow]changed[/] {change.object}: {change.action} ({change.detail}) "
            f"[dim]{change.migration}[/]"
        )


@click.group("tenant-resolver", invoke_without_command=True)
@click.pass_context
def tenant_resolver(click_ctx: click.Context) -> None:
    """Show or set how policies find the current tenant (kept in hardening.tenant_resolver).

    JWT claims, when present, win over app.tenant_id; a tenant id that is not a uuid resolves to
    no tenant, so the kit's policies see nothing. Without a subcommand: show the resolver.
    """
    if click_ctx.invoked_subcommand is None:
        _show_resolver(click_ctx.find_object(Context))


@friendly_errors
def _show_resolver(ctx: Context) -> None:
    console.print(f"tenant resolver: {read_resolver(ctx.database_url).describe()}")


@tenant_resolver.command("claim")
@click.argument("paths", nargs=-1, required=True)
@pass_context
@friendly_errors
def tenant_resolver_claim(ctx: Context, paths: tuple[str, ...]) -> None:
    """Read the tenant from the first JWT claim path present, e.g. app_metadata.tenant_id."""
    resolver = set_claim_resolver(ctx.database_url, list(paths))
    console.print(f"tenant resolver: {resolver.describe()}")


@tenant_resolver.command("membership")
@click.argument("table")
@click.argument("user_column")
@click.argument("tenant_column")
@pass_context
@friendly_errors
def tenant_resolver_membership(
    ctx: Context, table: str, user_column: str, tenant_column: str
) -> None:
    """Every TENANT_COLUMN of TABLE whose USER_COLUMN is the JWT sub (auth.uid())."""
    resolver = set_membership_resolver(ctx.database_url, table, user_column, tenant_column)
    console.print(f"tenant resolver: {resolver.describe()}")


def _print_mode_set_by_migration(url: str, applied: list[str]) -> None:
    """After 012 runs, say which service-role mode it chose: report changes what gets through."""
    from hardening_pipeline.db.connection import connect
    from hardening_pipeline.db.service_role_mode import read_mode

    if not any(name.startswith("012_") for name in applied):
        return
    with connect(url) as conn:
        state = read_mode(conn)
    if state is None:
        return
    colour = "green" if state.mode == "enforce" else "yellow"
    console.print(f"service-role rule: [{colour}]{state.mode}[/] mode ({state.reason})")
    if state.mode == "report":
        console.print(
            "  unattributed service_role writes go through and are reported; fix the callers, "
            "then run `hardening service-role-mode enforce`."
        )
        console.print(f"  ({SOURCE_IS_CLAIMED})")


@click.command("service-role-mode")
@click.argument("mode", required=False, type=click.Choice(["report", "enforce"]))
@click.option(
    "--force",
    is_flag=True,
    help="Switch to enforce even though unattributed writes were seen in the last 7 days.",
)
@pass_context
@friendly_errors
def service_role_mode(ctx: Context, mode: str | None, force: bool) -> None:
    """Show the service-role rule's mode, or set it to report or enforce.

    enforce refuses every service_role write to a tenant table without the wrapper's actor;
    report lets it through, audited as service_role:unattributed, and reports where it came
    from. Switching to enforce first shows the last 7 days' unattributed writes and refuses
    (exit 1) unless --force.
    """
    from hardening_pipeline.db.service_role_mode import change_mode, current_mode

    url = ctx.database_url
    if mode is None:
        state, sources = current_mode(url)
        colour = "green" if state.mode == "enforce" else "yellow"
        console.print(
            f"service-role rule: [{colour}]{state.mode}[/] mode, set "
            f"{state.set_at:%Y-%m-%d %H:%M} UTC by {state.set_by} ({state.reason})"
        )
        if state.mode == "enforce" and not sources:
            console.print("no unattributed service_role writes since enforce was set")
            return
        _print_sources(sources)
        return
    change = change_mode(url, mode, force=force)
    if change.sources:
        _print_sources(change.sources)
    if not change.changed and change.previous.mode == mode:
        console.print(f"service-role rule: already in {mode} mode; nothing changed")
        return
    if not change.changed:
        raise CheckFailed(
            f"not switched to enforce: {len(change.sources)} unattributed caller(s) wrote in the "
            f"last 7 days and would be refused ({change.sources[0].describe()}); fix them, or "
            "run again with --force."
        )
    console.print(
        f"service-role rule: {change.previous.mode} -> [bold]{change.current.mode}[/] mode"
    )


def _print_sources(sources: list) -> None:
    if not sources:
        console.print("no unattributed service_role writes in the last 7 days")
        return
    console.print("unattributed service_role writes in the last 7 days:")
    for source in sources:
        console.print(f"  {source.describe()}")
    console.print(f"({SOURCE_IS_CLAIMED})")


# Registered on the root group by cli.py.
COMMANDS = (migrate, tenant_resolver, service_role_mode)
