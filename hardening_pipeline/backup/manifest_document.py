"""The manifest as a JSON document: its dataclasses to plain JSON data, and strictly back.

Reading is deliberately strict (exact types, no unknown fields, sizes that add up): a manifest
decides what a restore loads and what retention deletes, so "mostly parseable" is not good
enough. ``manifest_signing.py`` authenticates the bytes before anything here reads them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from hardening_pipeline.backup.crypto import WRAPPED_KEY_BYTES
from hardening_pipeline.backup.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    READABLE_VERSIONS,
    AppSchemaEntry,
    DatabaseIdentity,
    Manifest,
    ManifestError,
    ObjectEntry,
    SchemaExtension,
    SchemaRole,
    SchemaVersion,
    SectionEntry,
    SequenceValue,
    TableEntry,
    format_timestamp,
)
from hardening_pipeline.backup.object_format import validate_name
from hardening_pipeline.db.catalog import CATALOG_KINDS

SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_MAX_INT = (1 << 63) - 1
_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_DIGITS_RE = re.compile(r"0|[1-9][0-9]{0,19}")

_TOP_FIELDS = (
    "format",
    "format_version",
    "backup_id",
    "created_at",
    "finished_at",
    "database",
    "schema",
    "key_id",
    "wrapped_data_key",
    "objects",
    "metadata",
)
# Sizes and digests of one stored object (data or schema), last in its entry.
_STORED_FIELDS = (
    "plaintext_bytes",
    "plaintext_sha256",
    "compressed_bytes",
    "ciphertext_bytes",
    "sha256",
)
_OBJECT_FIELDS = ("name", "tenant_id", "tables", *_STORED_FIELDS)
_TABLE_FIELDS = ("name", "columns", "row_count", "bytes", "sha256")
_APP_SCHEMA_FIELDS = (
    "name",
    "schemas",
    "pg_dump_version",
    "sections",
    "roles",
    "catalog",
    *_STORED_FIELDS,
)
# The schema object holds one pg_dump custom-format archive; backups written before held the
# plain-SQL pre-data and post-data sections (still read and verified, no longer restored).
_SECTION_LAYOUTS = (("archive",), ("pre-data", "post-data"))


# --- to JSON data ---------------------------------------------------------------------------


def _app_schema_to_dict(entry: AppSchemaEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "schemas": list(entry.schemas),
        "pg_dump_version": entry.pg_dump_version,
        "sections": [
            {"name": s.name, "bytes": s.bytes, "sha256": s.sha256} for s in entry.sections
        ],
        "roles": [{"name": r.name, "bypassrls": r.bypassrls} for r in entry.roles],
        "catalog": {kind: list(items) for kind, items in entry.catalog.items()},
        "extensions": [
            {"name": e.name, "schema": e.schema, "version": e.version} for e in entry.extensions
        ],
        "sequences": [
            {"name": q.name, "last_value": q.last_value, "is_called": q.is_called}
            for q in entry.sequences
        ],
        **(
            {"source_red_lines": list(entry.source_red_lines)}
            if entry.source_red_lines is not None
            else {}
        ),
        **_stored_to_dict(entry),
    }


def _stored_to_dict(entry: ObjectEntry | AppSchemaEntry) -> dict[str, Any]:
    """The sizes and digests every stored object carries, in the manifest's field order."""
    return {field: getattr(entry, field) for field in _STORED_FIELDS}


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """The manifest as plain JSON data, without the MAC."""
    body = _manifest_body(manifest)
    if manifest.app_schema is not None:
        body["app_schema"] = _app_schema_to_dict(manifest.app_schema)
    return body


def _manifest_body(manifest: Manifest) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": manifest.format_version,
        "backup_id": manifest.backup_id,
        "created_at": format_timestamp(manifest.created_at),
        "finished_at": format_timestamp(manifest.finished_at),
        "database": {
            "system_identifier": manifest.database.system_identifier,
            "database_name": manifest.database.database_name,
            "server_version": manifest.database.server_version,
        },
        "schema": {
            "last_migration": manifest.schema.last_migration,
            "last_migration_sha256": manifest.schema.last_migration_sha256,
            "applied_migrations": list(manifest.schema.applied_migrations),
        },
        "key_id": manifest.key_id,
        "wrapped_data_key": base64.b64encode(manifest.wrapped_data_key).decode("ascii"),
        "objects": [
            {
                "name": obj.name,
                "tenant_id": obj.tenant_id,
                "tables": [
                    {
                        "name": table.name,
                        "columns": list(table.columns),
                        "row_count": table.row_count,
                        "bytes": table.bytes,
                        "sha256": table.sha256,
                    }
                    for table in obj.tables
                ],
                **_stored_to_dict(obj),
                **({"tenant_key_id": obj.tenant_key_id} if obj.tenant_key_id else {}),
            }
            for obj in manifest.objects
        ],
        "metadata": dict(manifest.metadata),
    }


