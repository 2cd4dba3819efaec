"""Keys and the encrypted object format, tested by trying to break every guarantee."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import stat
import struct
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardening_pipeline.backup.crypto import (
    BackupIntegrityError,
    Keyring,
    UnknownKeyError,
    data_key_id,
    generate_data_key,
    generate_master_key_b64,
    keyring_from_settings,
    load_or_create_local_key,
    master_key_id,
    parse_master_key,
)
from hardening_pipeline.backup.object_format import (
    DECODE_WRITE_SIZE,
    SEGMENT_SIZE,
    TAG_SIZE,
    ObjectDecoder,
    ObjectEncoder,
)
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.settings import Settings

BACKUP = "20260115T020000Z-0a1b2c3d"
NAME = "tenant-42.hpb"
SMALL = 64  # small segments give many chunks from little data


def master() -> bytes:
    return os.urandom(32)


def encode(
    data: bytes,
    key: bytes,
    *,
    backup_id: str = BACKUP,
    name: str = NAME,
    segment_size: int = SMALL,
) -> tuple[bytes, ObjectEncoder]:
    enc = ObjectEncoder(
        [data], key, backup_id=backup_id, object_name=name, segment_size=segment_size
    )
    return b"".join(enc), enc


def decode(
    chunks: Iterable[bytes],
    key: bytes,
    *,
    backup_id: str = BACKUP,
    name: str = NAME,
    expected_sha256: str | None = None,
) -> bytes:
    dec = ObjectDecoder(
        chunks, key, backup_id=backup_id, object_name=name, expected_sha256=expected_sha256
    )
    return b"".join(dec)


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Header and chunks of an object, per docs/backup-format.md section 3."""
    (seg,) = struct.unpack(">I", blob[10:14])
    l1 = blob[29]
    l2 = blob[30 + l1]
    header_len = 31 + l1 + l2
    body = blob[header_len:]
    size = seg + TAG_SIZE
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return blob[:header_len], chunks


AUTH_FAILED = r"chunk \d+ failed authentication"


def assert_rejected(blob: bytes, key: bytes, original: bytes, match: str | None = None) -> None:
    """Decoding must raise BackupIntegrityError, having yielded only a prefix of the original.

    ``match`` pins which layer caught it: the zstd frame check would also catch many chunk-level
    attacks, and must not be what hides a broken nonce or final flag.
    """
    yielded = bytearray()
    dec = ObjectDecoder([blob], key, backup_id=BACKUP, object_name=NAME)
    with pytest.raises(BackupIntegrityError, match=match):
        for piece in dec:
            yielded += piece
    assert original.startswith(bytes(yielded))
    assert not dec.finished


@pytest.fixture
def key() -> bytes:
    return generate_data_key()


@pytest.fixture
def sample() -> bytes:
    # Incompressible, so the payload spans many 64-byte segments.
    return random.Random(7).randbytes(700)


# --- master keys ----------------------------------------------------------------------------


def test_parse_master_key_accepts_keygen_output() -> None:
    value = generate_master_key_b64()
    assert parse_master_key(value, "BACKUP_ENCRYPTION_KEY") == base64.b64decode(value)
    assert generate_master_key_b64() != value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("not base64!!", "is not valid base64"),
        (base64.b64encode(b"x" * 16).decode(), "decodes to 16 bytes"),
        (base64.b64encode(b"x" * 33).decode(), "decodes to 33 bytes"),
    ],
)
def test_parse_master_key_rejects_with_one_clear_sentence(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_master_key(value, "BACKUP_ENCRYPTION_KEY")
    message = str(info.value)
    assert fragment in message
    assert message.startswith("BACKUP_ENCRYPTION_KEY ")
    assert "hardening keygen" in message
    assert message.count(". ") == 0 and message.endswith(".")
    if value.strip():
        assert value not in message  # the secret is never echoed


def test_key_id_is_stable_public_and_reveals_nothing_obvious() -> None:
    raw = master()
    kid = master_key_id(raw)
    assert kid == master_key_id(raw)
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert kid not in raw.hex()
    assert kid != hashlib.sha256(raw).hexdigest()[:16]
    assert master_key_id(master()) != kid


def test_local_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key_b64, created = load_or_create_local_key(state)
    assert created
    path = state / "backup-encryption.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(parse_master_key(key_b64, "x")) == 32
    again, created_again = load_or_create_local_key(state)
    assert (again, created_again) == (key_b64, False)
    assert [p.name for p in state.iterdir()] == ["backup-encryption.key"]


def test_corrupt_local_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "backup-encryption.key").write_text("short\n")
    with pytest.raises(ConfigError, match="backup-encryption.key is not valid base64"):
        load_or_create_local_key(tmp_path)


