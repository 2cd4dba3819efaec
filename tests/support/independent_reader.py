"""A second, independent implementation of the backup reader, written only from
``docs/backup-format.md``.

It imports nothing from ``hardening_pipeline``: if the project's writer and this reader agree,
the document is precise enough to decrypt a backup without the project. Keep it that way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import struct
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class ReaderError(Exception):
    pass


def hkdf(ikm: bytes, info: str, n: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=n, salt=None, info=info.encode()).derive(ikm)


def key_id(master: bytes) -> str:
    return hkdf(master, "hardening-pipeline backup v1 key-id", 8).hex()


_FOLDER = re.compile(r"^(\d{4}/\d{2}/\d{2}/(?![^/]*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127})/")


def newest_folder(keys: list[str]) -> str | None:
    """Section 8: the folder holding a manifest.json whose path sorts last, verified or not."""
    folders = set()
    for key in keys:
        match = _FOLDER.match(key)
        if match and key == match.group(0) + "manifest.json":
            folders.add(match.group(1))
    return max(folders, default=None)


def pick_backup(keys: list[str], backup_id: str | None = None) -> str:
    """The newest backup's folder, or the one named explicitly; never a silent older one."""
    if backup_id is None:
        newest = newest_folder(keys)
        if newest is None:
            raise ReaderError("no backup in the store")
        return newest
    named = [
        m.group(1)
        for k in keys
        if (m := _FOLDER.match(k))
        and k == m.group(0) + "manifest.json"
        and m.group(1).endswith("/" + backup_id)
    ]
    if len(named) != 1:
        raise ReaderError(f"no single backup {backup_id}")
    return named[0]