# --- strict parsing -------------------------------------------------------------------------


def _fields(
    value: Any, where: str, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"manifest field {where} must be an object.")
    missing = [name for name in required if name not in value]
    if missing:
        raise ManifestError(f"manifest field {where} is missing {', '.join(missing)}.")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise ManifestError(f"manifest field {where} has unknown field {unknown[0]!r}.")
    return value


def _str(value: Any, where: str, *, max_len: int = 1024, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"manifest field {where} must be a string.")
    if (not value and not allow_empty) or len(value) > max_len:
        raise ManifestError(f"manifest field {where} must be 1-{max_len} characters.")
    return value


def _int(value: Any, where: str) -> int:
    # bool is an int subclass in Python; JSON true is not a count.
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise ManifestError(f"manifest field {where} must be a non-negative integer.")
    return value


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SHA256_HEX_RE.fullmatch(value):
        raise ManifestError(f"manifest field {where} must be 64 lowercase hex digits.")
    return value


def _name(kind: str, value: Any, where: str) -> str:
    try:
        return validate_name(kind, value)
    except ValueError:
        raise ManifestError(
            f"manifest field {where} must be 1-128 characters of A-Z a-z 0-9 . _ -."
        ) from None


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(f"manifest field {where} must be a list.")
    return value


def _time(value: Any, where: str) -> datetime:
    if not isinstance(value, str) or not _TIMESTAMP_RE.fullmatch(value):
        raise ManifestError(f"manifest field {where} must look like 2026-01-31T02:00:00.000000Z.")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise ManifestError(f"manifest field {where} is not a real date and time.") from None


def manifest_from_dict(document: Any) -> Manifest:
    """Check JSON data field by field and build the ``Manifest`` it describes.

    Raises ``ManifestError`` naming the first field that is wrong.
    """
    # app_schema is the one optional field: backups written before it existed lack it.
    has_schema = isinstance(document, dict) and "app_schema" in document
    top = _fields(
        document, "(top level)", (*_TOP_FIELDS, "app_schema") if has_schema else _TOP_FIELDS
    )
    if top["format"] != MANIFEST_FORMAT:
        raise ManifestError(f"manifest field format must be {MANIFEST_FORMAT!r}.")
    if type(top["format_version"]) is not int or top["format_version"] not in READABLE_VERSIONS:
        raise ManifestError(f"manifest format_version must be one of {READABLE_VERSIONS}.")
    backup_id = _name("backup id", top["backup_id"], "backup_id")
    created_at = _time(top["created_at"], "created_at")
    finished_at = _time(top["finished_at"], "finished_at")
    if finished_at < created_at:
        raise ManifestError("manifest finished_at is earlier than created_at.")

    db = _fields(
        top["database"], "database", ("system_identifier", "database_name", "server_version")
    )
    system_id = _str(db["system_identifier"], "database.system_identifier", max_len=20)
    if not _DIGITS_RE.fullmatch(system_id) or int(system_id) >= 1 << 64:
        raise ManifestError("manifest field database.system_identifier must be a decimal uint64.")
    database = DatabaseIdentity(
        system_identifier=system_id,
        database_name=_str(db["database_name"], "database.database_name", max_len=255),
        server_version=_str(db["server_version"], "database.server_version", max_len=255),
    )

    sc = _fields(
        top["schema"], "schema", ("last_migration", "last_migration_sha256", "applied_migrations")
    )
    applied = tuple(
        _str(item, f"schema.applied_migrations[{i}]", max_len=255)
        for i, item in enumerate(_list(sc["applied_migrations"], "schema.applied_migrations"))
    )
    schema = SchemaVersion(
        last_migration=_str(sc["last_migration"], "schema.last_migration", max_len=255),
        last_migration_sha256=_sha(sc["last_migration_sha256"], "schema.last_migration_sha256"),
        applied_migrations=applied,
    )
    if not applied or applied[-1] != schema.last_migration:
        raise ManifestError(
            "manifest field schema.last_migration must be the last of schema.applied_migrations."
        )

    key_id = top["key_id"]
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise ManifestError("manifest field key_id must be 16 lowercase hex digits.")
    wrapped_text = _str(top["wrapped_data_key"], "wrapped_data_key", max_len=200)
    try:
        wrapped = base64.b64decode(wrapped_text, validate=True)
    except (binascii.Error, ValueError):
        raise ManifestError("manifest field wrapped_data_key is not valid base64.") from None
    if len(wrapped) != WRAPPED_KEY_BYTES or base64.b64encode(wrapped).decode() != wrapped_text:
        raise ManifestError(
            f"manifest field wrapped_data_key must be base64 of {WRAPPED_KEY_BYTES} bytes."
        )

    objects = tuple(
        _object_from_dict(item, f"objects[{i}]")
        for i, item in enumerate(_list(top["objects"], "objects"))
    )
    names = [obj.name for obj in objects]
    if len(set(names)) != len(names):
        raise ManifestError("manifest lists the same object name twice.")
    tenants = [obj.tenant_id for obj in objects]
    if len(set(tenants)) != len(tenants):
        raise ManifestError("manifest lists the same tenant (or the non-tenant object) twice.")

    raw_meta = top["metadata"]
    if not isinstance(raw_meta, dict):
        raise ManifestError("manifest field metadata must be an object.")
    metadata = {
        _str(k, "metadata key", max_len=255): _str(
            v, f"metadata.{k}", max_len=4096, allow_empty=True
        )
        for k, v in raw_meta.items()
    }
    app_schema = _app_schema_from_dict(top["app_schema"]) if has_schema else None
    if app_schema is not None and app_schema.name in names:
        raise ManifestError("manifest app_schema.name is also the name of a data object.")
    return Manifest(
        backup_id=backup_id,
        created_at=created_at,
        finished_at=finished_at,
        database=database,
        schema=schema,
        key_id=key_id,
        wrapped_data_key=wrapped,
        objects=objects,
        metadata=metadata,
        format_version=top["format_version"],
        app_schema=app_schema,
    )


