"""Audit rows as the verifier reads them, and their row hashes, computed here in Python.

Rows are fetched in Postgres's binary format and hashed from those bytes. No SQL function,
cast or operator takes part in a digest, so replacing one (``pg_catalog.sha256`` has been)
cannot make a forged row hash like the row it replaced. The server still renders each value
with its type's built-in send function and filters rows by id; the verifier checks that the
ids arrive in increasing order inside the range it asked for, and that every column still has
the type the format expects.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.adapt import Loader
from psycopg.pq import Format

from hardening_pipeline.hardening.seals.format import SealError

FETCH_ROWS = 10_000
MIN_BIGINT = -(2**63)
MAX_BIGINT = 2**63 - 1
ROW_DOMAIN_V2 = b"hardening-pipeline audit row v2\x00"

# The columns a row hash covers, in order, with the type oid each must have.
INT8, TEXT, UUID, JSONB, TIMESTAMPTZ, XID, TID = 20, 25, 2950, 3802, 1184, 28, 27
COLUMNS: tuple[tuple[str, int], ...] = (
    ("id", INT8),
    ("actor", TEXT),
    ("tenant_id", UUID),
    ("table_name", TEXT),
    ("operation", TEXT),
    ("record_id", TEXT),
    ("before", JSONB),
    ("after", JSONB),
    ("created_at", TIMESTAMPTZ),
    ("db_role", TEXT),
    ("txid", INT8),
)
CREATED_AT = 8
_PG_EPOCH = datetime(2000, 1, 1)  # naive: Postgres's binary timestamps count from here in UTC

Fields = tuple[bytes | None, ...]


class _Raw(Loader):
    """The value exactly as the server sent it in binary: no parsing, no conversion."""

    format = Format.BINARY

    def load(self, data: bytes | bytearray | memoryview) -> bytes:
        return bytes(data)


def raw_cursor(conn: psycopg.Connection, name: str) -> psycopg.ServerCursor:
    """A binary server-side cursor whose every value of the types below arrives as raw bytes."""
    if conn.info.encoding.replace("-", "").lower() != "utf8":
        raise SealError(f"the connection's client encoding is {conn.info.encoding}, not UTF-8")
    cur = conn.cursor(name=name, binary=True, row_factory=psycopg.rows.tuple_row)
    for oid in (INT8, TEXT, UUID, JSONB, TIMESTAMPTZ, XID, TID):
        cur.adapters.register_loader(oid, _Raw)
    cur.itersize = FETCH_ROWS
    return cur


def check_types(description: list, offset: int = 0) -> None:
    """Refuse rows whose columns no longer have the types the format is defined on."""
    for (name, oid), column in zip(COLUMNS, description[offset:], strict=False):
        if column.type_code != oid:
            raise SealError(
                f"audit_events.{name} now has type oid {column.type_code}, not {oid}: the table "
                "was altered, so its rows no longer read as they were sealed"
            )


def int8(raw: bytes) -> int:
    return struct.unpack(">q", raw)[0]


def jsonb_text(raw: bytes) -> bytes:
    if raw[:1] != b"\x01":
        raise SealError("a jsonb value arrived in an unknown binary version")
    return raw[1:]


_COLUMN_LIST = sql.SQL(", ").join(sql.Identifier(name) for name, _ in COLUMNS)
_ROWS = sql.SQL(
    """
    SELECT {columns} FROM public.audit_events
    WHERE id > %(after)s AND id <= %(upto)s
    ORDER BY id
    """
).format(columns=_COLUMN_LIST)
_TENANT_ROWS = sql.SQL(
    """
    SELECT {columns} FROM public.audit_events
    WHERE tenant_id = %(tenant)s::uuid AND id > %(after)s AND id <= %(upto)s
    ORDER BY id
    """
).format(columns=_COLUMN_LIST)


def audit_rows(
    conn: psycopg.Connection, after: int, upto: int = MAX_BIGINT, *, tenant: str | None = None
) -> Iterator[tuple[int, Fields]]:
    """(id, raw binary values of ``COLUMNS``) for rows with ``after < id <= upto``, in id order;
    only ``tenant``'s rows when one is given."""
    with raw_cursor(conn, "audit_seal_rows") as cur:
        params = {"after": after, "upto": upto, "tenant": tenant}
        cur.execute(_ROWS if tenant is None else _TENANT_ROWS, params)
        checked = False
        previous = after
        for row in cur:
            if not checked:
                check_types(cur.description)
                checked = True
            row_id = int8(row[0])
            if not previous < row_id <= upto:
                raise SealError(
                    f"the database returned id {row_id} after id {previous} for the range "
                    f"{after + 1}..{upto}: rows are not coming back in id order"
                )
            previous = row_id
            yield row_id, row


def created_us(fields: Fields) -> int:
    """created_at as microseconds since 2000-01-01 00:00:00 UTC (Postgres's own unit)."""
    raw = fields[CREATED_AT]
    if raw is None:
        raise SealError("a row has no created_at")
    return int8(raw)


def row_hash_v2(fields: Fields) -> bytes:
    """SHA-256 over the length-prefixed values (docs/audit-seal-format.md, "Row hash")."""
    h = hashlib.sha256(ROW_DOMAIN_V2)
    for (_, oid), raw in zip(COLUMNS, fields, strict=False):
        if raw is None:
            h.update(b"\x00")
            continue
        value = jsonb_text(raw) if oid == JSONB else raw
        h.update(b"\x01" + struct.pack(">I", len(value)) + value)
    return h.digest()


# --- format 1: the row text the database used to hash, reproduced -----------------------------

# Postgres's escape_json: these two, the five named controls, every other control as \u00XX.
_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\b"): "\\b",
    ord("\f"): "\\f",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def _json_string(raw: bytes) -> str:
    return '"' + raw.decode("utf-8").translate(_JSON_ESCAPES) + '"'


def _json_timestamp(us: int) -> str:
    """How jsonb renders a ``timestamp``: ISO 8601 with a T, fractional zeros trimmed."""
    if us == MAX_BIGINT:
        return '"infinity"'
    if us == MIN_BIGINT:
        return '"-infinity"'
    try:
        ts = _PG_EPOCH + timedelta(microseconds=us)
    except OverflowError:
        raise SealError("a created_at outside years 1..9999 has no format 1 text") from None
    text = (
        f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}"
    )
    if ts.microsecond:
        text += f".{ts.microsecond:06d}".rstrip("0")
    return f'"{text}"'


def row_text_v1(fields: Fields) -> bytes:
    """``jsonb_build_array(id, ..., created_at AT TIME ZONE 'UTC', db_role, txid)::text``."""
    parts: list[str] = []
    for (_, oid), raw in zip(COLUMNS, fields, strict=False):
        if raw is None:
            parts.append("null")
        elif oid == INT8:
            parts.append(str(int8(raw)))
        elif oid == TEXT:
            parts.append(_json_string(raw))
        elif oid == UUID:
            parts.append(f'"{uuid.UUID(bytes=raw)}"')
        elif oid == JSONB:
            parts.append(jsonb_text(raw).decode("utf-8"))
        else:
            parts.append(_json_timestamp(int8(raw)))
    return ("[" + ", ".join(parts) + "]").encode("utf-8")


def row_hash_v1(fields: Fields) -> bytes:
    return hashlib.sha256(row_text_v1(fields)).digest()


ROW_HASHES = {1: row_hash_v1, 2: row_hash_v2}