def check_not_future(doc: dict, now: datetime | None = None) -> None:
    """Section 8 step 9: created_at at most 5 minutes after the reader's clock."""
    created = datetime.strptime(doc["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    if created > (now or datetime.now(UTC)) + timedelta(minutes=5):
        raise ReaderError(f"manifest of {doc['backup_id']} is dated in the future")


def verify_manifest(raw: bytes, masters: list[bytes]) -> dict:
    if len(raw) > 64 << 20:
        raise ReaderError("manifest larger than 64 MiB")
    doc = json.loads(raw)
    if doc.get("format_version") not in (1, 2):
        raise ReaderError(f"manifest format version {doc.get('format_version')!r} unknown")
    master = _check_mac(doc, raw, masters, "manifest")
    check_not_future(doc)
    wrapped = base64.b64decode(doc["wrapped_data_key"])
    aad = b"hardening-pipeline backup v1 data-key\x00" + doc["backup_id"].encode()
    wrap_key = hkdf(master, "hardening-pipeline backup v1 wrap-key")
    doc["_data_key"] = AESGCM(wrap_key).decrypt(wrapped[:12], wrapped[12:], aad)
    return doc


class TenantErased(ReaderError):
    pass


def _check_mac(doc: dict, raw: bytes, masters: list[bytes], what: str) -> bytes:
    """Sections 5 and 9: the MAC under the master named by key_id, and canonical bytes."""
    mac = doc.pop("hmac_sha256")
    by_id = {key_id(m): m for m in masters}
    if doc["key_id"] not in by_id:
        raise ReaderError(f"no key for key id {doc['key_id']}")
    master = by_id[doc["key_id"]]
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    mac_key = hkdf(master, "hardening-pipeline backup v1 manifest-mac-key")
    if not hmac.compare_digest(hmac.new(mac_key, body, "sha256").hexdigest(), mac):
        raise ReaderError(f"{what} MAC mismatch")
    full = dict(doc, hmac_sha256=mac)
    canonical = json.dumps(full, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if canonical.encode() != raw:
        raise ReaderError(f"{what} not canonical")
    return master


def verify_ledger(raw: bytes, masters: list[bytes]) -> dict:
    """Section 9: the key ledger, verified like a manifest."""
    doc = json.loads(raw)
    if (
        doc.get("format") != "hardening-pipeline-tenant-key-ledger"
        or doc.get("format_version") != 1
    ):
        raise ReaderError("not a version 1 key ledger")
    _check_mac(doc, raw, masters, "ledger")
    return doc


def object_key(doc: dict, entry: dict, ledger: dict | None, masters: list[bytes]) -> bytes:
    """Section 9: the manifest's data key, or the tenant's own key from the ledger."""
    wanted = entry.get("tenant_key_id")
    if wanted is None:
        return doc["_data_key"]
    if ledger is None:
        raise ReaderError("a tenant object under a tenant key, and no key ledger")
    if wanted in [e["key_id"] for e in ledger["erased"]]:
        raise TenantErased(f"tenant {entry['tenant_id']} was erased")
    found = [t for t in ledger["tenants"] if t["key_id"] == wanted]
    if len(found) != 1 or found[0]["tenant_id"] != entry["tenant_id"]:
        raise ReaderError(f"the ledger lost the key {wanted} of tenant {entry['tenant_id']}")
    by_id = {key_id(m): m for m in masters}
    if found[0]["master_key_id"] not in by_id:
        raise ReaderError(f"no key for key id {found[0]['master_key_id']}")
    wrap_key = hkdf(by_id[found[0]["master_key_id"]], "hardening-pipeline backup v1 wrap-key")
    wrapped = base64.b64decode(found[0]["wrapped_key"])
    aad = b"hardening-pipeline backup v1 tenant-key\x00" + entry["tenant_id"].encode()
    tenant_key = AESGCM(wrap_key).decrypt(wrapped[:12], wrapped[12:], aad)
    if hkdf(tenant_key, "hardening-pipeline backup v1 data-key-id", 8).hex() != wanted:
        raise ReaderError("the unwrapped tenant key does not have its key id")
    return tenant_key


def part_digest(doc: dict | None, entry: dict, key: bytes | None, part: bytes) -> str:
    """Section 4: HMAC-SHA256 under the tenant's digest key for a tenant-key object of a format 2
    manifest, plain SHA-256 for everything else (``key`` is the key that opens the object)."""
    if doc is not None and doc["format_version"] >= 2 and "tenant_key_id" in entry:
        digest_key = hkdf(key, "hardening-pipeline backup v2 tenant-digest-key")
        return hmac.new(digest_key, part, "sha256").hexdigest()
    return hashlib.sha256(part).hexdigest()


def read_object(blob: bytes, doc: dict, entry: dict, data_key: bytes | None = None) -> bytes:
    data_key = doc["_data_key"] if data_key is None else data_key
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise ReaderError("object sha256 mismatch")
    if len(blob) != entry["ciphertext_bytes"]:
        raise ReaderError("object size mismatch")
    if blob[:10] != b"HPBACKUP\x01\x01":
        raise ReaderError("bad magic/version/compression")
    (seg,) = struct.unpack(">I", blob[10:14])
    if blob[14:22] != hkdf(data_key, "hardening-pipeline backup v1 data-key-id", 8):
        raise ReaderError("data key id mismatch")
    prefix = blob[22:29]
    l1 = blob[29]
    backup_id = blob[30 : 30 + l1].decode("ascii")
    l2 = blob[30 + l1]
    name = blob[31 + l1 : 31 + l1 + l2].decode("ascii")
    if (backup_id, name) != (doc["backup_id"], entry["name"]):
        raise ReaderError("object belongs elsewhere")
    header, rest = blob[: 31 + l1 + l2], blob[31 + l1 + l2 :]
    aead = AESGCM(data_key)
    payload = bytearray()
    i = 0
    while True:
        final = len(rest) <= seg + 16
        chunk, rest = (rest, b"") if final else (rest[: seg + 16], rest[seg + 16 :])
        nonce = prefix + struct.pack(">I", i) + (b"\x01" if final else b"\x00")
        payload += aead.decrypt(nonce, chunk, header)
        i += 1
        if final:
            break
    if len(payload) != entry["compressed_bytes"]:
        raise ReaderError("compressed size mismatch")
    d = zstandard.ZstdDecompressor().decompressobj()
    plaintext = d.decompress(bytes(payload))
    if not d.eof or d.unused_data:
        raise ReaderError("zstd frame incomplete or trailing data")
    if part_digest(doc, entry, data_key, plaintext) != entry["plaintext_sha256"]:
        raise ReaderError("plaintext sha256 mismatch")
    return plaintext


def split_tables(
    plaintext: bytes, entry: dict, doc: dict | None = None, key: bytes | None = None
) -> dict[str, bytes]:
    """Cut an object's plaintext into its tables; ``doc`` and ``key`` (the key that opened the
    object) are needed for a tenant-key object of a format 2 manifest, whose digests are keyed."""
    out, pos = {}, 0
    for table in entry["tables"]:
        part = plaintext[pos : pos + table["bytes"]]
        if part_digest(doc, entry, key, part) != table["sha256"]:
            raise ReaderError(f"table {table['name']} sha256 mismatch")
        out[table["name"]] = part
        pos += table["bytes"]
    if pos != len(plaintext):
        raise ReaderError("plaintext longer than its tables")
    return out


def split_sections(plaintext: bytes, schema_entry: dict) -> dict[str, bytes]:
    """The schema object's parts, each checked: one custom-format ``archive`` (or, in older
    backups, the plain-SQL ``pre-data`` and ``post-data``)."""
    names = [s["name"] for s in schema_entry["sections"]]
    if names not in (["archive"], ["pre-data", "post-data"]):
        raise ReaderError(f"unexpected schema sections {names}")
    return split_tables(plaintext, {"tables": schema_entry["sections"]})


def list_archive(archive: bytes, pg_restore: str, folder: Path) -> list[str]:
    """``pg_restore --list`` of a custom-format archive: its table of contents, never its SQL."""
    path = folder / "schema.dump"
    path.write_bytes(archive)
    listing = subprocess.run(
        [pg_restore, "--list", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in listing.splitlines() if line and not line.startswith(";")]


def check_folder(doc: dict, folder: str) -> None:
    """The manifest must sit in <YYYY>/<MM>/<DD>/<backup_id>/ of its own created_at (UTC)."""
    day = doc["created_at"][:10].replace("-", "/")
    if folder.strip("/").split("/")[-4:] != [*day.split("/"), doc["backup_id"]]:
        raise ReaderError(f"manifest of {doc['backup_id']} does not belong in {folder}")


_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(field: str) -> str | None:
    if field == "\\N":
        return None
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\":
            if i + 1 == len(field) or field[i + 1] not in _ESCAPES:
                raise ReaderError(f"backslash sequence the writer never produces in {field!r}")
            out.append(_ESCAPES[field[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_copy_rows(part: bytes, columns: list[str]) -> list[dict[str, str | None]]:
    """COPY text: UTF-8, one row per line, tab between columns, \\N for NULL, no end marker."""
    rows = []
    text = part.decode("utf-8")
    if text and not text.endswith("\n"):
        raise ReaderError("a table part must end with a newline")
    for line in text.split("\n")[:-1]:
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ReaderError(f"row has {len(fields)} fields, expected {len(columns)}")
        rows.append(dict(zip(columns, map(_unescape, fields), strict=True)))
    return rows


def check_rows(entry: dict, table: dict, rows: list[dict[str, str | None]]) -> None:
    """Section 8 step 16: the row count, and in a tenant's object every row is that tenant's."""
    if len(rows) != table["row_count"]:
        raise ReaderError(f"table {table['name']} has {len(rows)} rows, not {table['row_count']}")
    tenant = entry["tenant_id"]
    if tenant is None:
        return
    column = "id" if table["name"] == "tenants" else "tenant_id"
    if column not in table["columns"]:
        raise ReaderError(f"table {table['name']} in tenant {tenant}'s object has no {column}")
    if any(row[column] != tenant for row in rows):
        raise ReaderError(f"table {table['name']} in tenant {tenant}'s object has others' rows")
