"""``hardening keygen``, ``backup``, ``retention``, ``restore-drill`` and ``restore``: the
encrypted backups, from the key they are made with to getting a tenant back."""

from __future__ import annotations

import click
from rich.markdown import Markdown
from rich.table import Table

from hardening_pipeline.cli_commands.shared import (
    Context,
    alert_notifier,
    console,
    err_console,
    friendly_errors,
    keyring_and_store,
    pass_context,
    red_job_failure,
)


@click.command()
def keygen() -> None:
    """Print a new BACKUP_ENCRYPTION_KEY (base64 of 32 random bytes)."""
    from hardening_pipeline.backup.crypto import generate_master_key_b64

    console.print(generate_master_key_b64())
    err_console.print(
        "[dim]export it as BACKUP_ENCRYPTION_KEY and keep a copy off this machine; "
        "move the old key to BACKUP_ENCRYPTION_KEYS_PREVIOUS when rotating.[/]"
    )


@click.command()
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

    keyring, store = keyring_and_store(ctx)
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
        raise red_job_failure(job)


@click.command()
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

    keyring, store = keyring_and_store(ctx, pruning=True)
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


@click.command("restore-drill")
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

    keyring, store = keyring_and_store(ctx)
    with err_console.status("restore drill") as status:
        job = drill_job(
            store,
            keyring,
            reports_dir=ctx.settings.reports_dir,
            notifier=alert_notifier(ctx),
            runbook_base_url=ctx.settings.runbook_url,
            backup_id=backup_id,
            target_dsn=ctx.settings.drill_target(target_dsn),
            on_stage=lambda name, state: status.update(f"restore drill: {name} {state}"),
            source=configured_source(ctx.settings.database_url),
        )
    console.print(Markdown(drill_markdown(job.result)))
    console.print(f"report: {job.report.markdown} and {job.report.json.name}")
    if not job.passed:
        raise red_job_failure(job)


@click.command()
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
    keyring, store = keyring_and_store(ctx)
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


# Registered on the root group by cli.py.
COMMANDS = (keygen, backup, retention, restore_drill, restore)