def _app_schema_from_dict(value: Any) -> AppSchemaEntry:
    where = "app_schema"
    top = _fields(value, where, _APP_SCHEMA_FIELDS, ("extensions", "sequences", "source_red_lines"))
    name = _name("object name", top["name"], f"{where}.name")
    if name == MANIFEST_NAME:
        raise ManifestError(f"manifest field {where}.name may not be {MANIFEST_NAME}.")
    schemas = tuple(
        _str(item, f"{where}.schemas[{i}]", max_len=63)
        for i, item in enumerate(_list(top["schemas"], f"{where}.schemas"))
    )
    if not schemas or len(set(schemas)) != len(schemas):
        raise ManifestError(f"manifest field {where}.schemas must list distinct schema names.")
    sections = []
    for i, item in enumerate(_list(top["sections"], f"{where}.sections")):
        sec = _fields(item, f"{where}.sections[{i}]", ("name", "bytes", "sha256"))
        sections.append(
            SectionEntry(
                name=_str(sec["name"], f"{where}.sections[{i}].name", max_len=32),
                bytes=_int(sec["bytes"], f"{where}.sections[{i}].bytes"),
                sha256=_sha(sec["sha256"], f"{where}.sections[{i}].sha256"),
            )
        )
    if tuple(s.name for s in sections) not in _SECTION_LAYOUTS:
        raise ManifestError(
            f"manifest field {where}.sections must be one archive, or pre-data then post-data."
        )
    roles = []
    for i, item in enumerate(_list(top["roles"], f"{where}.roles")):
        role = _fields(item, f"{where}.roles[{i}]", ("name", "bypassrls"))
        if type(role["bypassrls"]) is not bool:
            raise ManifestError(f"manifest field {where}.roles[{i}].bypassrls must be a boolean.")
        role_name = _str(role["name"], f"{where}.roles[{i}].name", max_len=63)
        roles.append(SchemaRole(role_name, role["bypassrls"]))
    raw_catalog = _fields(top["catalog"], f"{where}.catalog", CATALOG_KINDS)
    catalog = {
        kind: tuple(
            _str(item, f"{where}.catalog.{kind}[{i}]", max_len=65536)
            for i, item in enumerate(_list(raw_catalog[kind], f"{where}.catalog.{kind}"))
        )
        for kind in CATALOG_KINDS
    }
    entry = AppSchemaEntry(
        name=name,
        schemas=schemas,
        pg_dump_version=_str(top["pg_dump_version"], f"{where}.pg_dump_version", max_len=64),
        sections=tuple(sections),
        roles=tuple(roles),
        catalog=catalog,
        **_stored_from_dict(top, where),
        extensions=_extensions_from(top.get("extensions", []), f"{where}.extensions"),
        sequences=_sequences_from(top.get("sequences", []), f"{where}.sequences"),
        source_red_lines=(
            tuple(
                _str(item, f"{where}.source_red_lines[{i}]", max_len=200)
                for i, item in enumerate(
                    _list(top["source_red_lines"], f"{where}.source_red_lines")
                )
            )
            if "source_red_lines" in top
            else None
        ),
    )
    if sum(s.bytes for s in sections) != entry.plaintext_bytes:
        raise ManifestError(
            f"manifest field {where}.plaintext_bytes is not the sum of its sections' bytes."
        )
    return entry


