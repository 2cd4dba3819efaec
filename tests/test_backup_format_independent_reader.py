"""docs/backup-format.md is precise enough to read a backup without this project.

The project writes a backup; ``tests/support/independent_reader.py`` (written from the document
alone, importing nothing from the project) and the document's own worked example read it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from hardening_pipeline.backup.crypto import Keyring, generate_data_key
from hardening_pipeline.backup.manifest import (
    NON_TENANT_OBJECT_NAME,
    DatabaseIdentity,
    Manifest,
    ObjectEntry,
    SchemaVersion,
    TableEntry,
    load_manifest,
    new_backup_id,
    rewrap_manifest,
    sign_manifest,
    tenant_object_name,
)
from hardening_pipeline.backup.object_format import SEGMENT_SIZE, ObjectEncoder
from tests.support import independent_reader as reader

DOC = Path(__file__).resolve().parents[1] / "docs" / "backup-format.md"


def write_backup(keyring: Keyring) -> tuple[bytes, dict[str, bytes], dict[str, dict[str, bytes]]]:
    """Write a backup the way the exporter does; return manifest bytes, objects, and the input."""
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    backup_id = new_backup_id(created)
    data_key = generate_data_key()
    wrapped = keyring.wrap_data_key(data_key, backup_id)
    rng = random.Random(5)
    exports = {
        "1": {
            "tenants": b"1\tAcme\n",
            # Noise bigger than two segments, so the object has several chunks.
            "messages": rng.randbytes(2 * SEGMENT_SIZE + 12345),
        },
        "2": {"tenants": b"2\tGlobex \xc3\xa9\n", "messages": b""},
        None: {"plans": b"1\tPro\n2\tFree\n"},
    }
    objects: dict[str, bytes] = {}
    entries = []
    for tenant, tables in exports.items():
        name = NON_TENANT_OBJECT_NAME if tenant is None else tenant_object_name(tenant)
        enc = ObjectEncoder(iter(tables.values()), data_key, backup_id=backup_id, object_name=name)
        objects[name] = b"".join(enc)
        entries.append(
            ObjectEntry(
                name=name,
                tenant_id=tenant,
                tables=tuple(
                    TableEntry(
                        name=table,
                        columns=("id", "name"),
                        row_count=text.count(b"\n"),
                        bytes=len(text),
                        sha256=hashlib.sha256(text).hexdigest(),
                    )
                    for table, text in tables.items()
                ),
                plaintext_bytes=enc.plaintext_bytes,
                plaintext_sha256=enc.plaintext_sha256,
                compressed_bytes=enc.compressed_bytes,
                ciphertext_bytes=enc.ciphertext_bytes,
                sha256=enc.ciphertext_sha256,
            )
        )
    manifest = Manifest(
        backup_id=backup_id,
        created_at=created,
        finished_at=created + timedelta(seconds=3),
        database=DatabaseIdentity("7312345678901234567", "app", "16.4"),
        schema=SchemaVersion("001_baseline.sql", "00" * 32, ("001_baseline.sql",)),
        key_id=wrapped.key_id,
        wrapped_data_key=wrapped.ciphertext,
        objects=tuple(entries),
    )
    inputs = {
        (NON_TENANT_OBJECT_NAME if t is None else tenant_object_name(t)): tables
        for t, tables in exports.items()
    }
    return sign_manifest(manifest, keyring), objects, inputs


def test_independent_reader_decrypts_and_verifies_everything() -> None:
    master = os.urandom(32)
    raw, objects, inputs = write_backup(Keyring(master))
    doc = reader.verify_manifest(raw, [master])
    assert {e["name"] for e in doc["objects"]} == set(objects)
    for entry in doc["objects"]:
        plaintext = reader.read_object(objects[entry["name"]], doc, entry)
        assert reader.split_tables(plaintext, entry) == inputs[entry["name"]]
    big = objects[tenant_object_name("1")]
    assert len(big) > 2 * SEGMENT_SIZE  # the multi-chunk path really was exercised


def test_independent_reader_handles_a_rotated_key() -> None:
    old, new = os.urandom(32), os.urandom(32)
    raw, objects, inputs = write_backup(Keyring(old))
    rotated = Keyring(new, [old])
    rewrapped = sign_manifest(rewrap_manifest(load_manifest(raw, rotated), rotated), rotated)
    doc = reader.verify_manifest(rewrapped, [new])
    entry = next(e for e in doc["objects"] if e["tenant_id"] == "2")
    assert (
        reader.split_tables(reader.read_object(objects[entry["name"]], doc, entry), entry)
        == (inputs[entry["name"]])
    )
    with pytest.raises(reader.ReaderError, match="no key"):
        reader.verify_manifest(raw, [new])


def test_independent_reader_is_not_vacuous() -> None:
    master = os.urandom(32)
    raw, objects, _ = write_backup(Keyring(master))
    doc = reader.verify_manifest(raw, [master])
    entry = doc["objects"][0]
    blob = bytearray(objects[entry["name"]])
    blob[-1] ^= 1
    with pytest.raises(reader.ReaderError):
        reader.read_object(bytes(blob), doc, entry)
    entry = dict(entry, sha256=hashlib.sha256(bytes(blob)).hexdigest())
    with pytest.raises(InvalidTag):
        reader.read_object(bytes(blob), doc, entry)
    tampered = raw.replace(b'"row_count":1', b'"row_count":2', 1)
    assert tampered != raw
    with pytest.raises(reader.ReaderError, match="MAC"):
        reader.verify_manifest(tampered, [master])


def test_the_worked_example_in_the_document_runs() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    master = os.urandom(32)
    raw, objects, inputs = write_backup(Keyring(master))
    first = json.loads(raw)["objects"][0]["name"]
    namespace = {"master": master, "raw_manifest": raw, "blob": objects[first]}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # our own document, not input
    assert namespace["plaintext"] == b"".join(inputs[first].values())
    assert namespace["name"] == first and namespace["S"] == SEGMENT_SIZE
