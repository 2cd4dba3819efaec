"""The ``hardening`` command: the same functions the Dagster assets call, no Dagster needed.

Exit codes: 0 all good, 1 something checked came back red, 2 bad input or configuration.
User mistakes print one sentence naming the problem and the fix, never a traceback.
The subcommands live in ``cli_commands/``, one module per family, and are registered here.
"""

from __future__ import annotations

import logging

import click

from hardening_pipeline.cli_commands import backups, checks, migrations, tenant_keys, tooling
from hardening_pipeline.cli_commands.shared import Context


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


for command_family in (migrations, tooling, backups, checks, tenant_keys):
    for command in command_family.COMMANDS:
        main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