def test_keyring_from_settings_prefers_the_environment_key(tmp_path: Path) -> None:
    value = generate_master_key_b64()
    ring = keyring_from_settings(
        Settings(database_url="postgresql://db/x", encryption_key=value, state_dir=tmp_path)
    )
    assert ring.current_key_id == master_key_id(base64.b64decode(value))
    assert ring.local_key_path is None
    assert not (tmp_path / "backup-encryption.key").exists()


def test_keyring_from_settings_generates_a_local_key_for_the_embedded_database(
    tmp_path: Path,
) -> None:
    ring = keyring_from_settings(Settings(state_dir=tmp_path))
    assert ring.local_key_created and ring.local_key_path == tmp_path / "backup-encryption.key"
    again = keyring_from_settings(Settings(state_dir=tmp_path))
    assert not again.local_key_created and again.current_key_id == ring.current_key_id


def test_keyring_from_settings_refuses_a_real_database_without_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        keyring_from_settings(Settings(database_url="postgresql://db/x", state_dir=tmp_path))
    assert str(info.value).startswith("BACKUP_ENCRYPTION_KEY is not set; run `hardening keygen`")
    assert not tmp_path.joinpath("backup-encryption.key").exists()


def test_bad_previous_key_names_its_entry(tmp_path: Path) -> None:
    settings = Settings(
        database_url="postgresql://db/x",
        encryption_key=generate_master_key_b64(),
        previous_encryption_keys=(generate_master_key_b64(), "AAAA"),
    )
    with pytest.raises(ConfigError, match="BACKUP_ENCRYPTION_KEYS_PREVIOUS entry 2 decodes to 3"):
        keyring_from_settings(settings)


# --- data key wrapping and rotation ---------------------------------------------------------


def test_wrap_unwrap_and_rotation() -> None:
    old, new = master(), master()
    data_key = generate_data_key()
    wrapped = Keyring(old).wrap_data_key(data_key, BACKUP)
    assert wrapped.key_id == master_key_id(old) and len(wrapped.ciphertext) == 60

    rotated = Keyring(new, [old])
    assert rotated.unwrap_data_key(wrapped, BACKUP) == data_key  # previous key decrypts
    rewrapped = rotated.rewrap_data_key(wrapped, BACKUP)
    assert rewrapped.key_id == master_key_id(new)
    assert Keyring(new).unwrap_data_key(rewrapped, BACKUP) == data_key

    with pytest.raises(UnknownKeyError) as info:
        Keyring(new).unwrap_data_key(wrapped, BACKUP)
    message = str(info.value)
    assert master_key_id(old) in message and "BACKUP_ENCRYPTION_KEYS_PREVIOUS" in message
    assert isinstance(info.value, ConfigError)


def test_wrapped_key_is_bound_to_its_backup_and_tamper_evident() -> None:
    ring = Keyring(master())
    wrapped = ring.wrap_data_key(generate_data_key(), BACKUP)
    with pytest.raises(BackupIntegrityError):
        ring.unwrap_data_key(wrapped, "20260116T020000Z-ffffffff")
    for i in range(len(wrapped.ciphertext)):
        bad = bytearray(wrapped.ciphertext)
        bad[i] ^= 0x01
        with pytest.raises(BackupIntegrityError):
            ring.unwrap_data_key(type(wrapped)(wrapped.key_id, bytes(bad)), BACKUP)


def test_keyring_repr_hides_keys() -> None:
    raw = master()
    ring = Keyring(raw)
    assert raw.hex() not in repr(ring) and raw.hex() not in repr(ring.current)


