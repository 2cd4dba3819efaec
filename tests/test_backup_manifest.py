"""The manifest: round trip, authentication, strict parsing, rotation and layout helpers."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from hardening_pipeline.backup.crypto import (
    BackupIntegrityError,
    Keyring,
    UnknownKeyError,
    generate_data_key,
    master_key_id,
)
from hardening_pipeline.backup.manifest import (
    MAC_FIELD,
    DatabaseIdentity,
    Manifest,
    ManifestError,
    ObjectEntry,
    SchemaVersion,
    TableEntry,
    backup_folder,
    new_backup_id,
    rewrap_manifest,
    tenant_object_name,
    unwrap_data_key,
)
from hardening_pipeline.backup.manifest_document import manifest_to_dict
from hardening_pipeline.backup.manifest_signing import canonical_json, load_manifest, sign_manifest

CREATED = datetime(2026, 1, 15, 2, 0, 0, 123456, tzinfo=UTC)
NOW = CREATED + timedelta(hours=1)


def table(name: str, text: bytes, rows: int) -> TableEntry:
    return TableEntry(
        name=name,
        columns=("id", "tenant_id", "name"),
        row_count=rows,
        bytes=len(text),
        sha256=hashlib.sha256(text).hexdigest(),
    )


def make_manifest(keyring: Keyring, data_key: bytes | None = None) -> Manifest:
    backup_id = "20260115T020000Z-0a1b2c3d"
    wrapped = keyring.wrap_data_key(data_key or generate_data_key(), backup_id)
    tenant_tables = (table("tenants", b"1\t1\tAcme\n", 1), table("units", b"", 0))
    shared_tables = (table("plans", "é\t\\N\tPro ✓\n".encode(), 1),)
    return Manifest(
        backup_id=backup_id,
        created_at=CREATED,
        finished_at=CREATED + timedelta(seconds=42),
        database=DatabaseIdentity("7312345678901234567", "app", "16.4"),
        schema=SchemaVersion(
            last_migration="002_audit.sql",
            last_migration_sha256="ab" * 32,
            applied_migrations=("001_baseline.sql", "002_audit.sql"),
        ),
        key_id=wrapped.key_id,
        wrapped_data_key=wrapped.ciphertext,
        objects=(
            ObjectEntry(
                name=tenant_object_name("1"),
                tenant_id="1",
                tables=tenant_tables,
                plaintext_bytes=sum(t.bytes for t in tenant_tables),
                plaintext_sha256="cd" * 32,
                compressed_bytes=30,
                ciphertext_bytes=100,
                sha256="ef" * 32,
            ),
            ObjectEntry(
                name="shared.hpb",
                tenant_id=None,
                tables=shared_tables,
                plaintext_bytes=shared_tables[0].bytes,
                plaintext_sha256="01" * 32,
                compressed_bytes=20,
                ciphertext_bytes=90,
                sha256="23" * 32,
            ),
        ),
        metadata={"tool_version": "0.1.0"},
    )


def resign(document: dict[str, Any], keyring: Keyring) -> bytes:
    """Produce a correctly MAC'd file for arbitrary content, to reach the strict validator."""
    body = {k: v for k, v in document.items() if k != MAC_FIELD}
    mac = keyring.manifest_mac(keyring.current_key_id, canonical_json(body))
    return canonical_json({**body, MAC_FIELD: mac.hex()})


