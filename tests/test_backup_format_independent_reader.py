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
    new_backup_id,
    rewrap_manifest,
    tenant_object_name,
)
from hardening_pipeline.backup.manifest_signing import load_manifest, sign_manifest
from hardening_pipeline.backup.object_format import SEGMENT_SIZE, ObjectEncoder
from tests.support import independent_reader as reader

DOC = Path(__file__).resolve().parents[1] / "docs" / "backup-format.md"
TRICKY = "tab\there\nnew\\line \u00e9 \\N"


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
    assert len(blocks) == 3
    master = os.urandom(32)
    raw, objects, inputs = write_backup(Keyring(master))
    first = json.loads(raw)["objects"][0]["name"]
    namespace = {"master": master, "raw_manifest": raw, "blob": objects[first]}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # our own document, not input
    assert namespace["plaintext"] == b"".join(inputs[first].values())
    assert namespace["name"] == first and namespace["S"] == SEGMENT_SIZE


def test_independent_reader_reads_a_real_backup_with_its_schema(db_url, tmp_path) -> None:
    """A real backup, read with the document's rules only: folder, manifest, rows, schema."""
    from hardening_pipeline.backup.nightly import run_backup
    from hardening_pipeline.backup.pg_tools import find_pg_tool
    from hardening_pipeline.backup.store import FileStore
    from hardening_pipeline.seed import seed_demo_data
    from tests.support.db import admin_connect

    seed_demo_data(db_url, tenants=2, messages_per_unit=2, random_seed=9)
    with admin_connect(db_url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:reader', false)")
        # A value that needs every escape the document lists, and a NULL.
        conn.execute(
            "UPDATE onboarding_attempts SET status = 'failed', error = %s, finished_at = NULL "
            "WHERE id = (SELECT id FROM onboarding_attempts ORDER BY id LIMIT 1)",
            (TRICKY,),
        )
        conn.commit()
    master = os.urandom(32)
    run_backup(db_url, FileStore(tmp_path / "store"), Keyring(master))
    manifests = list((tmp_path / "store").rglob("manifest.json"))
    assert len(manifests) == 1
    folder = manifests[0].parent
    keys = [p.relative_to(tmp_path / "store").as_posix() for p in (tmp_path / "store").rglob("*")]
    assert reader.pick_backup(keys) == folder.relative_to(tmp_path / "store").as_posix()
    doc = reader.verify_manifest(manifests[0].read_bytes(), [master])
    reader.check_folder(doc, str(folder.relative_to(tmp_path / "store")))
    with pytest.raises(reader.ReaderError, match="does not belong"):
        reader.check_folder(doc, "2001/01/01/" + doc["backup_id"])
    ledger = reader.verify_ledger(
        (tmp_path / "store" / "tenant-keys" / "ledger.json").read_bytes(), [master]
    )
    bodies = []
    for entry in doc["objects"]:
        # Section 9: every tenant object of a new backup is under the tenant's own key.
        assert (entry["tenant_id"] is None) == ("tenant_key_id" not in entry)
        key = reader.object_key(doc, entry, ledger, [master])
        parts = reader.split_tables(
            reader.read_object((folder / entry["name"]).read_bytes(), doc, entry, key),
            entry,
            doc,
            key,
        )
        for table in entry["tables"]:
            rows = reader.parse_copy_rows(parts[table["name"]], table["columns"])
            reader.check_rows(entry, table, rows)
            if table["name"] == "onboarding_attempts":
                bodies += [(r["error"], r["finished_at"]) for r in rows]
    assert (TRICKY, None) in bodies
    schema = doc["app_schema"]
    sections = reader.split_sections(
        reader.read_object((folder / schema["name"]).read_bytes(), doc, schema), schema
    )
    major = int(schema["pg_dump_version"].split(".")[0])
    pg_restore = str(find_pg_tool("pg_restore", major * 10000).path)
    toc = reader.list_archive(sections["archive"], pg_restore, tmp_path)
    assert any(line.endswith(" TABLE public messages postgres") for line in toc), toc
    assert any(" POLICY public messages messages_tenant_isolation " in line for line in toc)
    assert any(t.startswith("public.messages (") for t in schema["catalog"]["tables"])


def test_the_newest_backup_is_picked_by_its_path_and_a_broken_one_is_never_skipped(
    tmp_path: Path,
) -> None:
    """Section 8: newest by path, verified or not; an older backup only when it is named."""
    from hardening_pipeline.backup.catalog import NoBackupError, find_backup, list_backups
    from hardening_pipeline.backup.store import FileStore
    from tests.test_backup_retention_apply import write_backup as write_signed

    master = os.urandom(32)
    store = FileStore(tmp_path)
    now = datetime.now(UTC)
    older = write_signed(store, Keyring(master), now - timedelta(days=1))
    newest = write_signed(store, Keyring(master), now - timedelta(hours=1))
    store.put(f"{now:%Y/%m/%d}/{now:%Y%m%dT%H%M%SZ}-unfinish/shared.hpb", [b"no manifest yet"])
    store.put("elsewhere/9999/12/31/x/manifest.json", [b"not under the layout"])
    keys = [o.key for o in store.list()]
    assert reader.pick_backup(keys).endswith("/" + newest)

    (path,) = tmp_path.glob(f"*/*/*/{newest}/manifest.json")
    path.write_bytes(path.read_bytes().replace(b'"app"', b'"ap2"'))
    assert reader.pick_backup(keys).endswith("/" + newest)  # still the newest: no fall-back
    with pytest.raises(reader.ReaderError, match="MAC"):
        reader.verify_manifest(path.read_bytes(), [master])
    with pytest.raises(NoBackupError, match=newest):  # the project refuses the same store
        find_backup(list_backups(store, Keyring(master)), None, newest_must_be_valid=True)

    named = reader.pick_backup(keys, older)
    doc = reader.verify_manifest((tmp_path / named / "manifest.json").read_bytes(), [master])
    reader.check_folder(doc, named)
    assert doc["backup_id"] == older


def test_a_manifest_dated_in_the_future_is_refused(tmp_path: Path) -> None:
    from hardening_pipeline.backup.store import FileStore
    from tests.test_backup_retention_apply import write_backup as write_signed

    master = os.urandom(32)
    store = FileStore(tmp_path)
    soon = write_signed(store, Keyring(master), datetime.now(UTC) + timedelta(minutes=3))
    later = write_signed(store, Keyring(master), datetime.now(UTC) + timedelta(minutes=30))
    for backup_id, ok in ((soon, True), (later, False)):
        (path,) = tmp_path.glob(f"*/*/*/{backup_id}/manifest.json")
        if ok:
            reader.verify_manifest(path.read_bytes(), [master])
        else:
            with pytest.raises(reader.ReaderError, match="future"):
                reader.verify_manifest(path.read_bytes(), [master])


def test_rows_are_checked_against_the_tenant_id_in_its_text_form() -> None:
    tenant = "7c0e0d4e-0d7e-4c57-9b4e-2f0e5c6a1b2d"
    entry = {"tenant_id": tenant}
    table = {"name": "messages", "columns": ["id", "tenant_id"], "row_count": 1}

    def rows(text: bytes) -> list[dict[str, str | None]]:
        return reader.parse_copy_rows(text, table["columns"])

    reader.check_rows(entry, table, rows(f"1\t{tenant}\n".encode()))
    for stray in ("\\N", tenant.upper(), "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(reader.ReaderError, match="others' rows"):
            reader.check_rows(entry, table, rows(f"1\t{stray}\n".encode()))
    tenants = {"name": "tenants", "columns": ["id", "name"], "row_count": 1}
    reader.check_rows(
        entry, tenants, reader.parse_copy_rows(f"{tenant}\tAcme\n".encode(), ["id", "name"])
    )
    with pytest.raises(reader.ReaderError, match="rows, not"):
        reader.check_rows(entry, dict(table, row_count=2), rows(f"1\t{tenant}\n".encode()))
    # The shared object's tenant_id columns hold anything, NULL included.
    reader.check_rows({"tenant_id": None}, table, rows(b"1\t\\N\n"))


def test_only_the_escapes_the_writer_produces_are_read() -> None:
    [row] = reader.parse_copy_rows(b"a\\\\N\tb\\tc\\nd\t\\N\n", ["x", "y", "z"])
    assert row == {"x": "a\\N", "y": "b\tc\nd", "z": None}
    for odd in (b"\\q\n", b"\\101\n", b"\\x41\n", b"ab\\\n"):
        with pytest.raises(reader.ReaderError, match="never produces"):
            reader.parse_copy_rows(odd, ["x"])


def test_the_tenant_key_example_in_the_document_runs(db_url, tmp_path) -> None:
    """Section 9's example finds a real backup's tenant key, and the key opens the object."""
    from hardening_pipeline.backup.nightly import run_backup
    from hardening_pipeline.backup.store import FileStore
    from hardening_pipeline.seed import seed_demo_data

    seed_demo_data(db_url, tenants=2, messages_per_unit=2, random_seed=3)
    master = os.urandom(32)
    result = run_backup(db_url, FileStore(tmp_path / "store"), Keyring(master))
    folder = tmp_path / "store" / result.manifest.folder("")
    raw = (folder / "manifest.json").read_bytes()
    raw_ledger = (tmp_path / "store" / "tenant-keys" / "ledger.json").read_bytes()
    doc = reader.verify_manifest(raw, [master])
    entry = next(e for e in doc["objects"] if e["tenant_id"] is not None)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    namespace = {"master": master, "raw_ledger": raw_ledger, "entry": entry}
    # Section 6's imports and hkdf, which section 9's example uses.
    exec(compile(blocks[0].split("\ndoc = ")[0], str(DOC), "exec"), namespace)
    exec(compile(blocks[1], str(DOC), "exec"), namespace)
    plaintext = reader.read_object(
        (folder / entry["name"]).read_bytes(), doc, entry, namespace["tenant_key"]
    )
    assert set(reader.split_tables(plaintext, entry, doc, namespace["tenant_key"])) == {
        t["name"] for t in entry["tables"]
    }
    # Section 9's keyed digests, checked by the document's third example on the same object.
    namespace["plaintext"] = plaintext
    exec(compile(blocks[2], str(DOC), "exec"), namespace)
    assert namespace["checked"] == len(entry["tables"]) + 1
    # The backup's own data key does not open a tenant object any more.
    with pytest.raises(reader.ReaderError, match="data key id"):
        reader.read_object((folder / entry["name"]).read_bytes(), doc, entry)


def test_independent_reader_reports_an_erased_tenant_and_reads_the_others(db_url, tmp_path) -> None:
    """Section 9: after ``erase-tenant`` the ledger records the key as erased; a reader written
    from the document says so for that tenant and still reads every other one."""
    from hardening_pipeline.backup.erasure import erase_tenant, plan_erasure
    from hardening_pipeline.backup.nightly import run_backup
    from hardening_pipeline.backup.store import FileStore
    from hardening_pipeline.seed import seed_demo_data

    seed_demo_data(db_url, tenants=2, messages_per_unit=1, random_seed=4)
    master = os.urandom(32)
    store = FileStore(tmp_path / "store")
    result = run_backup(db_url, store, Keyring(master))
    erased = next(o.tenant_id for o in result.manifest.objects if o.tenant_id is not None)
    erase_tenant(
        store, Keyring(master), db_url, plan_erasure(store, Keyring(master), db_url, erased)
    )
    folder = tmp_path / "store" / result.manifest.folder("")
    doc = reader.verify_manifest((folder / "manifest.json").read_bytes(), [master])
    ledger = reader.verify_ledger(
        (tmp_path / "store" / "tenant-keys" / "ledger.json").read_bytes(), [master]
    )
    read = []
    for entry in doc["objects"]:
        if entry["tenant_id"] == erased:
            with pytest.raises(reader.TenantErased):
                reader.object_key(doc, entry, ledger, [master])
            continue
        key = reader.object_key(doc, entry, ledger, [master])
        plaintext = reader.read_object((folder / entry["name"]).read_bytes(), doc, entry, key)
        reader.split_tables(plaintext, entry, doc, key)
        if entry["tenant_id"] is not None:
            # Section 9: the digests are keyed, so a plain SHA-256 of the same part is no match.
            with pytest.raises(reader.ReaderError, match="sha256 mismatch"):
                reader.split_tables(plaintext, entry)
        read.append(entry["tenant_id"])
    assert len(read) == len(doc["objects"]) - 1
