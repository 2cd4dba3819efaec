"""``hardening canaries``, ``status``, ``evidence`` and ``seal``: the checks that come back green
or red, and the bundle that proves them to an auditor."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.cli_commands.shared import (
    Context,
    alert_notifier,
    console,
    err_console,
    friendly_errors,
    keyring_and_store,
    pass_context,
    red_job_failure,
    warn_local_key,
)


@click.command()
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
        notifier=alert_notifier(ctx, no_alert),
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
        raise red_job_failure(job)


@click.command()
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
        keyring, store = keyring_and_store(ctx)
        freshness = FreshnessRequest(store, keyring, timedelta(hours=max_backup_age_hours))
    job = status_job(
        ctx.database_url,
        reports_dir=ctx.settings.reports_dir,
        notifier=alert_notifier(ctx, no_alert),
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
        raise red_job_failure(job)


@click.command()
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
        warn_local_key(result.local_key_created)
    summary = Table(title="task list", title_justify="left")
    for column in ("item", "result", "proof"):
        summary.add_column(column)
    for item, title, green, proof in result.summary_lines:
        summary.add_row(f"{item} {title}", "[green]green[/]" if green else "[red]red[/]", proof)
    console.print(summary)
    console.print(f"evidence: {result.folder}/SUMMARY.md")
    if not result.passed:
        raise red_job_failure(result)


@click.command()
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

    keyring, store = keyring_and_store(ctx)
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
        raise red_job_failure(job)
    console.print(f"[green]audit seal chain intact:[/] {job.verification.detail}")


# Registered on the root group by cli.py.
COMMANDS = (canaries, status, evidence, seal)
