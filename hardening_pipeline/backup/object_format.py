"""The encrypted backup object: zstd, then chunked AES-256-GCM with a STREAM-style nonce.

One object holds one tenant's (or the non-tenant tables') ``COPY`` text. Layout, byte by byte, in
``docs/backup-format.md``; in short::

    object  = header || chunk_0 || ... || chunk_n
    chunk_i = AES-256-GCM(data_key, nonce_i, segment_i, aad=header)     (segment + 16-byte tag)
    nonce_i = nonce_prefix (7) || i as u32 big-endian (4) || final flag (1: 0x01 on chunk_n only)

where the segments are the zstd-compressed plaintext cut into ``segment_size`` pieces. Why this
shape rather than one ``AESGCM.encrypt`` or a streaming ``Cipher(GCM)``:

* ``AESGCM`` refuses more than 2 GiB and needs it all in memory; per-segment AEADs keep memory
  flat and have no size limit worth mentioning (2^32 segments of 1 MiB).
* a streaming GCM decryptor releases plaintext before the tag is checked. Here every segment is
  authenticated before a byte of it leaves the decoder.
* the counter in the nonce pins each chunk to its position, the final flag makes truncation at a
  chunk boundary fail, and the header as associated data pins every chunk to one backup and one
  object name. Reordering, duplication, dropping, splicing and trailing bytes all fail a tag.

Plaintext never touches disk: both directions are iterators.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hardening_pipeline.backup.crypto import (
    DATA_KEY_BYTES,
    KEY_ID_BYTES,
    BackupIntegrityError,
    data_key_id,
)
from hardening_pipeline.backup.tenant_digests import new_digest

MAGIC = b"HPBACKUP"
FORMAT_VERSION = 1
COMPRESSION_ZSTD = 1
SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 16
# Caps what a hostile header can make the decoder buffer before the first tag is checked.
MAX_SEGMENT_SIZE = 1 << 24
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
MAX_CHUNKS = 1 << 32
MAX_NAME_LENGTH = 128
FIXED_HEADER_SIZE = len(MAGIC) + 1 + 1 + 4 + KEY_ID_BYTES + NONCE_PREFIX_SIZE
ZSTD_LEVEL = 1
# Level 1, measured on the 1,000,000-message demo database (dry-run backups, same data): 75.1 MiB
# in 5.1-5.6 s against 81.5 MiB in 6.0-7.3 s at level 3. On these COPY streams (many short,
# repetitive rows) the fast strategy compresses *better*, and it leaves the output below
# pg_dump -Fc's. Compression is still the bottleneck of encoding (the AEAD and both hashes add
# little), and worker threads (threads=-1) were no faster, only less predictable: compress inline.
ZSTD_THREADS = 0
# Upper bound of one decompressed piece the decoder yields, whatever the compression ratio.
DECODE_WRITE_SIZE = 1 << 20
_DECODE_READ_SIZE = 1 << 17

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def validate_name(kind: str, value: object) -> str:
    """Check a backup id or object name: ASCII ``[A-Za-z0-9._-]``, 1-128 chars, no leading dot.

    Names become storage keys and header bytes, so anything that could form a path or needs
    escaping is refused up front.
    """
    if (
        not isinstance(value, str)
        or len(value) > MAX_NAME_LENGTH
        or not _NAME_RE.fullmatch(value)
        or ".." in value
    ):
        raise ValueError(
            f"{kind} must be 1-{MAX_NAME_LENGTH} characters of A-Z a-z 0-9 . _ - starting with a "
            f"letter or digit, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class ObjectHeader:
    """The plaintext header; its exact bytes are the associated data of every chunk."""

    segment_size: int
    key_id: bytes
    nonce_prefix: bytes
    backup_id: str
    object_name: str

    def to_bytes(self) -> bytes:
        backup_id = validate_name("backup id", self.backup_id).encode("ascii")
        object_name = validate_name("object name", self.object_name).encode("ascii")
        return b"".join(
            (
                MAGIC,
                bytes((FORMAT_VERSION, COMPRESSION_ZSTD)),
                struct.pack(">I", self.segment_size),
                self.key_id,
                self.nonce_prefix,
                bytes((len(backup_id),)),
                backup_id,
                bytes((len(object_name),)),
                object_name,
            )
        )


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + struct.pack(">I", counter) + (b"\x01" if final else b"\x00")


@dataclass(frozen=True)
class ObjectStats:
    """Sizes and digests of one object, as the manifest records them."""

    plaintext_bytes: int
    plaintext_sha256: str
    compressed_bytes: int
    ciphertext_bytes: int
    ciphertext_sha256: str
    chunks: int


class _Finished:
    """Stats that only exist after the stream was consumed to the end without error."""

    _stats: ObjectStats | None = None

    @property
    def stats(self) -> ObjectStats:
        if self._stats is None:
            raise RuntimeError("the stream has not been consumed to the end (or it failed)")
        return self._stats

    @property
    def finished(self) -> bool:
        return self._stats is not None

    @property
    def plaintext_bytes(self) -> int:
        return self.stats.plaintext_bytes

    @property
    def plaintext_sha256(self) -> str:
        return self.stats.plaintext_sha256

    @property
    def compressed_bytes(self) -> int:
        return self.stats.compressed_bytes

    @property
    def ciphertext_bytes(self) -> int:
        return self.stats.ciphertext_bytes

    @property
    def ciphertext_sha256(self) -> str:
        return self.stats.ciphertext_sha256


class ObjectEncoder(_Finished):
    """Turn an iterable of plaintext chunks into an iterator of ciphertext chunks.

    Iterate it once; the sizes and SHA-256 digests (``plaintext_bytes``, ``compressed_bytes``,
    ``ciphertext_bytes``, ``ciphertext_sha256``, ``plaintext_sha256``, or ``stats``) become
    readable after the iterator is exhausted. Memory stays at about two segments: one pending
    segment is held back because only the end of the input tells whether it is the final one.
    """

    def __init__(
        self,
        plaintext: Iterable[bytes],
        data_key: bytes,
        *,
        backup_id: str,
        object_name: str,
        segment_size: int = SEGMENT_SIZE,
        level: int = ZSTD_LEVEL,
        threads: int = ZSTD_THREADS,
        digest_key: bytes | None = None,
    ) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes, got {len(data_key)}")
        # A tenant object's plaintext digest is keyed by the tenant's key: see tenant_digests.py.
        self._digest_key = digest_key
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment size must be {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}")
        self._plaintext = plaintext
        self._aead = AESGCM(data_key)
        self.header = ObjectHeader(
            segment_size=segment_size,
            key_id=data_key_id(data_key),
            nonce_prefix=secrets.token_bytes(NONCE_PREFIX_SIZE),
            backup_id=backup_id,
            object_name=object_name,
        )
        self._header_bytes = self.header.to_bytes()
        self._level = level
        self._threads = threads
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def _run(self) -> Iterator[bytes]:
        size = self.header.segment_size
        prefix = self.header.nonce_prefix
        aad = self._header_bytes
        plain_hash = new_digest(self._digest_key)
        cipher_hash = hashlib.sha256()
        plain_bytes = compressed = cipher_bytes = 0
        counter = 0
        pending = bytearray()
        compressor = zstandard.ZstdCompressor(level=self._level, threads=self._threads)
        cobj = compressor.compressobj()

        cipher_hash.update(aad)
        cipher_bytes += len(aad)
        yield aad

        def seal(segment: bytes | memoryview, final: bool) -> bytes:
            nonlocal counter, cipher_bytes
            if counter >= MAX_CHUNKS:
                raise ValueError("object too large for a 32-bit chunk counter")
            sealed = self._aead.encrypt(_nonce(prefix, counter, final), segment, aad)
            counter += 1
            cipher_hash.update(sealed)
            cipher_bytes += len(sealed)
            return sealed

        def seal_head(buffer: bytearray, n: int) -> bytes:
            # Seal straight from the buffer: a copied segment would be one more MiB per step.
            view = memoryview(buffer)
            try:
                sealed = seal(view[:n], final=False)
            finally:
                view.release()
            del buffer[:n]
            return sealed

        for chunk in self._plaintext:
            view = memoryview(chunk).cast("B")
            plain_hash.update(view)
            plain_bytes += len(view)
            # Slice huge caller chunks so compressor output, and so memory, stays segment-sized.
            for start in range(0, len(view), size):
                out = cobj.compress(view[start : start + size])
                if out:
                    compressed += len(out)
                    pending += out
                # Strictly greater: a segment that ends exactly at the input's end is the final one.
                while len(pending) > size:
                    yield seal_head(pending, size)
        tail = cobj.flush()
        compressed += len(tail)
        pending += tail
        while len(pending) > size:
            yield seal_head(pending, size)
        yield seal(bytes(pending), final=True)
        self._stats = ObjectStats(
            plaintext_bytes=plain_bytes,
            plaintext_sha256=plain_hash.hexdigest(),
            compressed_bytes=compressed,
            ciphertext_bytes=cipher_bytes,
            ciphertext_sha256=cipher_hash.hexdigest(),
            chunks=counter,
        )


class _ByteQueue:
    """Pull-based buffer over an iterable of arbitrary-sized byte chunks."""

    def __init__(self, chunks: Iterable[bytes], on_bytes: Callable[[bytes], None]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._on_bytes = on_bytes

    def available(self) -> int:
        return len(self._buf) - self._pos

    def fill(self, want: int) -> bool:
        """Buffer at least ``want`` bytes if the input has them; False means it hit the end."""
        while self.available() < want:
            if self._eof:
                return False
            try:
                piece = next(self._chunks)
            except StopIteration:
                self._eof = True
                return False
            if not isinstance(piece, bytes | bytearray | memoryview):
                raise TypeError(f"ciphertext chunks must be bytes, got {type(piece).__name__}")
            if self._pos and self._pos >= len(self._buf) // 2:
                del self._buf[: self._pos]
                self._pos = 0
            self._on_bytes(piece)
            self._buf += piece
        return True

    def take(self, n: int) -> bytes:
        with memoryview(self._buf) as view:
            out = view[self._pos : self._pos + n].tobytes()
        self._pos += len(out)
        return out


class _ZstdFrameChecker:
    """Walk zstd frame and block headers (RFC 8878) to prove the payload is exactly one frame.

    python-zstandard's bounded-output reader stops silently at a truncated frame and ignores bytes
    after it, so completeness is checked here, on the authenticated compressed bytes. Only block
    headers are parsed; block bodies are skipped by length, so this costs almost nothing.
    """

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 5  # magic (4) + frame header descriptor (1)
        self._scratch = bytearray()
        self._skip = 0
        self._checksum = False

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                if not self._skip and self._state == "tail":
                    self._state = "done"
                continue
            if self._state == "done":
                raise BackupIntegrityError("object holds bytes after the end of its zstd frame.")
            take = min(self._need - len(self._scratch), n - pos)
            self._scratch += data[pos : pos + take]
            pos += take
            if len(self._scratch) == self._need:
                raw = bytes(self._scratch)
                self._scratch.clear()
                self._advance(raw)

    def _advance(self, raw: bytes) -> None:
        if self._state == "magic":
            if raw[:4] != _ZSTD_MAGIC:
                raise BackupIntegrityError("object payload is not a zstd frame.")
            descriptor = raw[4]
            single_segment = (descriptor >> 5) & 1
            content_size = (single_segment, 2, 4, 8)[descriptor >> 6]
            dictionary = (0, 1, 2, 4)[descriptor & 3]
            self._checksum = bool((descriptor >> 2) & 1)
            rest = (0 if single_segment else 1) + dictionary + content_size
            self._state, self._need = ("header", rest) if rest else ("block", 3)
        elif self._state == "header":
            self._state, self._need = "block", 3
        else:
            # Block header, 3 bytes little-endian: last (1 bit) | type (2 bits) | size (21 bits).
            value = int.from_bytes(raw, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise BackupIntegrityError("object payload holds a reserved zstd block type.")
            self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
            if last:
                self._skip += 4 if self._checksum else 0
                self._state = "tail" if self._skip else "done"

    def finish(self) -> None:
        if self._state != "done":
            raise BackupIntegrityError("object's zstd frame is incomplete.")


class ObjectDecoder(_Finished):
    """Turn ciphertext chunks (any boundaries) into authenticated plaintext chunks.

    Every segment's tag is verified before any of its bytes reach the decompressor, so nothing
    unauthenticated is ever yielded. What cannot be known until the end (a missing final chunk,
    trailing bytes, a ciphertext SHA-256 that differs from ``expected_sha256``) raises
    ``BackupIntegrityError`` at the end, after earlier authentic plaintext was yielded: a consumer
    must treat everything it loaded from the object as void if iteration raises (load inside a
    transaction, or into a throwaway database).
    """

    def __init__(
        self,
        ciphertext: Iterable[bytes],
        data_key: bytes,
        *,
        backup_id: str,
        object_name: str,
        expected_sha256: str | None = None,
        digest_plaintext: bool = True,
    ) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes, got {len(data_key)}")
        if expected_sha256 is not None and not _SHA256_RE.fullmatch(expected_sha256):
            raise ValueError("expected_sha256 must be 64 lowercase hex digits")
        # A reader that checks every table's digest itself (the restore) need not pay for a
        # second SHA-256 over the same plaintext; its stats then carry no plaintext digest.
        self._digest_plaintext = digest_plaintext
        self._ciphertext = ciphertext
        self._data_key = data_key
        self._backup_id = backup_id
        self._object_name = object_name
        self._expected_sha256 = expected_sha256
        self._iterator: Iterator[bytes] | None = None
        self.header: ObjectHeader | None = None

    def __iter__(self) -> Iterator[bytes]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def _fail(self, reason: str) -> BackupIntegrityError:
        return BackupIntegrityError(f"backup object {self._object_name!r}: {reason}")

    def _read_header(self, queue: _ByteQueue) -> bytes:
        if not queue.fill(FIXED_HEADER_SIZE + 1):
            raise self._fail("too short to hold a header (truncated or not a backup object).")
        fixed = queue.take(FIXED_HEADER_SIZE)
        if fixed[: len(MAGIC)] != MAGIC:
            raise self._fail("does not start with the backup object magic.")
        version, compression = fixed[8], fixed[9]
        if version != FORMAT_VERSION:
            raise self._fail(f"has unsupported format version {version}.")
        if compression != COMPRESSION_ZSTD:
            raise self._fail(f"has unsupported compression {compression}.")
        (segment_size,) = struct.unpack(">I", fixed[10:14])
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise self._fail(f"has an out-of-range segment size {segment_size}.")
        key_id = fixed[14 : 14 + KEY_ID_BYTES]
        prefix = fixed[14 + KEY_ID_BYTES :]
        names = []
        raw_names = []
        for kind in ("backup id", "object name"):
            if not queue.fill(1):
                raise self._fail("header is truncated.")
            length = queue.take(1)
            if not queue.fill(length[0]):
                raise self._fail("header is truncated.")
            raw = queue.take(length[0])
            try:
                names.append(validate_name(kind, raw.decode("ascii")))
            except (UnicodeDecodeError, ValueError):
                raise self._fail(f"header holds an invalid {kind}.") from None
            raw_names.append(length + raw)
        backup_id, object_name = names
        if key_id != data_key_id(self._data_key):
            raise self._fail("was encrypted with a different data key (another backup's object?).")
        if backup_id != self._backup_id:
            raise self._fail(f"belongs to backup {backup_id!r}, not {self._backup_id!r}.")
        if object_name != self._object_name:
            raise self._fail(f"is really object {object_name!r} (objects were swapped).")
        self.header = ObjectHeader(segment_size, key_id, prefix, backup_id, object_name)
        return fixed + b"".join(raw_names)

    def _segments(
        self, queue: _ByteQueue, aad: bytes, checker: _ZstdFrameChecker, counts: dict[str, int]
    ) -> Iterator[bytes]:
        assert self.header is not None
        aead = AESGCM(self._data_key)
        prefix = self.header.nonce_prefix
        sealed_size = self.header.segment_size + TAG_SIZE
        counter = 0
        while True:
            # One byte of lookahead decides whether this chunk is the final one.
            more = queue.fill(sealed_size + 1)
            if more:
                sealed, final = queue.take(sealed_size), False
            else:
                left = queue.available()
                if left < TAG_SIZE:
                    raise self._fail(
                        "ends without its final chunk (truncated)."
                        if left == 0
                        else f"is truncated inside chunk {counter}."
                    )
                sealed, final = queue.take(left), True
            if counter >= MAX_CHUNKS:
                raise self._fail("has more chunks than the 32-bit counter allows.")
            try:
                segment = aead.decrypt(_nonce(prefix, counter, final), sealed, aad)
            except InvalidTag:
                where = "final chunk" if final else "chunk"
                raise self._fail(
                    f"{where} {counter} failed authentication (corrupted, truncated, reordered, "
                    f"or spliced from another object or key)."
                ) from None
            if final and counter > 0 and not segment:
                raise self._fail("ends with an empty final chunk (non-canonical encoding).")
            counter += 1
            counts["compressed"] += len(segment)
            counts["chunks"] = counter
            checker.feed(segment)
            if segment:
                yield segment
            if final:
                return

    def _run(self) -> Iterator[bytes]:
        cipher_hash = hashlib.sha256()
        counts = {"cipher": 0, "compressed": 0, "chunks": 0}

        def on_bytes(piece: bytes) -> None:
            cipher_hash.update(piece)
            counts["cipher"] += len(piece)

        queue = _ByteQueue(self._ciphertext, on_bytes)
        aad = self._read_header(queue)
        checker = _ZstdFrameChecker()
        segments = self._segments(queue, aad, checker, counts)
        source = _IterReader(segments)
        plain_hash = hashlib.sha256()
        plain_bytes = 0
        hash_plain = self._digest_plaintext
        try:
            for piece in zstandard.ZstdDecompressor().read_to_iter(
                source, read_size=_DECODE_READ_SIZE, write_size=DECODE_WRITE_SIZE
            ):
                if hash_plain:
                    plain_hash.update(piece)
                plain_bytes += len(piece)
                yield piece
        except zstandard.ZstdError as exc:
            raise self._fail(f"payload does not decompress ({exc}).") from None
        # The decompressor stops at the frame's end; drain the rest so the final chunk and any
        # trailing bytes are authenticated and checked too.
        for _ in segments:
            pass
        checker.finish()
        if queue.fill(1):
            raise self._fail("has trailing bytes after its final chunk.")
        digest = cipher_hash.hexdigest()
        if self._expected_sha256 is not None and digest != self._expected_sha256:
            raise self._fail(
                f"has SHA-256 {digest}, but the manifest records {self._expected_sha256}."
            )
        self._stats = ObjectStats(
            plaintext_bytes=plain_bytes,
            plaintext_sha256=plain_hash.hexdigest() if self._digest_plaintext else "",
            compressed_bytes=counts["compressed"],
            ciphertext_bytes=counts["cipher"],
            ciphertext_sha256=digest,
            chunks=counts["chunks"],
        )


class _IterReader:
    """Minimal ``read(n)`` file object over authenticated segments, for zstd's reader API."""

    def __init__(self, segments: Iterator[bytes]) -> None:
        self._segments = segments
        self._current = memoryview(b"")
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._current):
            segment = next(self._segments, None)
            if segment is None:
                return b""
            self._current = memoryview(segment)
            self._pos = 0
        if size is None or size < 0:
            size = len(self._current) - self._pos
        out = self._current[self._pos : self._pos + size].tobytes()
        self._pos += len(out)
        return out


def decode_object(
    ciphertext: Iterable[bytes],
    data_key: bytes,
    *,
    backup_id: str,
    object_name: str,
    expected_sha256: str | None = None,
) -> ObjectDecoder:
    """Convenience spelling of ``ObjectDecoder(...)``."""
    return ObjectDecoder(
        ciphertext,
        data_key,
        backup_id=backup_id,
        object_name=object_name,
        expected_sha256=expected_sha256,
    )
