"""The backup manifest: what a backup holds, how its folder and objects are named.

A backup exists only once its ``manifest.json`` is written, last, into the backup's folder, and
only if that manifest verifies. The manifest is canonical JSON carrying an HMAC-SHA256 under a
key derived from the master key, so a reader with the key can trust every size, digest, row
count and the wrapped data key in it before downloading a single object. Field by field and byte
by byte in ``docs/backup-format.md``.

This module holds the manifest's contents as dataclasses; ``manifest_document.py`` turns them
into JSON data and strictly back, and ``manifest_signing.py`` writes and authenticates the
signed bytes (``sign_manifest``, ``load_manifest``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from hardening_pipeline.backup.crypto import BackupIntegrityError, Keyring, WrappedDataKey
from hardening_pipeline.backup.object_format import validate_name
from hardening_pipeline.errors import HardeningError

MANIFEST_FORMAT = "hardening-pipeline-backup-manifest"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 2 keys the digests of tenant-key objects: tenant_digests.py
MANIFEST_NAME = "manifest.json"
MAC_FIELD = "hmac_sha256"
NON_TENANT_OBJECT_NAME = "shared.hpb"
MAX_MANIFEST_BYTES = 64 << 20
MAX_CLOCK_SKEW = timedelta(minutes=5)

_SAFE_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


class ManifestError(HardeningError):
    """A manifest is malformed, altered, or signed with a key that does not verify it."""


@dataclass(frozen=True)
class DatabaseIdentity:
    """Which database was backed up; a restore refuses a manifest for some other database.

    ``system_identifier`` is Postgres' 64-bit cluster id, kept as a decimal string because JSON
    numbers above 2^53 do not survive every parser.
    """

    system_identifier: str
    database_name: str
    server_version: str


@dataclass(frozen=True)
class SchemaVersion:
    """The migrations applied when the snapshot was taken, so a restore applies the same ones."""

    last_migration: str
    last_migration_sha256: str
    applied_migrations: tuple[str, ...]


@dataclass(frozen=True)
class TableEntry:
    """One table's ``COPY`` text inside an object.

    Tables are listed in load (foreign-key) order, and an object's plaintext is their ``COPY``
    text concatenated in that order; ``bytes`` is what lets a reader cut it apart again.
    ``sha256`` is over exactly those bytes, keyed for tenant-key objects (``tenant_digests.py``).
    """

    name: str
    columns: tuple[str, ...]
    row_count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ObjectEntry:
    """One encrypted object: a tenant's rows, or (``tenant_id is None``) the non-tenant tables.

    ``name`` is relative to the backup's folder, so a bucket can be moved or re-prefixed without
    invalidating the manifest. ``sha256`` and ``ciphertext_bytes`` cover the stored bytes exactly.
    """

    name: str
    tenant_id: str | None
    tables: tuple[TableEntry, ...]
    plaintext_bytes: int
    plaintext_sha256: str
    compressed_bytes: int
    ciphertext_bytes: int
    sha256: str
    # The id of the tenant's own data key (from the key ledger) that encrypts this object; None
    # for the shared object and for tenant objects of backups written before per-tenant keys,
    # which the manifest's shared data key opens.
    tenant_key_id: str | None = None


@dataclass(frozen=True)
class SectionEntry:
    """One ``pg_dump`` section inside the schema object: its length and SHA-256."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SchemaRole:
    """A role the backed-up schema refers to (owner, grantee or policy role)."""

    name: str
    bypassrls: bool


@dataclass(frozen=True)
class SchemaExtension:
    """An extension the database had at backup time, created first on a restore target."""

    name: str
    schema: str
    version: str


@dataclass(frozen=True)
class SequenceValue:
    """A sequence of the backed-up schemas and where it stood (``last_value``, ``is_called``).

    A schema dump carries no sequence positions, and one that no column owns (an invoice
    counter) cannot be worked out from the rows.
    """

    name: str
    last_value: int
    is_called: bool


@dataclass(frozen=True)
class AppSchemaEntry:
    """The encrypted ``pg_dump --schema-only`` object and what a restore checks it against.

    ``sections`` cut the object's plaintext apart like ``tables`` do for data objects;
    ``catalog`` is the summary of the schemas' objects at backup time, compared with the
    restored database's; ``roles`` are created (NOLOGIN) in a restore target that lacks them.
    Absent (``None`` on the manifest) in backups written before backups carried the schema.
    """

    name: str
    schemas: tuple[str, ...]
    pg_dump_version: str
    sections: tuple[SectionEntry, ...]
    roles: tuple[SchemaRole, ...]
    catalog: Mapping[str, tuple[str, ...]]
    plaintext_bytes: int
    plaintext_sha256: str
    compressed_bytes: int
    ciphertext_bytes: int
    sha256: str
    # Absent in manifests written before they were recorded.
    extensions: tuple[SchemaExtension, ...] = ()
    sequences: tuple[SequenceValue, ...] = ()
    # The status lines red on the source when it was backed up (None: not recorded), so a drill
    # tells what the restore broke from what the app already had.
    source_red_lines: tuple[str, ...] | None = None

    def section(self, name: str) -> SectionEntry | None:
        return next((s for s in self.sections if s.name == name), None)