def test_round_trip(keyring: Keyring) -> None:
    manifest = make_manifest(keyring)
    raw = sign_manifest(manifest, keyring)
    assert load_manifest(raw, keyring, now=NOW) == manifest
    assert raw == canonical_json(json.loads(raw))
    assert raw.isascii()
    document = json.loads(raw)
    assert document["created_at"] == "2026-01-15T02:00:00.123456Z"
    assert document["objects"][1]["tenant_id"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", document[MAC_FIELD])
    # The helper the negative tests rely on produces loadable files from valid content.
    assert load_manifest(resign(manifest_to_dict(manifest), keyring), keyring, now=NOW) == manifest


def test_load_uses_the_real_clock_by_default(keyring: Keyring) -> None:
    manifest = make_manifest(keyring)
    assert load_manifest(sign_manifest(manifest, keyring), keyring).backup_id == manifest.backup_id


def test_flipping_any_byte_is_rejected(keyring: Keyring) -> None:
    raw = sign_manifest(make_manifest(keyring), keyring)
    for i in range(len(raw)):
        for bit in (0x01, 0x20):
            bad = bytearray(raw)
            bad[i] ^= bit
            with pytest.raises((ManifestError, UnknownKeyError)):
                load_manifest(bytes(bad), keyring, now=NOW)


def test_other_edits_with_a_stale_mac_are_rejected(keyring: Keyring) -> None:
    raw = sign_manifest(make_manifest(keyring), keyring)
    document = json.loads(raw)
    edits = [
        lambda d: d["objects"][0]["tables"][0].update(row_count=2),
        lambda d: d["objects"].reverse(),
        lambda d: d["objects"].pop(),
        lambda d: d.update(backup_id="20260115T020000Z-ffffffff"),
        lambda d: d["metadata"].update(extra="x"),
    ]
    for edit in edits:
        changed = copy.deepcopy(document)
        edit(changed)
        with pytest.raises(ManifestError, match="authentication failed"):
            load_manifest(canonical_json(changed), keyring, now=NOW)
    for variant in (raw + b"\n", b" " + raw, json.dumps(document, indent=1).encode()):
        with pytest.raises(ManifestError):
            load_manifest(variant, keyring, now=NOW)


def test_wrong_key_previous_key_and_rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    data_key = generate_data_key()
    raw = sign_manifest(make_manifest(Keyring(old), data_key), Keyring(old))

    with pytest.raises(UnknownKeyError) as info:
        load_manifest(raw, Keyring(new), now=NOW)
    assert master_key_id(old) in str(info.value)
    assert "BACKUP_ENCRYPTION_KEYS_PREVIOUS" in str(info.value)

    rotated = Keyring(new, [old])
    manifest = load_manifest(raw, rotated, now=NOW)
    assert unwrap_data_key(manifest, rotated) == data_key

    rewrapped = rewrap_manifest(manifest, rotated)
    assert rewrapped.key_id == master_key_id(new) and rewrapped.objects == manifest.objects
    fresh = load_manifest(sign_manifest(rewrapped, rotated), Keyring(new), now=NOW)
    assert unwrap_data_key(fresh, Keyring(new)) == data_key


def test_a_mac_forged_under_an_attackers_key_does_not_verify(keyring: Keyring) -> None:
    raw = sign_manifest(make_manifest(keyring), keyring)
    attacker = Keyring(os.urandom(32))
    document = json.loads(raw)
    forged = resign(dict(document, key_id=attacker.current_key_id), attacker)
    with pytest.raises(UnknownKeyError):
        load_manifest(forged, keyring, now=NOW)
    same_id = resign(document, attacker)  # claims the victim's key id, MAC'd with another key
    with pytest.raises(ManifestError, match="authentication failed"):
        load_manifest(same_id, keyring, now=NOW)


def test_wrapped_key_swapped_from_another_backup_fails_to_unwrap(keyring: Keyring) -> None:
    manifest = make_manifest(keyring)
    other = keyring.wrap_data_key(generate_data_key(), "20260116T020000Z-00000000")
    swapped = replace(manifest, wrapped_data_key=other.ciphertext)
    loaded = load_manifest(sign_manifest(swapped, keyring), keyring, now=NOW)
    with pytest.raises(BackupIntegrityError):
        unwrap_data_key(loaded, keyring)


def _document(keyring: Keyring) -> dict[str, Any]:
    return manifest_to_dict(make_manifest(keyring))


TOP = [
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
]


@pytest.mark.parametrize("field_name", TOP)
def test_missing_top_level_field(keyring: Keyring, field_name: str) -> None:
    document = _document(keyring)
    del document[field_name]
    with pytest.raises(ManifestError):
        load_manifest(resign(document, keyring), keyring, now=NOW)


@pytest.mark.parametrize(
    ("path", "field_name"),
    [
        (("database",), "system_identifier"),
        (("schema",), "applied_migrations"),
        (("objects", 0), "sha256"),
        (("objects", 0), "tenant_id"),
        (("objects", 1), "ciphertext_bytes"),
        (("objects", 0, "tables", 0), "row_count"),
        (("objects", 0, "tables", 1), "columns"),
    ],
)
def test_missing_nested_field(keyring: Keyring, path: tuple, field_name: str) -> None:
    document = _document(keyring)
    target: Any = document
    for step in path:
        target = target[step]
    del target[field_name]
    with pytest.raises(ManifestError, match=f"missing {field_name}"):
        load_manifest(resign(document, keyring), keyring, now=NOW)


BAD_VALUES = [
    (("backup_id",), 12),
    (("backup_id",), "../escape"),
    (("backup_id",), ""),
    (("created_at",), "2026-01-15T02:00:00Z"),
    (("created_at",), "2026-02-30T02:00:00.000000Z"),
    (("created_at",), 1768442400),
    (("finished_at",), "2026-01-15T01:00:00.000000Z"),
    (("database", "system_identifier"), 7312345678901234567),
    (("database", "system_identifier"), "-1"),
    (("database", "system_identifier"), "99999999999999999999"),
    (("database", "database_name"), None),
    (("schema", "applied_migrations"), "001_baseline.sql"),
    (("schema", "applied_migrations"), ["001_baseline.sql"]),
    (("schema", "last_migration_sha256"), "AB" * 32),
    (("key_id",), None),
    (("wrapped_data_key",), "!!!"),
    (("wrapped_data_key",), "AAAA"),
    (("objects",), {}),
    (("objects", 0), []),
    (("objects", 0, "name"), "manifest.json"),
    (("objects", 0, "name"), "a/b"),
    (("objects", 0, "tenant_id"), 1),
    (("objects", 0, "plaintext_bytes"), "10"),
    (("objects", 0, "plaintext_bytes"), 10.0),
    (("objects", 0, "plaintext_bytes"), True),
    (("objects", 0, "ciphertext_bytes"), -1),
    (("objects", 0, "ciphertext_bytes"), 1 << 63),
    (("objects", 0, "sha256"), "ef" * 31),
    (("objects", 0, "tables"), None),
    (("objects", 0, "tables", 0, "row_count"), None),
    (("objects", 0, "tables", 0, "bytes"), 999),
    (("objects", 0, "tables", 0, "columns"), []),
    (("objects", 0, "tables", 0, "columns"), ["id", 3]),
    (("objects", 1, "tenant_id"), "1"),
    (("objects", 1, "name"), "tenant-1.hpb"),
    (("metadata",), {"k": 1}),
    (("metadata",), []),
    (("format",), "something-else"),
]


@pytest.mark.parametrize(("path", "value"), BAD_VALUES, ids=[str(p) for p, _ in BAD_VALUES])
def test_wrong_types_and_values_are_rejected_even_with_a_valid_mac(
    keyring: Keyring, path: tuple, value: Any
) -> None:
    document = _document(keyring)
    target: Any = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ManifestError) as info:
        load_manifest(resign(document, keyring), keyring, now=NOW)
    message = str(info.value)
    assert message.startswith("manifest ") and message.endswith(".") and "\n" not in message
    assert "authentication" not in message  # rejected by validation, not by the MAC


