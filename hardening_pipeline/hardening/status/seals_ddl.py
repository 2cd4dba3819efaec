"""Status lines on what records and proves the audit log: DDL recording (event triggers) and
the hash-chain seals.
"""

from __future__ import annotations

import psycopg

from hardening_pipeline.backup.tenant_key_copies import ledger_status
from hardening_pipeline.db.ddl_recording import EVENT_TRIGGERS as DDL_EVENT_TRIGGERS
from hardening_pipeline.db.ddl_recording import read_ddl_recording
from hardening_pipeline.db.shipped_functions import changed_functions, shipped_event_triggers
from hardening_pipeline.hardening.seals import verify_seal_chain
from hardening_pipeline.hardening.seals.anchor import read_anchor
from hardening_pipeline.hardening.status.model import CheckContext, check


@check(
    "audit_ddl_recorded",
    "DDL on audit and tenant tables is recorded in audit_events (event triggers and recording "
    "functions as the kit's migrations define them, compared by digest, ENABLE ALWAYS), or the "
    "server never allowed it and the line says so",
)
def check_ddl_recorded(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    state = read_ddl_recording(conn)
    if not state.migrated:
        return False, "hardening.record_ddl() is missing", "run hardening migrate."
    if not state.triggers and not state.meant_to_be_installed and not state.installs:
        # Informational green: a migration role that may not create event triggers is the
        # platform's limit, not a broken guarantee; the README's trust model says what it costs.
        # The note is the database's word; ddl_recording_installs (020) says it was never
        # installed, which the role that could drop the triggers cannot unsay.
        return (
            True,
            f"{state.note or 'not installed'}; DDL on audited tables is not recorded "
            "(Supabase: supautils lets postgres create event triggers; elsewhere a superuser "
            "runs SELECT hardening.install_ddl_recording())",
            "",
        )
    problems = []
    if state.installs and not state.triggers:
        problems.append(
            f"installed {state.installs[-1]} but both event triggers are gone (the note says "
            f"{state.note!r})"
        )
    # The reference is the kit's own migration files, never the database being checked.
    shipped = shipped_event_triggers()
    for name in DDL_EVENT_TRIGGERS:
        if name not in state.triggers:
            if state.triggers or not state.installs:
                problems.append(f"event trigger {name} is missing")
            continue
        enabled, function = state.triggers[name]
        event, tags = state.events[name]
        want = shipped[name]
        if enabled != "A":
            problems.append(f"event trigger {name} is {_EVENT_ENABLED.get(enabled, enabled)}")
        if event != want.event:
            problems.append(f"event trigger {name} fires on {event}, not {want.event}")
        if tags and not want.filtered:
            problems.append(f"event trigger {name} fires only for {', '.join(tags)}")
        expected = f"hardening.{want.function}()"
        if function != expected:
            problems.append(f"event trigger {name} runs {function}, not {expected}")
    problems += changed_functions(conn, list(DDL_RECORDING_FUNCTIONS))
    if not problems:
        return (
            True,
            f"{', '.join(DDL_EVENT_TRIGGERS)} ENABLE ALWAYS for every command; "
            f"{len(DDL_RECORDING_FUNCTIONS)} recording functions match the kit's migrations",
            "",
        )
    fix = (
        "as a superuser: SELECT hardening.install_ddl_recording(); for a function that differs, "
        "re-create it as the last migration file that defines it has it (its CREATE FUNCTION "
        "statement, as CREATE OR REPLACE); then find out who changed it (the server log: DDL on "
        "event triggers is not itself recorded) and look for DDL on the audited tables since."
    )
    return False, "; ".join(problems), fix


# What record_ddl() and record_ddl_drop() run: replacing any of them switches recording off.
DDL_RECORDING_FUNCTIONS = (
    "record_ddl",
    "record_ddl_drop",
    "ddl_audited_table",
    "ddl_object_table",
    "write_ddl_records",
    "statement_identity",
    "request_claims",
)


_EVENT_ENABLED = {"O": "ENABLE (skipped in replica mode)", "R": "ENABLE REPLICA", "D": "DISABLED"}


@check(
    "audit_seal_chain",
    "audit_events matches its hash-chain seals (no sealed row changed, deleted or forged) and "
    "the unsealed window its high-water marks recorded (no rewound sequence, reused id or "
    "back-dated row); the chain reaches the sealing host's anchor (no newest seal deleted) and "
    "sealing is not held back past HARDENING_SEAL_MAX_LAG_MINUTES",
)
def check_audit_seals(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # The database alone cannot reveal a rewrite of rows and seals together; with the store and
    # key (ctx.store, ctx.keyring) it can. See docs/audit-seal-format.md.
    result = verify_seal_chain(
        conn,
        store=ctx.store,
        keyring=ctx.keyring,
        anchor=read_anchor(ctx.seal_anchor),
        erased_rows=ctx.erased_rows,
    )
    return result.passed, result.detail, result.fix


@check(
    "tenant_key_ledger",
    "the tenant key ledger's copies (store, database) agree and hold every key a retained "
    "backup uses, unless erase-tenant destroyed it; every erasure is in both copies and on the "
    "audit log; no version of the store's copy is under a retention or legal hold; its table is "
    "at hardening.tenant_key_ledger and nowhere else, and every retained backup's manifest can "
    "be trusted",
)
def check_tenant_key_ledger(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    return ledger_status(conn, ctx.store, ctx.keyring)
