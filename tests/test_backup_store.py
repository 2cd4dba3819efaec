"""The backup store contract, tried on a folder and a B2-strict S3 server, and broken on purpose."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import boto3
import pytest
from botocore.config import Config

from hardening_pipeline.backup.store import (
    MIN_PART_SIZE,
    BackupStore,
    FileStore,
    InvalidKeyError,
    ObjectNotFoundError,
    S3Store,
    StoreAccessError,
    StoreError,
    check_key,
    make_s3_client,
    open_store,
)
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.settings import load_settings, parse_store_url
from tests.support.s3_server import B2LikeS3Server, FaultInjector, RecordedRequest

PART = MIN_PART_SIZE


def make_s3(
    server: B2LikeS3Server,
    bucket: str,
    prefix: str = "backups",
    *,
    endpoint_url: str | None = None,
    max_attempts: int = 1,
    read_timeout: float = 10.0,
    **kwargs: Any,
) -> S3Store:
    # botocore's retries (the only retry layer) are off, one attempt, unless a test wants them,
    # so an injected fault fails the operation at once.
    client = make_s3_client(
        endpoint_url or server.endpoint_url,
        server.region,
        max_attempts=max_attempts,
        connect_timeout=2,
        read_timeout=read_timeout,
    )
    kwargs.setdefault("part_size", PART)
    return S3Store(bucket, prefix, client, **kwargs)


def versions(server: B2LikeS3Server, bucket: str) -> list[tuple[str, str]]:
    """Every version and delete marker in the bucket, as (kind, key)."""
    page = server.client().list_object_versions(Bucket=bucket)
    found = [("version", v["Key"]) for v in page.get("Versions", [])]
    found += [("marker", m["Key"]) for m in page.get("DeleteMarkers", [])]
    return sorted(found)


def part_number(request: RecordedRequest) -> int:
    return int(parse_qs(request.query)["partNumber"][0])


def part_attempts(server: B2LikeS3Server, number: int) -> int:
    """How many times part ``number`` was sent, as the server saw it."""
    return sum(
        1 for r in server.requests if r.operation == "UploadPart" and part_number(r) == number
    )


def read_all(store: BackupStore, key: str) -> bytes:
    return b"".join(store.get(key))


def pattern(size: int) -> bytes:
    # Not a run of one byte: a part written twice or out of order changes the content.
    block = bytes(range(256)) * 4096
    return (block * (size // len(block) + 1))[:size]


def chunked(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class Boom(Exception):
    pass


def failing_after(data: bytes, limit: int) -> Iterator[bytes]:
    """Yields ``data`` then raises, like an encryptor failing part-way through a table."""
    sent = 0
    for chunk in chunked(data):
        yield chunk
        sent += len(chunk)
        if sent >= limit:
            raise Boom("the producer failed")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BackupStore:
    if request.param == "file":
        return FileStore(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return make_s3(server, bucket)


# --- the shared contract ------------------------------------------------------------------------


def test_put_get_round_trip_and_byte_count(store: BackupStore) -> None:
    data = pattern(300_000)
    assert store.put("2026/11/26/b1/tenant-1.bin", chunked(data, 70_000)) == len(data)
    assert read_all(store, "2026/11/26/b1/tenant-1.bin") == data
    assert store.put("2026/11/26/b1/empty.bin", []) == 0
    assert read_all(store, "2026/11/26/b1/empty.bin") == b""


def test_list_is_relative_sorted_and_filtered_by_prefix(store: BackupStore) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)
    for key in ["2026/11/26/b2/m.json", "2026/11/25/b1/m.json", "2026/12/01/b3/m.json", "x.bin"]:
        store.put(key, [key.encode()])
    listed = store.list()
    assert [o.key for o in listed] == [
        "2026/11/25/b1/m.json",
        "2026/11/26/b2/m.json",
        "2026/12/01/b3/m.json",
        "x.bin",
    ]
    assert all(o.size == len(o.key) for o in listed)
    assert all(o.last_modified.tzinfo is not None and o.last_modified > before for o in listed)
    assert [o.key for o in store.list("2026/11/")] == [
        "2026/11/25/b1/m.json",
        "2026/11/26/b2/m.json",
    ]
    # A prefix may end mid-segment, like S3's.
    assert [o.key for o in store.list("2026/11/2")] == [
        "2026/11/25/b1/m.json",
        "2026/11/26/b2/m.json",
    ]
    assert store.list("2027/") == []


def test_put_overwrites(store: BackupStore) -> None:
    store.put("k.bin", [b"old"])
    store.put("k.bin", [b"new!"])
    assert read_all(store, "k.bin") == b"new!"
    assert [(o.key, o.size) for o in store.list()] == [("k.bin", 4)]


@pytest.mark.parametrize("size", [1000, 2 * PART + 123], ids=["small", "multipart"])
def test_failed_put_leaves_nothing_under_a_new_key(store: BackupStore, size: int) -> None:
    with pytest.raises(Boom):
        store.put("b1/tenant.bin", failing_after(pattern(size), size))
    assert not store.exists("b1/tenant.bin")
    assert store.list() == []


def test_failed_put_keeps_the_previous_object(store: BackupStore) -> None:
    store.put("b1/tenant.bin", [b"good"])
    with pytest.raises(Boom):
        store.put("b1/tenant.bin", failing_after(pattern(2 * PART + 1), 2 * PART + 1))
    assert read_all(store, "b1/tenant.bin") == b"good"


def test_get_missing_raises_at_call_time(store: BackupStore) -> None:
    # Raised by get() itself, not on first iteration, so callers can check before streaming.
    with pytest.raises(ObjectNotFoundError, match="nope.bin does not exist"):
        store.get("nope.bin")


def test_delete_and_exists(store: BackupStore) -> None:
    store.put("a/b", [b"1"])
    store.put("a/bc", [b"2"])
    assert store.exists("a/b")
    store.delete("a/b")
    assert not store.exists("a/b")
    # Deleting one key must not touch a key it is a string prefix of.
    assert [o.key for o in store.list()] == ["a/bc"]
    store.delete("a/b")  # already gone: not an error
    assert not store.exists("never/was")


def test_delete_prefix_removes_one_backup_folder(store: BackupStore) -> None:
    for key in ["2026/11/25/b1/t1", "2026/11/25/b1/manifest.json", "2026/11/25/b10/t1"]:
        store.put(key, [b"x"])
    assert store.delete_prefix("2026/11/25/b1/") == 2
    assert [o.key for o in store.list()] == ["2026/11/25/b10/t1"]
    with pytest.raises(InvalidKeyError, match="empty prefix"):
        store.delete_prefix("")


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../escape", "a/../../b", "a//b", "./a", "a/.", "a\\b", ".tmp-x"]
)
def test_unsafe_keys_are_refused(store: BackupStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put(key, [b"x"])
    with pytest.raises(InvalidKeyError):
        store.get(key)
    with pytest.raises(InvalidKeyError):
        store.delete(key)


def test_invalid_key_error_is_both_store_and_value_error() -> None:
    with pytest.raises(StoreError):
        FileStore(Path("/nonexistent")).exists("../x")
    with pytest.raises(ValueError):
        FileStore(Path("/nonexistent")).exists("../x")


def test_keys_with_spaces_and_unicode_survive(store: BackupStore) -> None:
    key = "tenant 1/Zürich & co+%20.bin"
    store.put(key, [b"data"])
    assert [o.key for o in store.list()] == [key]
    assert read_all(store, key) == b"data"


# --- FileStore ---------------------------------------------------------------------------------


def test_file_store_leaves_no_temp_file_on_failure(tmp_path: Path) -> None:
    fs = FileStore(tmp_path)
    with pytest.raises(Boom):
        fs.put("b1/t.bin", failing_after(b"x" * 10, 5))
    assert [p.name for p in (tmp_path / "b1").iterdir()] == []


def test_file_store_hides_temp_files_and_sweeps_stale_ones(tmp_path: Path) -> None:
    fs = FileStore(tmp_path)
    fs.put("b1/t.bin", [b"x"])
    stale = tmp_path / "b1" / ".tmp-crashed"
    stale.write_bytes(b"half a backup")
    old = time.time() - 3 * 86400
    os.utime(stale, (old, old))
    fresh = tmp_path / "b1" / ".tmp-writing-now"
    fresh.write_bytes(b"in progress")
    assert [o.key for o in fs.list()] == ["b1/t.bin"]
    assert fs.abort_stale_uploads(timedelta(days=1)) == 1
    assert not stale.exists() and fresh.exists()


def test_file_store_refuses_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    fs = FileStore(root)
    with pytest.raises(InvalidKeyError, match="outside"):
        fs.put("link/x.bin", [b"x"])
    assert list(outside.iterdir()) == []


def test_file_store_missing_root_lists_empty_and_prunes_empty_folders(tmp_path: Path) -> None:
    fs = FileStore(tmp_path / "not-yet")
    assert fs.list() == []
    fs.put("2026/11/26/b1/t.bin", [b"x"])
    fs.delete("2026/11/26/b1/t.bin")
    assert list((tmp_path / "not-yet").iterdir()) == []


def test_file_store_write_error_is_a_store_error(tmp_path: Path) -> None:
    fs = FileStore(tmp_path)
    (tmp_path / "a").write_bytes(b"a file where a folder should be")
    with pytest.raises(StoreError, match="could not write a/b.bin"):
        fs.put("a/b.bin", [b"x"])


# --- S3: B2 dialect -----------------------------------------------------------------------------


def test_guard_rejects_a_default_boto3_client(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    """If this passes, the guard works: a client without our config cannot talk to 'B2'."""
    default = boto3.session.Session().client(
        "s3", endpoint_url=s3_server.endpoint_url, region_name=s3_server.region
    )
    with pytest.raises(Exception) as put_error:
        default.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    assert "Unsupported header 'x-amz-checksum-crc32'" in str(put_error.value)
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    with pytest.raises(Exception, match="Unsupported header 'x-amz-checksum-mode'"):
        default.get_object(Bucket=s3_bucket, Key="k")["Body"].read()
    assert {r.operation for r in s3_server.rejected} == {"PutObject", "GetObject"}


def test_guard_rejects_delete_objects_even_when_required(
    s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    # Documents why S3Store deletes one version at a time.
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    with pytest.raises(Exception, match="Unsupported header"):
        client.delete_objects(Bucket=s3_bucket, Delete={"Objects": [{"Key": "k"}]})


def test_unconfigured_client_error_names_the_fix(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    default = boto3.session.Session().client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    store = S3Store(s3_bucket, "p", default, part_size=PART)
    with pytest.raises(StoreError, match="when_required"):
        store.put("k", [b"x"])


def test_every_store_operation_passes_the_b2_guard(
    s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    store = make_s3(s3_server, s3_bucket)
    store.put("small", [b"x"])
    store.put("big", chunked(pattern(PART + 10)))
    store.list()
    read_all(store, "big")
    store.exists("big")
    store.delete("small")
    store.delete_prefix("b")
    store.abort_stale_uploads(timedelta(0))
    assert s3_server.rejected == []
    assert "DeleteObjects" not in s3_server.operations()


# --- S3: uploads --------------------------------------------------------------------------------


def test_small_object_is_one_put_object(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    store = make_s3(s3_server, s3_bucket)
    # Exactly one part's worth still fits one request.
    store.put("k", chunked(pattern(PART), 1 << 20))
    assert s3_server.operations() == ["PutObject"]
    assert versions(s3_server, s3_bucket) == [("version", "backups/k")]


def test_large_stream_is_multipart_with_exact_sized_parts(
    s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    store = make_s3(s3_server, s3_bucket)
    data = pattern(2 * PART + 12_345)
    # Odd chunk sizes so parts are cut across chunk boundaries.
    assert store.put("big.bin", chunked(data, 777_777)) == len(data)
    ops = s3_server.operations()
    assert ops == [
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPart",
        "UploadPart",
        "CompleteMultipartUpload",
    ]
    parts = [r for r in s3_server.requests if r.operation == "UploadPart"]
    # B2 wants a known Content-Length on every part, never chunked transfer encoding. Parts
    # travel in parallel, so they are matched up by number.
    sizes = {part_number(r): int(r.headers["content-length"]) for r in parts}
    assert sizes == {1: PART, 2: PART, 3: 12_345}
    assert all("transfer-encoding" not in r.headers for r in parts)
    assert read_all(store, "big.bin") == data
    assert store.list_incomplete_uploads() == []


def test_a_failing_part_gets_exactly_the_configured_attempts_then_the_upload_aborts(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector
) -> None:
    # The store as a user opens it, with its default retry configuration. Part 2 fails forever:
    # botocore tries it max_attempts (5) times in all and nothing retries on top of that (a
    # second loop used to make it 4 x 5 = 20 tries).
    store = s3_server.store(s3_bucket, part_size=PART, upload_concurrency=1)
    s3_faults.fail_next("UploadPart", 100, status=503, after=1)
    with pytest.raises(StoreError, match=r"upload part 2 of big.bin .*ServiceUnavailable"):
        store.put("big.bin", chunked(pattern(3 * PART)))
    assert part_attempts(s3_server, 2) == 5
    assert s3_faults.injected == {"UploadPart": 5}
    # Part 3 was never sent: the upload stopped at the first part that failed for good.
    assert part_attempts(s3_server, 3) == 0
    assert "AbortMultipartUpload" in s3_server.operations()
    assert store.list_incomplete_uploads() == []
    assert versions(s3_server, s3_bucket) == []


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_max_attempts_is_the_only_retry_setting(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector, max_attempts: int
) -> None:
    store = make_s3(s3_server, s3_bucket, max_attempts=max_attempts, upload_concurrency=1)
    s3_faults.fail_next("UploadPart", 100, status=500, after=1)
    with pytest.raises(StoreError, match="upload part 2 of big.bin .*InternalError"):
        store.put("big.bin", chunked(pattern(2 * PART + 1)))
    assert part_attempts(s3_server, 2) == max_attempts
    assert store.list_incomplete_uploads() == []


def test_a_flaky_part_is_retried_by_botocore_and_the_object_is_whole(
    s3_server: B2LikeS3Server,
    s3_bucket: str,
    s3_faults: FaultInjector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_s3(s3_server, s3_bucket, max_attempts=4, upload_concurrency=1)
    s3_faults.fail_next("UploadPart", 3, status=503, after=1)
    data = pattern(2 * PART + 7)
    with caplog.at_level("WARNING", logger="hardening_pipeline.backup.store"):
        assert store.put("big.bin", chunked(data, 999_999)) == len(data)
    assert s3_faults.injected == {"UploadPart": 3}
    assert s3_server.operations().count("UploadPart") == 3 + 3
    # botocore retries quietly; each retry still leaves a line in the log.
    assert [r.getMessage() for r in caplog.records] == [
        f"S3 UploadPart failed; retrying (try {n} of 4)" for n in (2, 3, 4)
    ]
    assert read_all(store, "big.bin") == data
    assert store.list_incomplete_uploads() == []


def test_parts_go_up_in_parallel_and_the_object_is_in_order(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector
) -> None:
    store = make_s3(s3_server, s3_bucket, upload_concurrency=3)
    # Part 1 is held up: sent one at a time, no other part could be in flight meanwhile.
    s3_faults.delay_next("UploadPart", 1.5)
    data = pattern(4 * PART + 3)
    assert store.put("big.bin", chunked(data, 333_333)) == len(data)
    assert s3_server.middleware.max_in_flight["UploadPart"] >= 2
    assert s3_server.operations().count("UploadPart") == 5
    assert read_all(store, "big.bin") == data


def test_one_part_at_a_time_when_asked(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    # The guard for the test above: it can fail.
    store = make_s3(s3_server, s3_bucket, upload_concurrency=1)
    store.put("big.bin", chunked(pattern(3 * PART + 3)))
    assert s3_server.middleware.max_in_flight["UploadPart"] == 1


def test_client_errors_are_not_retried(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector
) -> None:
    store = make_s3(s3_server, s3_bucket, max_attempts=5, upload_concurrency=1)
    s3_faults.fail_next("UploadPart", 100, status=403)
    with pytest.raises(StoreAccessError, match="AccessDenied") as error:
        store.put("big.bin", chunked(pattern(PART + 1)))
    assert isinstance(error.value, ConfigError)
    assert s3_faults.injected == {"UploadPart": 1}
    assert store.list_incomplete_uploads() == []


def test_a_stream_longer_than_the_part_cap_fails_and_leaves_nothing(
    s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    # S3 allows 10,000 parts; the same check with a cap of 2 instead of 50 GB of test data.
    store = make_s3(s3_server, s3_bucket, max_parts=2)
    store.put("fits.bin", chunked(pattern(2 * PART)))
    with pytest.raises(StoreError, match="big.bin .*more than 2 parts; raise the part size"):
        store.put("big.bin", chunked(pattern(2 * PART + 1)))
    assert [o.key for o in store.list()] == ["fits.bin"]
    assert store.list_incomplete_uploads() == []


def test_failed_complete_aborts_the_upload(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector
) -> None:
    store = make_s3(s3_server, s3_bucket)
    s3_faults.fail_next("CompleteMultipartUpload", 1, status=500)
    with pytest.raises(StoreError, match="finish uploading big.bin"):
        store.put("big.bin", chunked(pattern(PART + 1)))
    assert store.list_incomplete_uploads() == []
    assert not store.exists("big.bin")


def test_upload_the_abort_could_not_remove_is_swept_later(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector
) -> None:
    store = make_s3(s3_server, s3_bucket)
    s3_faults.fail_next("UploadPart", 1, status=400, code="InvalidPart", after=1)
    s3_faults.fail_next("AbortMultipartUpload", 1, status=500)
    with pytest.raises(StoreError, match="InvalidPart"):
        store.put("big.bin", chunked(pattern(2 * PART + 1)))
    [leftover] = store.list_incomplete_uploads()
    assert leftover.key == "big.bin"
    # Fresh uploads may belong to a writer that is still running: left alone.
    assert store.abort_stale_uploads(timedelta(hours=1)) == 0
    later = datetime.now(UTC) + timedelta(hours=2)
    assert store.abort_stale_uploads(timedelta(hours=1), now=later) == 1
    assert store.list_incomplete_uploads() == []


def test_put_object_is_retried(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector
) -> None:
    store = make_s3(s3_server, s3_bucket, max_attempts=2)
    s3_faults.fail_next("PutObject", 1, status=503)
    store.put("k", [b"x"])
    assert read_all(store, "k") == b"x"


# --- S3: reading, listing, deleting -------------------------------------------------------------


def test_get_streams_in_chunks(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    store = make_s3(s3_server, s3_bucket)
    data = pattern(3 * 1024 * 1024 + 5)
    store.put("k", [data])
    chunks = list(store.get("k"))
    assert len(chunks) >= 3 and max(len(c) for c in chunks) <= 1024 * 1024
    assert b"".join(chunks) == data


def _small_pages(client: Any) -> None:
    # Real pagination against the server without creating thousands of objects.
    def shrink(params: dict[str, Any], **_: Any) -> None:
        params.setdefault("MaxKeys", 2)

    def shrink_uploads(params: dict[str, Any], **_: Any) -> None:
        params.setdefault("MaxUploads", 2)

    client.meta.events.register("provide-client-params.s3.ListObjectsV2", shrink)
    client.meta.events.register("provide-client-params.s3.ListObjectVersions", shrink)
    client.meta.events.register("provide-client-params.s3.ListMultipartUploads", shrink_uploads)


def test_list_follows_every_page(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    store = make_s3(s3_server, s3_bucket)
    _small_pages(store.client)
    keys = [f"b/{i:02d}" for i in range(7)]
    for key in keys:
        store.put(key, [b"x"])
    assert [o.key for o in store.list()] == keys
    assert s3_server.operations().count("ListObjectsV2") == 4


def test_list_failing_on_a_later_page_raises(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector
) -> None:
    store = make_s3(s3_server, s3_bucket)
    _small_pages(store.client)
    for i in range(5):
        store.put(f"b/{i}", [b"x"])
    s3_faults.fail_next("ListObjectsV2", 10, status=500, after=1)
    with pytest.raises(StoreError, match="could not list the store"):
        store.list()


def test_truncated_page_without_token_raises(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    store = make_s3(s3_server, s3_bucket)
    _small_pages(store.client)
    for i in range(3):
        store.put(f"b/{i}", [b"x"])

    def drop_token(parsed: dict[str, Any], **_: Any) -> None:
        parsed.pop("NextContinuationToken", None)

    store.client.meta.events.register("after-call.s3.ListObjectsV2", drop_token)
    with pytest.raises(StoreError, match="truncated page"):
        store.list()


def test_delete_removes_every_version_and_marker(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    store = make_s3(s3_server, s3_bucket)
    store.put("b1/t", [b"v1"])
    store.put("b1/t", [b"v2"])
    store.put("b1/tt", [b"keep"])
    # A plain delete, as a naive client would do on B2: it only hides the object.
    s3_server.client().delete_object(Bucket=s3_bucket, Key="backups/b1/t")
    assert ("marker", "backups/b1/t") in versions(s3_server, s3_bucket)
    s3_server.middleware.clear()
    store.delete("b1/t")
    assert versions(s3_server, s3_bucket) == [("version", "backups/b1/tt")]
    deletes = [r for r in s3_server.requests if r.operation == "DeleteObject"]
    assert deletes and all("versionId=" in r.query for r in deletes)


def test_delete_prefix_pages_through_versions(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    store = make_s3(s3_server, s3_bucket)
    _small_pages(store.client)
    for i in range(3):
        store.put(f"b1/t{i}", [b"a"])
        store.put(f"b1/t{i}", [b"b"])
    store.put("b2/t", [b"keep"])
    assert store.delete_prefix("b1/") == 3
    assert versions(s3_server, s3_bucket) == [("version", "backups/b2/t")]


def test_store_prefix_isolates_stores(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    one = make_s3(s3_server, s3_bucket, "site-a")
    two = make_s3(s3_server, s3_bucket, "site-a-old")
    one.put("k", [b"1"])
    two.put("k", [b"2"])
    assert [o.key for o in one.list()] == ["k"]
    one.delete_prefix("k")
    assert read_all(two, "k") == b"2"


# --- S3: failures in one sentence ---------------------------------------------------------------


def test_unreachable_store(s3_server: B2LikeS3Server, s3_closed_endpoint: str) -> None:
    store = make_s3(s3_server, "bucket", endpoint_url=s3_closed_endpoint, max_attempts=2)
    expected = (
        f"could not reach the backup store at {s3_closed_endpoint}: connection refused; "
        f"check BACKUP_S3_ENDPOINT_URL and the network"
    )
    for attempt in (
        lambda: store.put("k", [b"x"]),
        lambda: store.get("k"),
        store.list,
        lambda: store.delete("k"),
        lambda: store.exists("k"),
    ):
        with pytest.raises(StoreError) as error:
            attempt()
        assert expected in str(error.value)
        assert "\n" not in str(error.value)


def test_slow_store_times_out(
    s3_server: B2LikeS3Server, s3_bucket: str, s3_faults: FaultInjector
) -> None:
    store = make_s3(s3_server, s3_bucket, read_timeout=0.3)
    s3_faults.delay_next("ListObjectsV2", 1.0)
    with pytest.raises(StoreError, match="timed out talking to the backup store"):
        store.list()


def test_missing_bucket_is_a_configuration_error(s3_server: B2LikeS3Server) -> None:
    store = make_s3(s3_server, "no-such-bucket-here")
    for attempt in (store.list, lambda: store.exists("k"), lambda: store.get("k")):
        # Not "missing object" or "empty store": a wrong bucket must not look like no backups.
        with pytest.raises(StoreAccessError, match="NoSuchBucket.*BACKUP_STORE_URL") as error:
            attempt()
        assert isinstance(error.value, ConfigError)


def test_missing_credentials_name_the_variables(
    s3_server: B2LikeS3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = make_s3(s3_server, s3_bucket)
    with pytest.raises(StoreAccessError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        store.list()


def test_describe_names_the_place_but_no_secret(s3_server: B2LikeS3Server, s3_bucket: str):
    store = make_s3(s3_server, s3_bucket, "nightly")
    text = store.describe()
    assert text == f"s3://{s3_bucket}/nightly/ at {s3_server.endpoint_url}"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text + repr(store)


# --- open_store ---------------------------------------------------------------------------------


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store((tmp_path / "my backups").as_uri(), endpoint_url=None, region="us-east-1")
    assert isinstance(store, FileStore)
    assert store.root == (tmp_path / "my backups").resolve()


def test_open_store_s3_url(s3_server: B2LikeS3Server, s3_bucket: str) -> None:
    store = open_store(
        f"s3://{s3_bucket}/nightly/prod/",
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
    )
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (s3_bucket, "nightly/prod/")
    store.put("k", [b"x"])
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="nightly/prod/k")["Body"].read()
    assert s3_server.rejected == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "must start with one of s3://, file://"),
        ("/var/backups", "must start with one of s3://, file://"),
        ("s3:///prefix-only", "must name a bucket"),
        ("file://server/share", "absolute path"),
        ("s3://key:secret@bucket/p", "put credentials in AWS_ACCESS_KEY_ID"),
        ("s3://bucket/a/../b", "unusable prefix"),
    ],
)
def test_open_store_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        open_store(url, endpoint_url=None, region="us-east-1")
    assert "BACKUP_STORE_URL" in str(error.value)
    assert "secret" not in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "gs://bucket/x",
        "/var/backups",
        "s3:///prefix-only",
        "file://server/share",
        "file://relative/dir",
        "s3://key:secret@bucket/p",
        "s3://bucket/p?x=1",
        "s3://bucket/a/../b",
        "s3://[bucket/x",
    ],
)
def test_one_store_url_check_for_settings_and_open_store(url: str) -> None:
    # The variable (load_settings) and a URL handed straight to open_store (a Dagster resource's
    # own store_url) go through the same check, so they refuse with the same sentence.
    with pytest.raises(ConfigError) as from_settings:
        load_settings({"BACKUP_STORE_URL": url})
    with pytest.raises(ConfigError) as from_open:
        open_store(url, endpoint_url=None, region="us-east-1")
    assert str(from_settings.value) == str(from_open.value)


@pytest.mark.parametrize(
    "prefix",
    ["ok", "ok/fine", "a/../b", "a//b", "./a", "a/.", "..", "a\\b", "x\x00y", ".tmp-x", "a/.tmp-y"],
)
def test_the_url_check_and_the_store_agree_on_prefixes(prefix: str) -> None:
    # settings restates the store's key rules for the prefix (it imports nothing from backup/);
    # this keeps the two from drifting apart.
    try:
        check_key(prefix)
        store_refuses = False
    except InvalidKeyError:
        store_refuses = True
    try:
        location = parse_store_url(f"s3://bucket/{quote(prefix)}")
        url_refuses = False
    except ConfigError:
        url_refuses = True
    assert url_refuses == store_refuses
    if not url_refuses:
        assert S3Store(location.bucket, location.prefix, None).prefix == f"{prefix}/"
