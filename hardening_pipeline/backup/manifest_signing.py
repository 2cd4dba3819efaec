"""The signed ``manifest.json`` bytes: canonical JSON plus an HMAC-SHA256, written and checked.

The MAC is over the canonical JSON of the manifest without its MAC field, under a key derived
from the master key that wrapped the backup's data key (``docs/backup-format.md``).
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import (
    MAC_FIELD,
    MAX_CLOCK_SKEW,
    MAX_MANIFEST_BYTES,
    READABLE_VERSIONS,
    Manifest,
    ManifestError,
    format_timestamp,
)
from hardening_pipeline.backup.manifest_document import (
    KEY_ID_RE,
    SHA256_HEX_RE,
    manifest_from_dict,
    manifest_to_dict,
)


def canonical_json(value: Any) -> bytes:
    """The one byte sequence a JSON value maps to: sorted keys, no spaces, ASCII only.

    Python's ``json.dumps`` with these options; integers only (no floats), so there is no number
    formatting ambiguity to specify.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def sign_manifest(manifest: Manifest, keyring: Keyring) -> bytes:
    """Validate, serialize and MAC a manifest; the result is the exact ``manifest.json`` bytes.

    The MAC uses the master key named by ``manifest.key_id`` (the one that wrapped the data key),
    so key id, wrapped key and MAC always agree. The manifest is round-tripped through the strict
    loader first: a writer cannot produce a manifest its own reader would reject.
    """
    body = manifest_to_dict(manifest)
    try:
        manifest_from_dict(body)
    except ManifestError as exc:
        raise ValueError(f"refusing to sign an invalid manifest: {exc}") from None
    mac = keyring.manifest_mac(manifest.key_id, canonical_json(body))
    return canonical_json({**body, MAC_FIELD: mac.hex()})


def load_manifest(raw: bytes, keyring: Keyring, *, now: datetime | None = None) -> Manifest:
    """Authenticate and strictly parse ``manifest.json`` bytes.

    Order matters: only the format version, key id and MAC are looked at before the MAC has
    verified. Raises ``ManifestError`` with a one-sentence reason for anything malformed or
    altered, and ``UnknownKeyError`` (a ``ConfigError``) when the signing key is not configured,
    because that is fixed by configuration, not by discarding the backup.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("load_manifest takes the raw bytes of manifest.json")
    raw = bytes(raw)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"manifest is {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} cap."
        )
    try:
        document = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"manifest is not valid JSON ({_short(exc)}).") from None
    if not isinstance(document, dict):
        raise ManifestError("manifest is not a JSON object.")
    version = document.get("format_version")
    if type(version) is not int:
        raise ManifestError("manifest has no integer format_version.")
    if version not in READABLE_VERSIONS:
        raise ManifestError(
            f"manifest format version {version} is not supported (this reader knows "
            f"{READABLE_VERSIONS[-1]} and older); upgrade hardening_pipeline to read it."
        )
    mac_hex = document.pop(MAC_FIELD, None)
    if not isinstance(mac_hex, str) or not SHA256_HEX_RE.fullmatch(mac_hex):
        raise ManifestError(f"manifest has no valid {MAC_FIELD} field.")
    key_id = document.get("key_id")
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise ManifestError("manifest has no valid key_id (16 lowercase hex digits).")
    try:
        body = canonical_json(document)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"manifest cannot be canonicalized ({_short(exc)}).") from None
    expected = keyring.manifest_mac(key_id, body)
    if not hmac.compare_digest(expected, bytes.fromhex(mac_hex)):
        raise ManifestError(
            f"manifest authentication failed under key id {key_id}; it was altered or "
            f"written with a different key."
        )
    # Authentic content in a non-canonical spelling means someone re-encoded the file.
    if canonical_json({**document, MAC_FIELD: mac_hex}) != raw:
        raise ManifestError("manifest bytes are not in canonical form.")
    manifest = manifest_from_dict(document)
    current = now or datetime.now(UTC)
    if manifest.created_at > current + MAX_CLOCK_SKEW:
        raise ManifestError(
            f"manifest created_at {format_timestamp(manifest.created_at)} is in the future; "
            f"check the clock of the machine that wrote it."
        )
    return manifest


# --- strict JSON decoding -------------------------------------------------------------------


def _short(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0][:120]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
