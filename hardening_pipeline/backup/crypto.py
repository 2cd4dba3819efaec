"""Keys for encrypted backups: the master keyring, per-backup data keys, key ids and the MAC key.

Two levels of keys, so that rotating the master key never means re-encrypting data:

* the **master key** (``BACKUP_ENCRYPTION_KEY``, base64 of 32 bytes) never touches a backup
  object. Three independent subkeys are derived from it with HKDF-SHA256: a public *key id* that
  names it in manifests, a *wrap key* that encrypts data keys, and a *MAC key* that authenticates
  manifests. Deriving instead of reusing the raw key keeps each use cryptographically separate.
* a random 32-byte **data key** per backup encrypts that backup's objects. It is stored in the
  manifest wrapped (AES-256-GCM) under the master key, so rotation only re-wraps 60 bytes.

The keyring holds the current master key plus ``BACKUP_ENCRYPTION_KEYS_PREVIOUS`` (decrypt-only) and
picks the right one by key id. The exact byte layouts are specified in ``docs/backup-format.md``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hardening_pipeline.errors import ConfigError, HardeningError
from hardening_pipeline.settings import (
    ENV_ENCRYPTION_KEY,
    ENV_ENCRYPTION_KEYS_PREVIOUS,
    Settings,
)

MASTER_KEY_BYTES = 32
DATA_KEY_BYTES = 32
KEY_ID_BYTES = 8
WRAP_NONCE_BYTES = 12
WRAPPED_KEY_BYTES = WRAP_NONCE_BYTES + DATA_KEY_BYTES + 16
LOCAL_KEY_FILENAME = "backup-encryption.key"

# HKDF "info" labels. They are part of the on-disk format: changing one orphans every backup.
INFO_KEY_ID = b"hardening-pipeline backup v1 key-id"
INFO_WRAP_KEY = b"hardening-pipeline backup v1 wrap-key"
INFO_MAC_KEY = b"hardening-pipeline backup v1 manifest-mac-key"
INFO_DATA_KEY_ID = b"hardening-pipeline backup v1 data-key-id"
WRAP_AAD_PREFIX = b"hardening-pipeline backup v1 data-key\x00"
TENANT_WRAP_AAD_PREFIX = b"hardening-pipeline backup v1 tenant-key\x00"

_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")


class BackupIntegrityError(HardeningError):
    """A backup object, key or manifest failed authentication or is malformed.

    Raised for anything an attacker or a broken disk could cause. Callers must treat the whole
    object (and anything already loaded from it) as untrustworthy.
    """


class UnknownKeyError(ConfigError):
    """The backup names a master key id that is not configured.

    A configuration problem, not corruption: the fix is to supply the old key. It is a
    ``ConfigError`` on purpose, so that nothing (retention in particular) mistakes a backup it
    merely cannot read for a backup that does not exist.
    """


def _hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    # No salt: RFC 5869 then uses HashLen zero bytes, which is sound for a uniformly random IKM.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def derive_subkey(key: bytes, info: bytes) -> bytes:
    """A 32-byte key for one purpose (named by ``info``), derived from a data or tenant key."""
    return _hkdf(key, info)


def parse_master_key(value: str, variable_name: str) -> bytes:
    """Decode a base64 master key, or raise a one-sentence ``ConfigError`` naming the variable.

    The message never echoes the value: it is a secret even when it is malformed.
    """
    text = (value or "").strip()
    if not text:
        raise ConfigError(
            f"{variable_name} is empty; set it to the base64 of 32 random bytes "
            f"(run `hardening keygen` to make one)."
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{variable_name} is not valid base64; set it to the output of `hardening keygen`."
        ) from None
    if len(raw) != MASTER_KEY_BYTES:
        raise ConfigError(
            f"{variable_name} decodes to {len(raw)} bytes but must decode to exactly "
            f"{MASTER_KEY_BYTES}; run `hardening keygen` to make a valid key."
        )
    return raw


def generate_master_key_b64() -> str:
    """A fresh master key as standard base64, the form ``BACKUP_ENCRYPTION_KEY`` expects."""
    return base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode("ascii")


def load_or_create_local_key(state_dir: Path) -> tuple[str, bool]:
    """Return ``(key_b64, created)`` for the embedded demo database's key file.

    Only for the embedded database: the key lives next to the data it protects, which is fine for
    a demo and wrong for production. The file is created once with mode 0600 and published with
    ``link`` so two processes starting together agree on one key instead of racing.
    """
    path = Path(state_dir) / LOCAL_KEY_FILENAME
    if path.exists():
        return _read_local_key(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_b64 = generate_master_key_b64()
    tmp = path.with_name(f".{LOCAL_KEY_FILENAME}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key_b64 + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_local_key(path), False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return key_b64, True


def _read_local_key(path: Path) -> str:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    parse_master_key(text, str(path))
    return text


def generate_data_key() -> bytes:
    """A fresh random per-backup data key."""
    return secrets.token_bytes(DATA_KEY_BYTES)


def data_key_id(data_key: bytes) -> bytes:
    """The 8-byte id written into every object header, derived one-way from the data key.

    It lets a reader say "this object belongs to a different backup's key" instead of a bare
    authentication failure, and unlike the master key id it survives re-wrapping.
    """
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes, got {len(data_key)}")
    return _hkdf(data_key, INFO_DATA_KEY_ID, KEY_ID_BYTES)


def master_key_id(master_key: bytes) -> str:
    """Public 16-hex-digit name of a master key (HKDF output: reveals nothing about the key)."""
    return _hkdf(master_key, INFO_KEY_ID, KEY_ID_BYTES).hex()


@dataclass(frozen=True)
class MasterKey:
    """One master key's derived subkeys; the raw key itself is not kept."""

    key_id: str
    wrap_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKey:
        if len(raw) != MASTER_KEY_BYTES:
            raise ValueError(f"a master key is {MASTER_KEY_BYTES} bytes, got {len(raw)}")
        return cls(
            key_id=master_key_id(raw),
            wrap_key=_hkdf(raw, INFO_WRAP_KEY),
            mac_key=_hkdf(raw, INFO_MAC_KEY),
        )