def test_unknown_fields_are_rejected(keyring: Keyring) -> None:
    for where in ("top", "object", "table"):
        document = _document(keyring)
        target = {
            "top": document,
            "object": document["objects"][0],
            "table": document["objects"][0]["tables"][0],
        }[where]
        target["surprise"] = 1
        with pytest.raises(ManifestError, match="unknown field 'surprise'"):
            load_manifest(resign(document, keyring), keyring, now=NOW)


@pytest.mark.parametrize("version", [3, 0, "1", None, True])
def test_unknown_format_version(keyring: Keyring, version: Any) -> None:
    document = _document(keyring)
    document["format_version"] = version
    with pytest.raises(ManifestError, match="format.version"):
        load_manifest(resign(document, keyring), keyring, now=NOW)


def test_future_created_at_beyond_the_skew_is_rejected(keyring: Keyring) -> None:
    raw = sign_manifest(make_manifest(keyring), keyring)
    assert load_manifest(raw, keyring, now=CREATED - timedelta(minutes=4))
    with pytest.raises(ManifestError, match="in the future"):
        load_manifest(raw, keyring, now=CREATED - timedelta(minutes=6))


def test_structural_garbage_is_a_manifest_error(keyring: Keyring) -> None:
    mac = '"hmac_sha256":"' + "0" * 64 + '"'
    for raw in (
        b"",
        b"\xff\xfe",
        b"[]",
        b"null",
        b"{",
        b'{"format_version":1}',
        ('{"format_version":1,' + mac + "}").encode(),
        ('{"format_version":1,"key_id":"zz",' + mac + "}").encode(),
        ('{"format_version":1,"x":NaN,' + mac + "}").encode(),
        b'{"format_version":1,"format_version":1}',
        b"[" * 100_000 + b"]" * 100_000,
    ):
        with pytest.raises(ManifestError):
            load_manifest(raw, keyring, now=NOW)


def test_duplicate_keys_are_rejected_even_when_the_mac_matches(keyring: Keyring) -> None:
    raw = sign_manifest(make_manifest(keyring), keyring)
    duplicated = raw[:-1] + b',"backup_id":"20260115T020000Z-0a1b2c3d"}'
    with pytest.raises(ManifestError, match="duplicate key"):
        load_manifest(duplicated, keyring, now=NOW)


def test_sign_refuses_an_invalid_manifest(keyring: Keyring) -> None:
    manifest = make_manifest(keyring)
    bad_object = replace(manifest.objects[0], plaintext_bytes=1)
    with pytest.raises(ValueError, match="refusing to sign"):
        sign_manifest(replace(manifest, objects=(bad_object,)), keyring)
    with pytest.raises(ValueError):
        sign_manifest(replace(manifest, created_at=datetime(2026, 1, 1)), keyring)


def test_layout_helpers() -> None:
    backup_id = new_backup_id(CREATED)
    assert re.fullmatch(r"20260115T020000Z-[0-9a-f]{8}", backup_id)
    assert new_backup_id(CREATED) != backup_id
    local = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=3)))  # 2025-12-31 UTC
    assert backup_folder("backups/", "b-1", local) == "backups/2025/12/31/b-1/"
    assert backup_folder("", "b-1", CREATED) == "2026/01/15/b-1/"
    assert make_manifest(Keyring(os.urandom(32))).folder("p").startswith("p/2026/01/15/2026")
    with pytest.raises(ValueError):
        backup_folder("p", "../x", CREATED)
    assert tenant_object_name("42") == "tenant-42.hpb"
    odd = tenant_object_name("Ünïcode/../tenant")
    assert re.fullmatch(r"tenant-h[0-9a-f]{40}\.hpb", odd)
    assert odd != tenant_object_name("Ünïcode/../tenant2")
