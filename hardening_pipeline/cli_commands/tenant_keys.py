"""``hardening tenant-keys`` and ``erase-tenant``: the per-tenant backup keys, their escrow and
recovery, and destroying one to erase a tenant from every retained backup."""

from __future__ import annotations

from pathlib import Path

import click

from hardening_pipeline.cli_commands.shared import (
    Context,
    console,
    err_console,
    friendly_errors,
    keyring_and_store,
    pass_context,
)
from hardening_pipeline.errors import ConfigError


@click.group("tenant-keys")
def tenant_keys_group() -> None:
    """The tenant key ledger: escrow export and recovery."""


@tenant_keys_group.command("export")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@pass_context
@friendly_errors
def tenant_keys_export(ctx: Context, target: Path) -> None:
    """Write the key ledger (keys wrapped by the master key) to TARGET for escrow."""
    from hardening_pipeline.backup.tenant_key_copies import export_ledger

    keyring, store = keyring_and_store(ctx)
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

    keyring, store = keyring_and_store(ctx, pruning=True)
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


@click.command("erase-tenant")
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
    keyring, store = keyring_and_store(ctx, pruning=True)
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


# Registered on the root group by cli.py.
COMMANDS = (tenant_keys_group, erase_tenant_command)
