"""An audit seal verifier written from docs/audit-seal-format.md alone.

It imports nothing from hardening_pipeline: psycopg to fetch rows in binary, hashlib, hmac and
cryptography's HKDF. ``verify(url, store_dir, master_key)`` returns the problems it found, each
``(bad id or None, text)``; an empty list means the chain is intact.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg import sql
from psycopg.adapt import Loader
from psycopg.pq import Format

TYPES = [20, 25, 2950, 25, 25, 25, 3802, 3802, 1184, 25, 20]  # the eleven columns, in order
NAMES = "id actor tenant_id table_name operation record_id before after created_at db_role txid"
COLUMNS = sql.SQL(", ").join(map(sql.Identifier, NAMES.split()))
TOLERANCE_US = 60_000_000
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
FIELDS = ("seq", "from_id", "to_id", "row_count", "digest", "previous_digest", "fingerprints")
FIELDS += ("sealed_at", "sealed_by", "key_id", "mac", "version", "high_water", "pending")
FIELDS += ("last_created_at",)


class Raw(Loader):
    format = Format.BINARY

    def load(self, data):
        return bytes(data)


def hkdf(key: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def i64(b: bytes) -> int:
    return struct.unpack(">q", b)[0]


def row_hash_2(values: tuple) -> bytes:
    h = hashlib.sha256(b"hardening-pipeline audit row v2\x00")
    for t, v in zip(TYPES, values, strict=True):
        if v is None:
            h.update(b"\x00")
        else:
            v = v[1:] if t == 3802 else v
            h.update(b"\x01" + struct.pack(">I", len(v)) + v)
    return h.digest()


ESC = {i: f"\\u{i:04x}" for i in range(32)}
ESC.update({34: '\\"', 92: "\\\\", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t"})


def row_hash_1(values: tuple) -> bytes:
    parts = []
    for t, v in zip(TYPES, values, strict=True):
        if v is None:
            parts.append("null")
        elif t == 20:
            parts.append(str(i64(v)))
        elif t == 25:
            parts.append('"' + v.decode().translate(ESC) + '"')
        elif t == 2950:
            parts.append(f'"{uuid.UUID(bytes=v)}"')
        elif t == 3802:
            parts.append(v[1:].decode())
        else:
            us = i64(v)
            d = datetime(2000, 1, 1) + timedelta(microseconds=us)
            s = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d:%H:%M:%S}"
            if d.microsecond:
                s += f".{d.microsecond:06d}".rstrip("0")
            parts.append(f'"{s}"')
    return hashlib.sha256(("[" + ", ".join(parts) + "]").encode()).digest()


def fingerprints(blob: bytes, start: int) -> list[tuple[int, bytes]]:
    out, pos, current = [], 0, start
    while pos < len(blob):
        delta, shift = 0, 0
        while True:
            byte = blob[pos]
            pos += 1
            delta |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        current += delta
        out.append((current, blob[pos : pos + 8]))
        pos += 8
    return out


def iso(d: datetime) -> str:
    return d.astimezone(UTC).isoformat(timespec="microseconds")


def mac_message(s: dict) -> bytes:
    body = {
        "format": f"hardening-audit-seal/{s['version']}",
        "seq": s["seq"],
        "from_id": s["from_id"],
        "to_id": s["to_id"],
        "row_count": s["row_count"],
        "digest": s["digest"].hex(),
        "previous_digest": s["previous_digest"].hex(),
        "fingerprints_sha256": hashlib.sha256(s["fingerprints"]).hexdigest(),
        "sealed_at": iso(s["sealed_at"]),
        "sealed_by": s["sealed_by"],
        "key_id": s["key_id"],
    }
    if s["version"] == 2:
        body["high_water"] = s["high_water"]
        body["pending_sha256"] = hashlib.sha256(s["pending"]).hexdigest()
        last = s["last_created_at"]
        body["last_created_at"] = iso(last) if last else None
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def from_store(path: Path) -> dict:
    body = json.loads(path.read_bytes())
    s = {
        "version": int(body["format"].rsplit("/", 1)[1]),
        "seq": body["seq"],
        "from_id": body["from_id"],
        "to_id": body["to_id"],
        "row_count": body["row_count"],
        "digest": bytes.fromhex(body["digest"]),
        "previous_digest": bytes.fromhex(body["previous_digest"]),
        "fingerprints": base64.b64decode(body["fingerprints"]),
        "sealed_at": datetime.fromisoformat(body["sealed_at"]),
        "sealed_by": body["sealed_by"],
        "key_id": body["key_id"],
        "mac": bytes.fromhex(body["mac"]) if body["mac"] else None,
        "high_water": body.get("high_water"),
        "pending": base64.b64decode(body.get("pending", "")),
        "last_created_at": None,
    }
    if body.get("last_created_at"):
        s["last_created_at"] = datetime.fromisoformat(body["last_created_at"])
    assert path.name == f"{s['seq']:012d}.json"
    assert hashlib.sha256(s["fingerprints"]).hexdigest() == body["fingerprints_sha256"]
    return s


def us(d: datetime) -> int:
    return (d - EPOCH) // timedelta(microseconds=1)


def verify(url: str, store_dir: Path, master_key: bytes) -> list[tuple[int | None, str]]:
    problems: list[tuple[int | None, str]] = []
    key_id = hkdf(master_key, b"hardening-pipeline backup v1 key-id", 8).hex()
    mac_key = hkdf(master_key, b"hardening-pipeline backup v1 manifest-mac-key")
    seal_key = hkdf(mac_key, b"hardening-pipeline audit seal v1 mac-key")
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        listed = sql.SQL(", ").join(map(sql.Identifier, FIELDS))
        rows = conn.execute(
            sql.SQL("SELECT {} FROM hardening.audit_seals ORDER BY seq").format(listed)
        )
        db = {
            r["seq"]: {k: bytes(v) if isinstance(v, memoryview) else v for k, v in r.items()}
            for r in rows
        }
        for s in db.values():
            s["pending"] = s["pending"] or b""
        copies = {}
        for path in sorted((store_dir / "seals").glob("*.json")):
            c = from_store(path)
            copies[c["seq"]] = c
        chain = []
        for seq in sorted(set(db) | set(copies)):
            c = copies.get(seq)
            if c is None or seq not in db:
                problems.append((None, f"seal {seq} is not in both the database and the store"))
            elif any(db[seq][k] != c[k] for k in FIELDS if k != "sealed_at"):
                problems.append((c["from_id"], f"seal {seq} differs from its store copy"))
            if c is not None:
                chain.append(c)
        previous = None
        for s in chain:
            if s["seq"] != (previous["seq"] + 1 if previous else 1):
                problems.append((None, f"seal {s['seq']} is out of sequence"))
            if s["from_id"] != (previous["to_id"] + 1 if previous else 1):
                problems.append((s["from_id"], f"seal {s['seq']} does not start where it should"))
            if s["previous_digest"] != (previous["digest"] if previous else bytes(32)):
                problems.append((s["from_id"], f"seal {s['seq']} does not chain"))
            mac = hmac.new(seal_key, mac_message(s), "sha256").digest()
            if s["key_id"] != key_id or s["mac"] is None or not hmac.compare_digest(mac, s["mac"]):
                problems.append((s["from_id"], f"seal {s['seq']} has a bad MAC"))
            previous = s
        if not chain:
            return problems

        marked = [s for s in chain if s["version"] == 2]
        tops, top = [], None
        for s in marked:
            top = s["high_water"] if top is None else max(top, s["high_water"])
            tops.append(top)
        pending = {}
        for s in marked:
            for i, fp in fingerprints(s["pending"], s["to_id"]):
                pending[i] = fp
        seq_name = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace "
            "WHERE c.oid = pg_get_serial_sequence('public.audit_events', 'id')::regclass"
        ).fetchone()
        sq = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.Identifier(seq_name["nspname"], seq_name["relname"])
            )
        ).fetchone()
        now_high = sq["last_value"] if sq["is_called"] else sq["last_value"] - 1
        if top is not None and now_high < top:
            problems.append((now_high + 1, "the sequence was rewound"))

        starts = [s["from_id"] for s in chain]
        state = {i: [] for i in range(len(chain))}
        seen_pending = set()
        newest = None
        with (
            conn.transaction(),
            conn.cursor(name="v", binary=True, row_factory=psycopg.rows.tuple_row) as cur,
        ):
            for oid in (20, 25, 2950, 3802, 1184):
                cur.adapters.register_loader(oid, Raw)
            cur.execute(sql.SQL("SELECT {} FROM public.audit_events ORDER BY id").format(COLUMNS))
            last_id = None
            for values in cur:
                assert [d.type_code for d in cur.description] == TYPES
                row_id = i64(values[0])
                assert last_id is None or row_id > last_id
                last_id = row_id
                index = bisect.bisect_right(starts, row_id) - 1
                if index < 0:
                    problems.append((row_id, f"id {row_id} lies below the first seal"))
                    continue
                seal = chain[index]
                in_chain = row_id <= chain[-1]["to_id"]
                if in_chain:
                    fn = row_hash_1 if seal["version"] == 1 else row_hash_2
                    state[index].append((row_id, fn(values)))
                if in_chain and seal["version"] == 1:
                    newest = None
                    continue
                created = i64(values[8])
                if newest is not None and created < newest - TOLERANCE_US:
                    problems.append((row_id, f"id {row_id}: created_at went backwards"))
                newest = created if newest is None else max(newest, created)
                j = bisect.bisect_left(tops, row_id)
                if j < len(marked) and marked[j]["to_id"] < row_id:
                    if created > us(marked[j]["sealed_at"]) + TOLERANCE_US:
                        problems.append((row_id, f"id {row_id} was reused"))
                if row_id in pending:
                    seen_pending.add(row_id)
                    if row_hash_2(values)[:8] != pending[row_id]:
                        problems.append((row_id, f"pending id {row_id} changed"))
        for i in sorted(set(pending) - seen_pending):
            problems.append((i, f"pending id {i} is missing"))

        for index, s in enumerate(chain):
            got = state[index]
            want = fingerprints(s["fingerprints"], s["from_id"] - 1)
            for (gi, gh), (wi, wf) in zip(got, want, strict=False):
                if gi != wi or gh[:8] != wf:
                    problems.append((min(gi, wi), f"seal {s['seq']}: id {min(gi, wi)} differs"))
                    break
            domain = f"hardening-pipeline audit seal v{s['version']}".encode() + b"\x00"
            h = hashlib.sha256(domain + s["previous_digest"])
            for _, rh in got:
                h.update(rh)
            h.update(struct.pack(">qqq", s["from_id"], s["to_id"], len(got)))
            if h.digest() != s["digest"] or len(got) != s["row_count"]:
                problems.append((s["from_id"], f"seal {s['seq']} does not match its rows"))
    return problems


def anchor_path(state_dir: Path, url: str) -> Path:
    """Where the docs say the sealing host keeps the anchor of the database at ``url``."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    target = f"{info.get('host') or ''}:{info.get('port') or 5432}/{info.get('dbname') or ''}"
    name = hashlib.sha256(target.encode()).hexdigest()[:16]
    return state_dir / "audit-seal-anchors" / f"{name}.json"


