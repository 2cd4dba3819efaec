"""DDL on the record: the event triggers of 016_ddl_on_the_record, read, paused and reinstalled.

The capture triggers see row writes; a table owner rewrites rows with DDL (``ALTER ... TYPE
... USING``) or switches capture off (``DISABLE TRIGGER USER``) without any of them firing.
016 installs two event triggers that put such DDL on the record as ``DDL`` rows of
``audit_events``, where the server lets the migration role create event triggers, and notes the
outcome in the comment on ``hardening.record_ddl()``.

A restore rebuilds a database with DDL of its own (dropping keys and switching triggers off for
the bulk load, then putting them back). That is not a change to the app's data, and rows it
would record would not be in the backup, so the restore pauses recording while it runs and
puts the event triggers back (``pg_dump`` of selected schemas does not carry event triggers).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

EVENT_TRIGGERS = ("hardening_record_ddl", "hardening_record_ddl_drop")
RECORD_FUNCTION = "hardening.record_ddl()"
INSTALLED = "installed"

_STATE = """
    SELECT pg_catalog.to_regprocedure(%s) IS NOT NULL,
           pg_catalog.obj_description(pg_catalog.to_regprocedure(%s), 'pg_proc')
"""
_TRIGGERS = """
    SELECT e.evtname, e.evtenabled, p.oid::regprocedure::text, e.evtevent, e.evttags
    FROM pg_catalog.pg_event_trigger e
    JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
    WHERE e.evtname = ANY(%s)
"""

_INSTALLS_TABLE = "SELECT pg_catalog.to_regclass('hardening.ddl_recording_installs')"  # 020


@dataclass(frozen=True)
class DdlRecording:
    """What 016 decided and what the catalog holds now."""

    migrated: bool  # hardening.record_ddl() exists
    note: str  # its comment: "installed" or "not installed: <why>"
    triggers: dict[str, tuple[str, str]]  # name -> (evtenabled, function)
    # name -> (event, the WHEN TAG IN list or None when it fires for every command)
    events: dict[str, tuple[str, list[str] | None]] = field(default_factory=dict)
    # when install_ddl_recording() installed the triggers (020), oldest first
    installs: list[str] = field(default_factory=list)

    @property
    def meant_to_be_installed(self) -> bool:
        return self.note == INSTALLED


def read_ddl_recording(conn: psycopg.Connection) -> DdlRecording:
    cur = conn.cursor(row_factory=tuple_row)
    migrated, note = cur.execute(_STATE, (RECORD_FUNCTION, RECORD_FUNCTION)).fetchone()
    rows = cur.execute(_TRIGGERS, (list(EVENT_TRIGGERS),)).fetchall()
    triggers = {name: (enabled, function) for name, enabled, function, _, _ in rows}
    events = {name: (event, tags) for name, _, _, event, tags in rows}
    installs = []
    if cur.execute(_INSTALLS_TABLE).fetchone()[0]:
        installs = [
            f"{at:%Y-%m-%d %H:%M} UTC by {by}"
            for at, by in cur.execute(
                "SELECT installed_at AT TIME ZONE 'UTC', installed_by "
                "FROM hardening.ddl_recording_installs ORDER BY id"
            ).fetchall()
        ]
    return DdlRecording(bool(migrated), note or "", triggers, events, installs)


@contextmanager
def ddl_recording_paused(conn: psycopg.Connection) -> Iterator[None]:
    """Disable the kit's event triggers for the block (same transaction), then ENABLE ALWAYS.

    Only for rebuilding a database from a backup; needs the right to alter event triggers,
    which whoever could install them has.
    """
    present = list(read_ddl_recording(conn).triggers)
    for name in present:
        conn.execute(sql.SQL("ALTER EVENT TRIGGER {} DISABLE").format(sql.Identifier(name)))
    yield
    for name in present:
        conn.execute(sql.SQL("ALTER EVENT TRIGGER {} ENABLE ALWAYS").format(sql.Identifier(name)))


def reinstall_ddl_recording(conn: psycopg.Connection) -> str | None:
    """Put the event triggers back where the backed-up database had them; None if not needed.

    A schema dump restores ``hardening.record_ddl()`` and its "installed" note but not the
    event triggers; without them the status line would be red on every restored copy.
    """
    state = read_ddl_recording(conn)
    if not state.meant_to_be_installed or set(state.triggers) == set(EVENT_TRIGGERS):
        return None
    cur = conn.cursor(row_factory=tuple_row)
    return cur.execute("SELECT hardening.install_ddl_recording()").fetchone()[0]