@dataclass(frozen=True)
class Manifest:
    """Everything a restore needs to find, authenticate, decrypt and check a backup.

    ``created_at`` is the instant of the database snapshot (UTC), which is what RPO is measured
    from; ``finished_at`` is when the last object was stored. ``metadata`` is free-form
    string-to-string context (tool version, snapshot name, ...) that is authenticated like
    everything else but that no reader depends on.
    """

    backup_id: str
    created_at: datetime
    finished_at: datetime
    database: DatabaseIdentity
    schema: SchemaVersion
    key_id: str
    wrapped_data_key: bytes = field(repr=False)
    objects: tuple[ObjectEntry, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    format_version: int = MANIFEST_VERSION
    app_schema: AppSchemaEntry | None = None

    @property
    def stored_objects(self) -> tuple[ObjectEntry | AppSchemaEntry, ...]:
        """Every object in the backup's folder besides the manifest, schema object included."""
        return (*self.objects, *([self.app_schema] if self.app_schema else []))

    @property
    def wrapped(self) -> WrappedDataKey:
        return WrappedDataKey(self.key_id, self.wrapped_data_key)

    def object(self, name: str) -> ObjectEntry:
        for entry in self.objects:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def folder(self, prefix: str) -> str:
        return backup_folder(prefix, self.backup_id, self.created_at)


# --- names and layout -----------------------------------------------------------------------


def new_backup_id(created_at: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: sorts by time, unique without coordination."""
    stamp = _as_utc(created_at, "created_at").strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(4)}"


def backup_folder(prefix: str, backup_id: str, created_at: datetime) -> str:
    """``<prefix>/<YYYY>/<MM>/<DD>/<backup-id>/`` (dates in UTC), the only place a backup lives."""
    validate_name("backup id", backup_id)
    day = _as_utc(created_at, "created_at").strftime("%Y/%m/%d")
    prefix = prefix.strip("/")
    return f"{prefix}/{day}/{backup_id}/" if prefix else f"{day}/{backup_id}/"


def tenant_object_name(tenant_id: str) -> str:
    """Object name for a tenant: ``tenant-<id>.hpb``, or a digest of the id if it is not safe.

    Readers never derive names; they take them from the manifest. This only keeps names short,
    unique and path-safe.
    """
    if _SAFE_TENANT_RE.fullmatch(tenant_id):
        return f"tenant-{tenant_id}.hpb"
    digest = hashlib.sha256(tenant_id.encode("utf-8")).hexdigest()
    return f"tenant-h{digest[:40]}.hpb"


def _as_utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """The manifest's one spelling of an instant: UTC, microseconds, ``Z``."""
    return _as_utc(value, "timestamp").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- data key -------------------------------------------------------------------------------


def unwrap_data_key(manifest: Manifest, keyring: Keyring) -> bytes:
    """The backup's data key, unwrapped with whichever configured master key it names."""
    return keyring.unwrap_data_key(manifest.wrapped, manifest.backup_id)


def rewrap_manifest(manifest: Manifest, keyring: Keyring) -> Manifest:
    """Re-wrap a manifest's data key under the current master key (key rotation).

    Objects are untouched: their headers carry the data key's id, not the master key's.
    Sign the result with ``sign_manifest`` and replace ``manifest.json``.
    """
    wrapped = keyring.rewrap_data_key(manifest.wrapped, manifest.backup_id)
    return replace(manifest, key_id=wrapped.key_id, wrapped_data_key=wrapped.ciphertext)


__all__ = [
    "MAC_FIELD",
    "MANIFEST_NAME",
    "MAX_CLOCK_SKEW",
    "MAX_MANIFEST_BYTES",
    "NON_TENANT_OBJECT_NAME",
    "AppSchemaEntry",
    "BackupIntegrityError",
    "DatabaseIdentity",
    "Manifest",
    "ManifestError",
    "ObjectEntry",
    "SchemaExtension",
    "SchemaRole",
    "SchemaVersion",
    "SectionEntry",
    "SequenceValue",
    "TableEntry",
    "backup_folder",
    "format_timestamp",
    "new_backup_id",
    "rewrap_manifest",
    "tenant_object_name",
    "unwrap_data_key",
]