# --- object round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 700, 5000])
def test_round_trip_with_tiny_segments(key: bytes, size: int) -> None:
    data = random.Random(size).randbytes(size)
    blob, enc = encode(data, key)
    dec = ObjectDecoder([blob], key, backup_id=BACKUP, object_name=NAME)
    assert b"".join(dec) == data
    assert dec.stats == enc.stats
    assert enc.plaintext_bytes == size
    assert enc.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert enc.ciphertext_sha256 == hashlib.sha256(blob).hexdigest()
    assert enc.ciphertext_bytes == len(blob)
    header, chunks = split(blob)
    assert len(chunks) == enc.stats.chunks == max(1, -(-enc.compressed_bytes // SMALL))
    assert enc.ciphertext_bytes == len(header) + enc.compressed_bytes + TAG_SIZE * len(chunks)


def test_empty_input_is_one_final_chunk(key: bytes) -> None:
    blob, enc = encode(b"", key, segment_size=SEGMENT_SIZE)
    assert enc.stats.chunks == 1 and decode([blob], key) == b""


def test_payload_of_exactly_one_and_two_segments(key: bytes) -> None:
    rng = random.Random(1)
    while True:  # find noise whose zstd payload has an even length, to split it in two exactly
        data = rng.randbytes(rng.randrange(2000, 4000))
        payload = encode(data, key, segment_size=SEGMENT_SIZE)[1].compressed_bytes
        if payload % 2 == 0:
            break
    # Exactly one full segment: the only chunk is full-size and final.
    blob, enc = encode(data, key, segment_size=payload)
    assert enc.stats.chunks == 1 and len(split(blob)[1][0]) == payload + TAG_SIZE
    assert decode([blob], key) == data
    # Exactly two full segments: no empty third chunk is written or expected.
    blob, enc = encode(data, key, segment_size=payload // 2)
    assert enc.stats.chunks == 2 and len(blob) == len(split(blob)[0]) + payload + 2 * TAG_SIZE
    assert decode([blob], key) == data
    assert_rejected(blob[: -(payload // 2 + TAG_SIZE)], key, data, match=AUTH_FAILED)


def test_plaintext_of_exactly_one_default_segment(key: bytes) -> None:
    data = random.Random(2).randbytes(SEGMENT_SIZE)
    enc = ObjectEncoder([data], key, backup_id=BACKUP, object_name=NAME)
    blob = b"".join(enc)
    assert enc.stats.chunks == 2  # zstd framing pushes 1 MiB of noise just past one segment
    assert decode([blob], key, expected_sha256=enc.ciphertext_sha256) == data


def test_decoder_accepts_any_read_boundaries(key: bytes, sample: bytes) -> None:
    blob, _ = encode(sample, key)
    assert decode((blob[i : i + 1] for i in range(len(blob))), key) == sample
    assert decode([blob[:5], b"", blob[5:300], blob[300:]], key) == sample
    big = random.Random(3).randbytes(3 * SEGMENT_SIZE + 5)
    enc = ObjectEncoder([big], key, backup_id=BACKUP, object_name=NAME)
    blob = b"".join(enc)
    assert decode([blob[i : i + 7_000_000] for i in range(0, len(blob), 7_000_000)], key) == big
    odd = [blob[i : i + 333_333] for i in range(0, len(blob), 333_333)]
    assert decode(odd, key, expected_sha256=enc.ciphertext_sha256) == big


def test_stats_are_unavailable_until_the_stream_is_finished(key: bytes) -> None:
    enc = ObjectEncoder([b"abc"], key, backup_id=BACKUP, object_name=NAME)
    with pytest.raises(RuntimeError):
        _ = enc.ciphertext_sha256
    iterator = iter(enc)
    next(iterator)
    with pytest.raises(RuntimeError):
        _ = enc.stats
    list(iterator)
    assert enc.plaintext_bytes == 3


def test_each_object_gets_a_fresh_nonce_prefix(key: bytes) -> None:
    first, _ = encode(b"same", key)
    second, _ = encode(b"same", key)
    assert first[22:29] != second[22:29] and first != second


# --- attacks on objects ---------------------------------------------------------------------


def test_flipping_any_byte_is_detected(key: bytes, sample: bytes) -> None:
    blob, _ = encode(sample, key)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x80
        assert_rejected(bytes(bad), key, sample)


def test_truncation_anywhere_is_detected(key: bytes, sample: bytes) -> None:
    blob, _ = encode(sample, key)
    header, chunks = split(blob)
    boundaries = {len(header) + i * (SMALL + TAG_SIZE) for i in range(len(chunks))}
    assert len(boundaries) > 5
    for cut in range(len(blob)):
        # At a chunk boundary the last remaining chunk is tried as final: its flag must fail it.
        at_boundary = cut in boundaries and cut > len(header)
        assert_rejected(blob[:cut], key, sample, match=AUTH_FAILED if at_boundary else None)


def test_chunk_reordering_duplication_and_dropping_are_detected(key: bytes, sample: bytes) -> None:
    blob, _ = encode(sample, key)
    header, chunks = split(blob)
    n = len(chunks)
    variants = [
        chunks[1:2] + chunks[0:1] + chunks[2:],  # swap first two
        chunks[:-2] + chunks[-1:] + chunks[-2:-1],  # swap last two
        chunks[:1] + chunks,  # duplicate the first
        chunks[:-1] + chunks[-2:-1] + chunks[-1:],  # duplicate the one before final
        chunks + chunks[-1:],  # duplicate the final chunk
        chunks[:-1],  # drop the final chunk
        list(reversed(chunks)),
    ]
    variants += [chunks[:i] + chunks[i + 1 :] for i in range(n)]  # drop each one
    for variant in variants:
        assert_rejected(header + b"".join(variant), key, sample, match=AUTH_FAILED)


@pytest.mark.parametrize("garbage", [b"\x00", b"x" * 15, b"x" * 16, b"x" * 200])
def test_trailing_bytes_are_detected(key: bytes, sample: bytes, garbage: bytes) -> None:
    blob, _ = encode(sample, key)
    assert_rejected(blob + garbage, key, sample, match=AUTH_FAILED)
    _, chunks = split(blob)
    assert_rejected(blob + chunks[0], key, sample, match=AUTH_FAILED)


def test_chunk_spliced_from_another_object_of_the_same_backup_is_detected(key: bytes) -> None:
    a = random.Random(10).randbytes(300)
    b = random.Random(11).randbytes(300)
    blob_a, _ = encode(a, key)
    blob_b, _ = encode(b, key, name="tenant-43.hpb")
    header_a, chunks_a = split(blob_a)
    _, chunks_b = split(blob_b)
    for i in range(min(len(chunks_a), len(chunks_b))):
        spliced = chunks_a[:i] + [chunks_b[i]] + chunks_a[i + 1 :]
        assert_rejected(header_a + b"".join(spliced), key, a, match=AUTH_FAILED)
    # Header relabelled to the expected name: the AAD no longer matches, every tag fails.
    relabelled = blob_b.replace(b"tenant-43.hpb", NAME.encode(), 1)
    assert_rejected(relabelled, key, a)


def test_object_swapped_between_objects_or_backups_is_rejected(key: bytes) -> None:
    blob, _ = encode(b"rows", key)
    with pytest.raises(BackupIntegrityError, match="objects were swapped"):
        decode([blob], key, name="tenant-43.hpb")
    with pytest.raises(BackupIntegrityError, match="belongs to backup"):
        decode([blob], key, backup_id="20260116T020000Z-00000000")
    # Another backup has another data key.
    other_key = generate_data_key()
    other, _ = encode(b"rows", other_key)
    with pytest.raises(BackupIntegrityError, match="different data key"):
        decode([other], key)
    # Forging the key id in the header does not help: the header is the AAD.
    forged = other[:14] + data_key_id(key) + other[22:]
    assert_rejected(forged, key, b"rows")


def test_wrong_key_and_wrong_checksum_are_rejected(key: bytes, sample: bytes) -> None:
    blob, enc = encode(sample, key)
    with pytest.raises(BackupIntegrityError):
        decode([blob], generate_data_key())
    assert decode([blob], key, expected_sha256=enc.ciphertext_sha256) == sample
    with pytest.raises(BackupIntegrityError, match="manifest records"):
        decode([blob], key, expected_sha256="0" * 64)


def test_header_fields_are_validated(key: bytes) -> None:
    blob, _ = encode(b"rows", key)
    cases = {
        "magic": b"XPBACKUP" + blob[8:],
        "version 2": blob[:8] + b"\x02" + blob[9:],
        "compression": blob[:9] + b"\x07" + blob[10:],
        "segment size": blob[:10] + struct.pack(">I", 1 << 30) + blob[14:],
        "tiny segment": blob[:10] + struct.pack(">I", 1) + blob[14:],
        "empty": b"",
        "header only": split(blob)[0],
    }
    for label, bad in cases.items():
        with pytest.raises(BackupIntegrityError):
            decode([bad], key)
        assert label


# --- memory and decompression bombs ---------------------------------------------------------


def _generated(total: int, piece: int = 1 << 16) -> Iterator[bytes]:
    rng = random.Random(99)
    for _ in range(total // piece):
        yield rng.randbytes(piece)


def _pipeline_peak(key: bytes, total: int) -> int:
    """Peak traced memory of encoding ``total`` generated bytes and decoding them on the fly."""
    tracemalloc.start()
    try:
        enc = ObjectEncoder(_generated(total), key, backup_id=BACKUP, object_name=NAME)
        dec = ObjectDecoder(enc, key, backup_id=BACKUP, object_name=NAME)
        seen = 0
        digest = hashlib.sha256()
        for piece in dec:
            seen += len(piece)
            digest.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == total and digest.hexdigest() == enc.plaintext_sha256
    assert dec.stats.ciphertext_sha256 == enc.ciphertext_sha256
    return peak


def test_memory_stays_flat_for_200_mb_through_encoder_and_decoder(key: bytes) -> None:
    piece = 1 << 16
    small = _pipeline_peak(key, 20_000_000 // piece * piece)
    large = _pipeline_peak(key, 200_000_000 // piece * piece)
    # Ten times the data, the same memory: a few segments, independent of input size.
    assert large < small + SEGMENT_SIZE, f"{small / 2**20:.1f} -> {large / 2**20:.1f} MiB"
    assert large < 12 * SEGMENT_SIZE, f"peak {large / 2**20:.1f} MiB"


def test_highly_compressible_input_is_decoded_in_bounded_pieces(key: bytes) -> None:
    zeros = bytes(1 << 20)
    enc = ObjectEncoder((zeros for _ in range(256)), key, backup_id=BACKUP, object_name=NAME)
    blob = b"".join(enc)
    assert len(blob) < 64 * 1024  # 256 MiB in one segment: a would-be decompression bomb
    tracemalloc.start()
    try:
        sizes = [len(p) for p in ObjectDecoder([blob], key, backup_id=BACKUP, object_name=NAME)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(sizes) == 256 << 20 and max(sizes) <= DECODE_WRITE_SIZE
    assert peak < 4 * DECODE_WRITE_SIZE


def test_one_huge_caller_chunk_is_sliced(key: bytes) -> None:
    data = random.Random(5).randbytes(5 * SEGMENT_SIZE)
    enc = ObjectEncoder([data], key, backup_id=BACKUP, object_name=NAME)
    sizes = [len(c) for c in enc]
    assert max(sizes) <= SEGMENT_SIZE + TAG_SIZE


# --- fuzzing --------------------------------------------------------------------------------

FUZZ_KEY = bytes(range(32))
FUZZ_PLAIN = random.Random(4).randbytes(400)
FUZZ_BLOB = b"".join(
    ObjectEncoder([FUZZ_PLAIN], FUZZ_KEY, backup_id=BACKUP, object_name=NAME, segment_size=SMALL)
)
FUZZ_HEADER = split(FUZZ_BLOB)[0]


def _decode_fuzzed(blob: bytes, cuts: list[int]) -> tuple[bytes, BaseException | None]:
    points = sorted({c % (len(blob) + 1) for c in cuts} | {0, len(blob)})
    pieces = [blob[a:b] for a, b in zip(points, points[1:], strict=False)]
    out = bytearray()
    try:
        for piece in ObjectDecoder(pieces, FUZZ_KEY, backup_id=BACKUP, object_name=NAME):
            out += piece
    except Exception as exc:  # every exception type is caught on purpose, to be inspected
        return bytes(out), exc
    return bytes(out), None


FUZZ_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ_SETTINGS
@given(st.binary(max_size=600), st.booleans(), st.lists(st.integers(0, 10_000), max_size=6))
def test_fuzz_random_input_only_raises_integrity_errors(
    data: bytes, with_header: bool, cuts: list[int]
) -> None:
    blob = (FUZZ_HEADER + data) if with_header else data
    out, error = _decode_fuzzed(blob, cuts)
    assert isinstance(error, BackupIntegrityError), repr(error)
    assert out == b""


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(FUZZ_BLOB) - 1), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(FUZZ_BLOB)), st.integers(1, 100)),
    st.tuples(
        st.just("insert"), st.integers(0, len(FUZZ_BLOB)), st.binary(min_size=1, max_size=80)
    ),
    st.tuples(st.just("truncate"), st.integers(0, len(FUZZ_BLOB) - 1), st.just(0)),
    st.tuples(st.just("copy"), st.integers(0, len(FUZZ_BLOB)), st.integers(0, len(FUZZ_BLOB))),
)


@FUZZ_SETTINGS
@given(st.lists(mutation, min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=6))
def test_fuzz_mutated_objects_never_yield_unauthenticated_plaintext(
    mutations: list[tuple], cuts: list[int]
) -> None:
    blob = bytearray(FUZZ_BLOB)
    for op, at, arg in mutations:
        at = min(at, len(blob))
        if op == "flip" and at < len(blob):
            blob[at] ^= arg
        elif op == "delete":
            del blob[at : at + arg]
        elif op == "insert":
            blob[at:at] = arg
        elif op == "truncate":
            del blob[at:]
        elif op == "copy":
            blob[at:at] = blob[arg : arg + SMALL + TAG_SIZE]
    out, error = _decode_fuzzed(bytes(blob), cuts)
    if bytes(blob) == FUZZ_BLOB:
        assert error is None and out == FUZZ_PLAIN
    else:
        assert isinstance(error, BackupIntegrityError), repr(error)
        assert FUZZ_PLAIN.startswith(out)