@dataclass(frozen=True)
class WrappedDataKey:
    """A data key encrypted under the master key named by ``key_id``.

    ``ciphertext`` is ``nonce (12) || AES-256-GCM ciphertext (32) || tag (16)``.
    """

    key_id: str
    ciphertext: bytes = field(repr=False)

    def b64(self) -> str:
        return base64.b64encode(self.ciphertext).decode("ascii")


def _wrap_aad(backup_id: str) -> bytes:
    # Binding the backup id stops a wrapped key being transplanted into another backup's manifest.
    return WRAP_AAD_PREFIX + backup_id.encode("utf-8")


def _tenant_wrap_aad(tenant_id: str) -> bytes:
    # Binding the tenant id stops one tenant's wrapped key being filed under another tenant.
    return TENANT_WRAP_AAD_PREFIX + tenant_id.encode("utf-8")


class Keyring:
    """The current master key (encrypts and signs) plus previous keys (decrypt and verify only)."""

    def __init__(
        self,
        current: bytes,
        previous: Sequence[bytes] = (),
        *,
        local_key_path: Path | None = None,
        local_key_created: bool = False,
    ) -> None:
        self.current = MasterKey.from_bytes(current)
        keys = {self.current.key_id: self.current}
        for raw in previous:
            key = MasterKey.from_bytes(raw)
            keys.setdefault(key.key_id, key)
        self._keys = keys
        # Set when the key came from the embedded database's key file, so callers can warn.
        self.local_key_path = local_key_path
        self.local_key_created = local_key_created

    def __repr__(self) -> str:
        return f"Keyring(current={self.current.key_id!r}, key_ids={self.key_ids!r})"

    @property
    def current_key_id(self) -> str:
        return self.current.key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def master_key(self, key_id: str) -> MasterKey:
        """The master key with this id, or ``UnknownKeyError`` telling the user what to add."""
        key = self._keys.get(key_id)
        if key is None:
            shown = key_id if isinstance(key_id, str) and _KEY_ID_RE.fullmatch(key_id) else "?"
            raise UnknownKeyError(
                f"this backup was encrypted under master key id {shown}, which is none of the "
                f"configured keys ({', '.join(self._keys)}); add that old key to "
                f"{ENV_ENCRYPTION_KEYS_PREVIOUS}."
            )
        return key

    def _seal(self, data_key: bytes, aad: bytes) -> WrappedDataKey:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes, got {len(data_key)}")
        nonce = secrets.token_bytes(WRAP_NONCE_BYTES)
        sealed = AESGCM(self.current.wrap_key).encrypt(nonce, data_key, aad)
        return WrappedDataKey(self.current.key_id, nonce + sealed)

    def _open(self, wrapped: WrappedDataKey, aad: bytes, what: str, altered: str) -> bytes:
        key = self.master_key(wrapped.key_id)
        blob = wrapped.ciphertext
        if len(blob) != WRAPPED_KEY_BYTES:
            raise BackupIntegrityError(
                f"{what} is {len(blob)} bytes, expected {WRAPPED_KEY_BYTES}."
            )
        try:
            return AESGCM(key.wrap_key).decrypt(
                blob[:WRAP_NONCE_BYTES], blob[WRAP_NONCE_BYTES:], aad
            )
        except InvalidTag:
            raise BackupIntegrityError(
                f"{what} failed authentication under master key id {key.key_id}; {altered}."
            ) from None

    def wrap_data_key(self, data_key: bytes, backup_id: str) -> WrappedDataKey:
        """Encrypt a data key under the current master key (AES-256-GCM, random nonce)."""
        return self._seal(data_key, _wrap_aad(backup_id))

    def unwrap_data_key(self, wrapped: WrappedDataKey, backup_id: str) -> bytes:
        """Decrypt a data key with whichever configured master key its key id names."""
        return self._open(
            wrapped,
            _wrap_aad(backup_id),
            f"the wrapped data key of backup {backup_id!r}",
            "the manifest was altered or is from another backup",
        )

    def wrap_tenant_key(self, tenant_key: bytes, tenant_id: str) -> WrappedDataKey:
        """Encrypt a tenant's data key under the current master key, bound to the tenant id."""
        return self._seal(tenant_key, _tenant_wrap_aad(tenant_id))

    def unwrap_tenant_key(self, wrapped: WrappedDataKey, tenant_id: str) -> bytes:
        """Decrypt a tenant's data key from the key ledger."""
        return self._open(
            wrapped,
            _tenant_wrap_aad(tenant_id),
            f"the wrapped key of tenant {tenant_id!r}",
            "the key ledger was altered or the entry was filed under another tenant",
        )

    def rewrap_data_key(self, wrapped: WrappedDataKey, backup_id: str) -> WrappedDataKey:
        """Move a data key from an old master key to the current one: the whole of a rotation."""
        return self.wrap_data_key(self.unwrap_data_key(wrapped, backup_id), backup_id)

    def manifest_mac(self, key_id: str, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under the MAC key of master key ``key_id``."""
        return hmac.new(self.master_key(key_id).mac_key, message, sha256).digest()


def keyring_from_settings(settings: Settings) -> Keyring:
    """Build the keyring the environment describes, refusing to guess for a real database.

    A real database without ``BACKUP_ENCRYPTION_KEY`` is refused before anything runs: silently
    generating a key there would produce backups nobody can restore once the machine is gone.
    """
    local_path: Path | None = None
    created = False
    if settings.encryption_key:
        current = parse_master_key(settings.encryption_key, ENV_ENCRYPTION_KEY)
    elif settings.uses_embedded_database:
        key_b64, created = load_or_create_local_key(settings.state_dir)
        local_path = Path(settings.state_dir) / LOCAL_KEY_FILENAME
        current = parse_master_key(key_b64, str(local_path))
    else:
        raise ConfigError(
            f"{ENV_ENCRYPTION_KEY} is not set; run `hardening keygen` and export it as "
            f"{ENV_ENCRYPTION_KEY} (and keep a copy off this machine: without it no backup "
            f"can be restored)."
        )
    previous = [
        parse_master_key(value, f"{ENV_ENCRYPTION_KEYS_PREVIOUS} entry {index}")
        for index, value in enumerate(settings.previous_encryption_keys, start=1)
    ]
    return Keyring(current, previous, local_key_path=local_path, local_key_created=created)