def verify_anchor(url: str, path: Path, master_key: bytes) -> list[str]:
    """The anchor's MAC, and whether the database's chain reaches it (docs, "The anchor")."""
    body = json.loads(path.read_bytes())
    problems = []
    key_id = hkdf(master_key, b"hardening-pipeline backup v1 key-id", 8).hex()
    mac_key = hkdf(master_key, b"hardening-pipeline backup v1 manifest-mac-key")
    seal_key = hkdf(mac_key, b"hardening-pipeline audit seal v1 mac-key")
    signed = {k: v for k, v in body.items() if k != "mac"}
    message = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    if body["format"] != "hardening-audit-seal-anchor/1" or body["key_id"] != key_id:
        problems.append("not an anchor under this key")
    elif hmac.new(seal_key, message, "sha256").hexdigest() != body["mac"]:
        problems.append("the anchor's MAC does not verify")
    with psycopg.connect(url) as conn:
        seal = conn.execute(
            "SELECT to_id, digest FROM hardening.audit_seals WHERE seq = %s", (body["seq"],)
        ).fetchone()
    if seal is None:
        problems.append(f"seal {body['seq']} is anchored but not in the chain")
    elif (seal[0], bytes(seal[1]).hex()) != (body["to_id"], body["digest"]):
        problems.append(f"seal {body['seq']} differs from the anchor")
    return problems