def _extensions_from(value: Any, where: str) -> tuple[SchemaExtension, ...]:
    found = []
    for i, item in enumerate(_list(value, where)):
        ext = _fields(item, f"{where}[{i}]", ("name", "schema", "version"))
        found.append(
            SchemaExtension(
                _str(ext["name"], f"{where}[{i}].name", max_len=63),
                _str(ext["schema"], f"{where}[{i}].schema", max_len=63),
                _str(ext["version"], f"{where}[{i}].version", max_len=64),
            )
        )
    return tuple(found)


def _sequences_from(value: Any, where: str) -> tuple[SequenceValue, ...]:
    found = []
    for i, item in enumerate(_list(value, where)):
        seq = _fields(item, f"{where}[{i}]", ("name", "last_value", "is_called"))
        last = seq["last_value"]
        if type(last) is not int or type(seq["is_called"]) is not bool:
            raise ManifestError(
                f"manifest field {where}[{i}] needs an integer last_value and a boolean is_called."
            )
        found.append(
            SequenceValue(
                _str(seq["name"], f"{where}[{i}].name", max_len=200), last, seq["is_called"]
            )
        )
    return tuple(found)


def _stored_from_dict(fields: dict[str, Any], where: str) -> dict[str, Any]:
    """The checked ``_STORED_FIELDS`` of an object or schema entry."""
    # Byte counts are whole numbers, digests SHA-256 hex; each checked the same way everywhere.
    return {
        name: (_sha if name in ("plaintext_sha256", "sha256") else _int)(
            fields[name], f"{where}.{name}"
        )
        for name in _STORED_FIELDS
    }


def _object_from_dict(value: Any, where: str) -> ObjectEntry:
    obj = _fields(value, where, _OBJECT_FIELDS, ("tenant_key_id",))
    name = _name("object name", obj["name"], f"{where}.name")
    if name == MANIFEST_NAME:
        raise ManifestError(f"manifest field {where}.name may not be {MANIFEST_NAME}.")
    tenant = obj["tenant_id"]
    if tenant is not None:
        tenant = _str(tenant, f"{where}.tenant_id", max_len=255)
    tables = tuple(
        _table_from_dict(item, f"{where}.tables[{i}]")
        for i, item in enumerate(_list(obj["tables"], f"{where}.tables"))
    )
    if len({t.name for t in tables}) != len(tables):
        raise ManifestError(f"manifest field {where}.tables lists a table twice.")
    tenant_key_id = obj.get("tenant_key_id")
    if tenant_key_id is not None and (
        tenant is None
        or not isinstance(tenant_key_id, str)
        or not KEY_ID_RE.fullmatch(tenant_key_id)
    ):
        raise ManifestError(
            f"manifest field {where}.tenant_key_id must be 16 lowercase hex digits, on a tenant "
            "object only."
        )
    entry = ObjectEntry(
        name=name,
        tenant_id=tenant,
        tables=tables,
        **_stored_from_dict(obj, where),
        tenant_key_id=tenant_key_id,
    )
    if sum(t.bytes for t in tables) != entry.plaintext_bytes:
        raise ManifestError(
            f"manifest field {where}.plaintext_bytes is not the sum of its tables' bytes."
        )
    return entry


def _table_from_dict(value: Any, where: str) -> TableEntry:
    table = _fields(value, where, _TABLE_FIELDS)
    columns = tuple(
        _str(col, f"{where}.columns[{i}]", max_len=255)
        for i, col in enumerate(_list(table["columns"], f"{where}.columns"))
    )
    if not columns:
        raise ManifestError(f"manifest field {where}.columns must not be empty.")
    return TableEntry(
        name=_str(table["name"], f"{where}.name", max_len=255),
        columns=columns,
        row_count=_int(table["row_count"], f"{where}.row_count"),
        bytes=_int(table["bytes"], f"{where}.bytes"),
        sha256=_sha(table["sha256"], f"{where}.sha256"),
    )
