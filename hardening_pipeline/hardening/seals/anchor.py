"""The anchor: the newest seal as the sealing host saw it, kept where the database cannot reach.

Every seal is chained to the one before it, so a rewrite of sealed rows shows, except at the
end: whoever controls the database can delete the newest seal (and, with write access to the
store, its store copy) and the chain that is left is intact; the next run then seals the rows
that seal covered, forged or not. After every run the sealer writes the newest seal's ``seq``,
``to_id`` and digest to a file on its own host (``HARDENING_STATE_DIR/audit-seal-anchor.json``,
MAC'd with the seal key when there is one). A chain that ends before the anchor, or whose seal
at the anchor's ``seq`` has another digest, is red, and sealing on top of it is refused.
The file format is in docs/audit-seal-format.md, "The anchor".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.hardening.seals.format import (
    Seal,
    SealError,
    _Authenticated,
    canonical_json,
    iso,
)

ANCHOR_FORMAT = "hardening-audit-seal-anchor/1"
ANCHOR_DIR = "audit-seal-anchors"


def anchor_file_name(database_url: str) -> str:
    """``audit-seal-anchors/<first 16 hex of SHA-256("host:port/dbname")>.json``: one anchor per
    database as the configuration names it (not as the database describes itself)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        info = {"dbname": database_url}
    target = f"{info.get('host') or ''}:{info.get('port') or 5432}/{info.get('dbname') or ''}"
    return f"{ANCHOR_DIR}/{hashlib.sha256(target.encode('utf-8')).hexdigest()[:16]}.json"


@dataclass(frozen=True)
class Anchor(_Authenticated):
    """The newest seal a sealing run left, as recorded outside the database."""

    seq: int
    to_id: int
    digest: bytes
    sealed_at: datetime
    key_id: str | None = None
    mac: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, seal: Seal) -> Anchor:
        return cls(seal.seq, seal.to_id, seal.digest, seal.sealed_at)

    def mac_message(self) -> bytes:
        return canonical_json(
            {
                "format": ANCHOR_FORMAT,
                "seq": self.seq,
                "to_id": self.to_id,
                "digest": self.digest.hex(),
                "sealed_at": iso(self.sealed_at),
                "key_id": self.key_id,
            }
        )

    def to_json(self) -> bytes:
        body = json.loads(self.mac_message())
        body["mac"] = self.mac.hex() if self.mac else None
        return json.dumps(body, sort_keys=True, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Anchor:
        try:
            body = json.loads(data)
            if body.get("format") != ANCHOR_FORMAT:
                raise ValueError(f"format {body.get('format')!r}")
            return cls(
                seq=int(body["seq"]),
                to_id=int(body["to_id"]),
                digest=bytes.fromhex(body["digest"]),
                sealed_at=datetime.fromisoformat(body["sealed_at"]),
                key_id=body.get("key_id"),
                mac=bytes.fromhex(body["mac"]) if body.get("mac") else None,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SealError(
                f"the seal anchor {where} is not readable ({exc}); move it aside only after "
                "checking the chain against the store (docs/runbook.md#status-audit-seal-chain)."
            ) from None


def read_anchor(path: Path | None) -> Anchor | None:
    """The anchor at ``path``, or None when there is no path or no file yet."""
    if path is None or not path.exists():
        return None
    return Anchor.from_json(path.read_bytes(), str(path))


def write_anchor(path: Path, seal: Seal, keyring: Keyring | None) -> Anchor:
    """Record ``seal`` as the newest; never moves the anchor back to an earlier seal."""
    current = read_anchor(path)
    if current is not None and current.seq > seal.seq:
        raise SealError(
            f"the seal anchor {path} names seal {current.seq}, newer than seal {seal.seq}; "
            "it is not moved back."
        )
    anchor = Anchor.of(seal)
    if keyring is not None:
        anchor = anchor.signed(keyring)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(anchor.to_json())
    os.replace(partial, path)  # whole or not at all: a torn anchor would stop every run
    return anchor


def anchor_problem(
    chain: Sequence[Seal], anchor: Anchor, keyring: Keyring | None
) -> tuple[int, str] | None:
    """(the first id in doubt, why) when the chain does not reach the anchor, else None."""
    if keyring is not None and (why := anchor.mac_problem(keyring)):
        return anchor.to_id, f"the seal anchor {why}"
    by_seq = {s.seq: s for s in chain}
    seal = by_seq.get(anchor.seq)
    if seal is None:
        end = f"ends at seal {chain[-1].seq}" if chain else "is empty"
        start = chain[-1].to_id + 1 if chain else 1
        return start, (
            f"seal {anchor.seq} (ids up to {anchor.to_id}, sealed {iso(anchor.sealed_at)[:19]}Z) "
            f"is anchored outside the database but the chain {end}: newer seals were deleted"
        )
    if seal.digest != anchor.digest or seal.to_id != anchor.to_id:
        return seal.from_id, f"seal {anchor.seq} differs from the anchor kept outside the database"
    return None


__all__ = [
    "ANCHOR_DIR",
    "Anchor",
    "anchor_file_name",
    "anchor_problem",
    "read_anchor",
    "write_anchor",
]
