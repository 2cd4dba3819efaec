"""A real S3 HTTP API on 127.0.0.1 that is as strict as Backblaze B2 where it has bitten people.

moto's server speaks S3 faithfully enough for our store, but it happily accepts the
``x-amz-checksum-*`` headers that B2 rejects, and its buckets are unversioned. Both differences
would hide real B2 failures, so this wraps moto's WSGI app in a middleware that:

* rejects any request carrying ``x-amz-checksum*``, ``x-amz-sdk-checksum-algorithm`` or
  ``x-amz-trailer`` with the 400 ``InvalidArgument`` B2 returns;
* records every request (operation and headers), so tests can assert what went over the wire;
* injects faults on demand: the next N requests of an operation fail with a given status, or
  are delayed;
* reports the real start time of multipart uploads (moto says 2010 for all of them), since
  stale-upload cleanup decides by it.

Buckets from the ``s3_bucket`` fixture are versioned, like every B2 bucket; ``s3_locked_bucket``
has Object Lock enabled. moto enforces a lock when a version is deleted (also with the
bypass-governance header on a COMPLIANCE lock), but two rules of S3 and B2 it does not, so the
middleware adds them:

* a locked write (``x-amz-object-lock-*`` on PutObject, a part of a locked multipart upload) and
  every PutObjectRetention must carry a Content-MD5 that matches the body (S3 answers
  ``InvalidRequest`` without it; B2 refuses the flexible-checksum alternative);
* a multipart upload started with lock headers gets that lock when it completes (moto drops
  the headers of CreateMultipartUpload, so a big object would be born unlocked);
* PutObjectRetention may not shorten a COMPLIANCE lock, nor a GOVERNANCE lock without
  ``x-amz-bypass-governance-retention`` (moto overwrites any retention with any other).

``s3_clock`` moves the server's clock (moto's ``utcnow``), so locks can run out without a wait.

Fixtures (import them into a conftest or test module):

* ``s3_server`` (session): a running ``B2LikeS3Server``; dummy AWS credentials are set in the
  environment for the session. ``.endpoint_url`` is what a client needs.
* ``s3_bucket`` (function): the name of a fresh, versioned bucket; faults and the request log
  are cleared before and after the test.
* ``s3_faults`` (function): the server's ``FaultInjector``, cleared after the test.
* ``s3_closed_endpoint`` (function): an ``http://127.0.0.1:<port>`` URL nothing listens on, for
  "the network is gone" tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest

REGION = "us-east-1"
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-application-key",
}
# Anything that could change which checksum headers a client sends, or point boto3 at a real
# account, is removed for the session so the B2 guard sees what a default client really does.
_SCRUBBED_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)

_FORBIDDEN_PREFIXES = ("x-amz-checksum", "x-amz-sdk-checksum-algorithm", "x-amz-trailer")


def _error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>"
    ).encode()


def classify(method: str, path: str, query: str) -> str:
    """Name the S3 operation of a path-style request (enough for the operations we use)."""
    params = parse_qs(query, keep_blank_values=True)
    has_key = len(path.lstrip("/").split("/", 1)) == 2 and path.lstrip("/").split("/", 1)[1] != ""
    if "retention" in params and has_key:
        return "PutObjectRetention" if method == "PUT" else "GetObjectRetention"
    if "object-lock" in params and not has_key:
        return "PutObjectLockConfiguration" if method == "PUT" else "GetObjectLockConfiguration"
    if method == "PUT":
        if "partNumber" in params and "uploadId" in params:
            return "UploadPart"
        if "versioning" in params:
            return "PutBucketVersioning"
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
        if "delete" in params:
            return "DeleteObjects"
        return "Post"
    if method == "DELETE":
        if "uploadId" in params:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_key else "DeleteBucket"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "GET":
        if has_key:
            return "ListParts" if "uploadId" in params else "GetObject"
        if "versions" in params:
            return "ListObjectVersions"
        if "uploads" in params:
            return "ListMultipartUploads"
        if "versioning" in params:
            return "GetBucketVersioning"
        if params.get("list-type") == ["2"]:
            return "ListObjectsV2"
        return "ListObjects" if path.strip("/") else "ListBuckets"
    return method


@dataclass(frozen=True)
class RecordedRequest:
    operation: str
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class _Fault:
    operation: str
    remaining: int
    status: int
    code: str
    message: str
    delay: float
    skip: int = 0


@dataclass
class FaultInjector:
    """Make the next N requests of an operation fail or stall. Thread-safe."""

    _faults: list[_Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    injected: dict[str, int] = field(default_factory=dict)

    def fail_next(
        self,
        operation: str,
        times: int = 1,
        *,
        status: int = 503,
        code: str | None = None,
        message: str = "injected fault",
        after: int = 0,
    ) -> None:
        """The next ``times`` requests of ``operation`` (e.g. "UploadPart") get ``status``.

        ``after`` lets that many matching requests through first, e.g. to fail page 2 of a list.
        """
        default_code = {500: "InternalError", 503: "ServiceUnavailable", 403: "AccessDenied"}
        fault_code = code or default_code.get(status, "Error")
        with self._lock:
            self._faults.append(
                _Fault(operation, times, status, fault_code, message, 0.0, skip=after)
            )

    def delay_next(self, operation: str, seconds: float, times: int = 1) -> None:
        """The next ``times`` requests of ``operation`` wait ``seconds`` before answering."""
        with self._lock:
            self._faults.append(_Fault(operation, times, 0, "", "", seconds))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.injected.clear()

    def take(self, operation: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.operation == operation and fault.remaining > 0:
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.remaining -= 1
                    self.injected[operation] = self.injected.get(operation, 0) + 1
                    return fault
        return None


class B2Middleware:
    """WSGI middleware in front of moto: B2's header strictness, a request log, and faults."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.faults = FaultInjector()
        self.requests: list[RecordedRequest] = []
        self.rejected: list[RecordedRequest] = []
        self.upload_started: dict[str, datetime] = {}
        # Multipart uploads started with lock headers, and that lock (mode, retain-until):
        # their parts need Content-MD5 and the finished object gets the lock.
        self.locked_uploads: dict[str, tuple[str, str]] = {}
        # Most requests of one operation being answered at the same moment, to see parallelism.
        self.max_in_flight: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        self.faults.clear()
        with self._lock:
            self.requests.clear()
            self.rejected.clear()
            self.max_in_flight.clear()

    def operations(self) -> list[str]:
        with self._lock:
            return [r.operation for r in self.requests]

    @staticmethod
    def _drain(environ: dict[str, Any]) -> None:
        # Answer only after reading the body: otherwise the client sees a reset connection
        # while still sending, and reports a network error instead of our 400.
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        stream = environ.get("wsgi.input")
        while length > 0 and stream is not None:
            data = stream.read(min(length, 1 << 20))
            if not data:
                break
            length -= len(data)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        operation = classify(
            environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        )
        with self._lock:
            now = self._in_flight[operation] = self._in_flight.get(operation, 0) + 1
            self.max_in_flight[operation] = max(self.max_in_flight.get(operation, 0), now)
        try:
            return self._handle(environ, start_response)
        finally:
            with self._lock:
                self._in_flight[operation] -= 1

    def _handle(self, environ: dict[str, Any], start_response: Any) -> Any:
        headers = {
            key[5:].replace("_", "-").lower(): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        for name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            if environ.get(name):
                headers[name.replace("_", "-").lower()] = str(environ[name])
        request = RecordedRequest(
            operation=classify(
                environ["REQUEST_METHOD"],
                environ.get("PATH_INFO", ""),
                environ.get("QUERY_STRING", ""),
            ),
            method=environ["REQUEST_METHOD"],
            path=environ.get("PATH_INFO", ""),
            query=environ.get("QUERY_STRING", ""),
            headers=headers,
        )
        with self._lock:
            self.requests.append(request)

        forbidden = sorted(h for h in headers if h.startswith(_FORBIDDEN_PREFIXES))
        if forbidden:
            with self._lock:
                self.rejected.append(request)
            self._drain(environ)
            body = _error_xml(
                "InvalidArgument",
                f"Unsupported header '{forbidden[0]}' received for this API call.",
            )
            start_response(
                "400 Bad Request",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]

        refusal = self._object_lock_rules(request, environ)
        if refusal is not None:
            status, code, message = refusal
            self._drain(environ)
            body = _error_xml(code, message)
            start_response(
                status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
            )
            return [body]

        fault = self.faults.take(request.operation)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            else:
                self._drain(environ)
                body = _error_xml(fault.code, fault.message)
                start_response(
                    f"{fault.status} Injected",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                )
                return [body]
        if request.operation in ("CreateMultipartUpload", "ListMultipartUploads"):
            return self._track_upload_times(request.operation, environ, start_response)
        upload_id = parse_qs(request.query).get("uploadId", [""])[0]
        if request.operation == "CompleteMultipartUpload" and upload_id in self.locked_uploads:
            answer = list(self.app(environ, start_response))
            self._lock_completed_upload(request.path, self.locked_uploads[upload_id])
            return answer
        return self.app(environ, start_response)

    @staticmethod
    def _lock_completed_upload(path: str, lock: tuple[str, str]) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        bucket, key = path.lstrip("/").split("/", 1)
        try:
            stored = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, _unquote(key))
        except Exception:
            return  # the upload failed; moto has answered for it
        if stored is not None:
            stored.lock_mode, stored.lock_until = lock

    def _object_lock_rules(
        self, request: RecordedRequest, environ: dict[str, Any]
    ) -> tuple[str, str, str] | None:
        """S3's and B2's Object Lock rules that moto leaves out: (status, code, message)."""
        headers = request.headers
        locked_write = request.operation == "PutObject" and any(
            h.startswith("x-amz-object-lock-") for h in headers
        )
        locked_part = request.operation == "UploadPart" and (
            parse_qs(request.query).get("uploadId", [""])[0] in self.locked_uploads
        )
        if not (locked_write or locked_part or request.operation == "PutObjectRetention"):
            return None
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        md5 = headers.get("content-md5")
        if md5 is None:
            return (
                "400 Bad Request",
                "InvalidRequest",
                "Content-MD5 HTTP header is required for Put Object requests with Object "
                "Lock parameters",
            )
        if md5 != base64.b64encode(hashlib.md5(body).digest()).decode("ascii"):
            return ("400 Bad Request", "BadDigest", "The Content-MD5 you specified did not match")
        if request.operation == "PutObjectRetention":
            return self._shortening(request, body)
        return None

    @staticmethod
    def _shortening(request: RecordedRequest, body: bytes) -> tuple[str, str, str] | None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        bucket, key = request.path.lstrip("/").split("/", 1)
        version_id = parse_qs(request.query).get("versionId", [None])[0]
        try:
            stored = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(
                bucket, _unquote(key), version_id=version_id
            )
        except Exception:
            return None  # moto answers a missing key itself
        if stored is None or not stored.lock_until:
            return None
        asked = re.search(rb"<RetainUntilDate>([^<]+)</RetainUntilDate>", body)
        new_until = _parse_lock_date(asked.group(1).decode()) if asked else None
        shorter = new_until is None or new_until < _parse_lock_date(stored.lock_until)
        bypass = request.headers.get("x-amz-bypass-governance-retention", "").lower() == "true"
        if shorter and (stored.lock_mode == "COMPLIANCE" or not bypass):
            return ("403 Forbidden", "AccessDenied", "Access Denied: the retention may only grow")
        return None

    def _track_upload_times(self, operation: str, environ: dict[str, Any], start_response: Any):
        """moto reports every upload as initiated in 2010; B2 reports the real start time.

        Stale-upload cleanup decides by that time, so record when each upload really started
        and put it back into the listing.
        """
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(environ, capture))
        if captured["status"].startswith("200"):
            if operation == "CreateMultipartUpload":
                match = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
                if match:
                    upload_id = match.group(1).decode()
                    mode = environ.get("HTTP_X_AMZ_OBJECT_LOCK_MODE")
                    until = environ.get("HTTP_X_AMZ_OBJECT_LOCK_RETAIN_UNTIL_DATE")
                    with self._lock:
                        self.upload_started[upload_id] = datetime.now(UTC)
                        if mode and until:
                            self.locked_uploads[upload_id] = (mode, until)
            else:
                body = re.sub(rb"<Upload>.*?</Upload>", self._fix_initiated, body, flags=re.S)
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _fix_initiated(self, match: re.Match[bytes]) -> bytes:
        upload = match.group(0)
        upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", upload)
        started = self.upload_started.get(upload_id.group(1).decode()) if upload_id else None
        if started is None:
            return upload
        stamp = started.strftime("%Y-%m-%dT%H:%M:%S.000Z").encode()
        return re.sub(
            rb"<Initiated>[^<]*</Initiated>", b"<Initiated>" + stamp + b"</Initiated>", upload
        )


class B2LikeS3Server:
    """moto's S3 behind ``B2Middleware``, served on 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.middleware = B2Middleware(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            "127.0.0.1", 0, self.middleware, threaded=True, request_handler=MotoRequestHandler
        )
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        self.region = REGION
        self._thread: threading.Thread | None = None
        self._client: Any = None

    @property
    def faults(self) -> FaultInjector:
        return self.middleware.faults

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.middleware.requests

    @property
    def rejected(self) -> list[RecordedRequest]:
        return self.middleware.rejected

    def operations(self) -> list[str]:
        return self.middleware.operations()

    def start(self) -> B2LikeS3Server:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def client(self, **config: Any) -> Any:
        """A B2-safe client for test setup and inspection (checksums when_required).

        Without arguments the same client is reused: building one costs a noticeable fraction
        of a second, paid by every test otherwise.
        """
        if not config:
            if self._client is None:
                self._client = self._new_client()
            return self._client
        return self._new_client(**config)

    def _new_client(self, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        cfg = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "total_max_attempts": config.pop("max_attempts", 2)},
            **config,
        )
        return boto3.session.Session(
            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        ).client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=cfg)

    def store(self, bucket: str, **options: Any) -> Any:
        """The project's own store on ``s3://<bucket>/backups`` of this server, as a user
        configures it; ``options`` go to ``open_store`` (part size, attempts)."""
        from hardening_pipeline.backup.store import open_store

        return open_store(
            f"s3://{bucket}/backups",
            endpoint_url=self.endpoint_url,
            region=self.region,
            **options,
        )

    def create_bucket(
        self, name: str | None = None, *, versioned: bool = True, object_lock: bool = False
    ) -> str:
        name = name or f"test-{uuid.uuid4().hex[:20]}"
        client = self.client()
        # PutBucketVersioning is a "checksum required" operation, so botocore adds a CRC32 even
        # under when_required. Real B2 buckets are born versioned and nobody calls it there;
        # here it is test setup only, so the header is dropped rather than the guard loosened.
        client.meta.events.register("before-sign.s3.PutBucketVersioning", _drop_checksum_headers)
        if object_lock:
            # Object Lock turns versioning on by itself, as on B2.
            client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
            return name
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name


def _unquote(key: str) -> str:
    from urllib.parse import unquote

    return unquote(key)


def _parse_lock_date(text: str) -> datetime:
    """A retain-until date as S3 writes it (with or without fractions), as aware UTC."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _drop_checksum_headers(request: Any, **_: Any) -> None:
    for name in list(request.headers.keys()):
        if name.lower().startswith(_FORBIDDEN_PREFIXES):
            del request.headers[name]


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 whose port was just free; connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[B2LikeS3Server]:
    """A B2-strict S3 server for the whole session, with dummy credentials in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _SCRUBBED_ENV:
            mp.delenv(name, raising=False)
        for name, value in DUMMY_CREDENTIALS.items():
            mp.setenv(name, value)
        # Never read a developer's real ~/.aws files during tests.
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        server = B2LikeS3Server().start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: B2LikeS3Server) -> Iterator[str]:
    """A fresh versioned bucket; the request log and faults start and end empty."""
    name = s3_server.create_bucket()
    s3_server.middleware.clear()
    try:
        yield name
    finally:
        s3_server.middleware.clear()


@pytest.fixture
def s3_locked_bucket(s3_server: B2LikeS3Server) -> Iterator[str]:
    """A fresh bucket with Object Lock enabled (and so versioned), as B2 creates one."""
    name = s3_server.create_bucket(object_lock=True)
    s3_server.middleware.clear()
    try:
        yield name
    finally:
        s3_server.middleware.clear()


class ServerClock:
    """The S3 server's idea of now; starts at the real time and only moves when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: Any) -> None:
        self.now += delta

    def naive_utc(self) -> datetime:
        return self.now.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture
def s3_clock(monkeypatch: pytest.MonkeyPatch) -> ServerClock:
    """Moves moto's clock (which decides whether a lock has run out) with the test's."""
    import moto.s3.models

    clock = ServerClock()
    monkeypatch.setattr(moto.s3.models, "utcnow", clock.naive_utc)
    return clock


@pytest.fixture
def s3_faults(s3_server: B2LikeS3Server) -> Iterator[FaultInjector]:
    """The server's fault switch; anything left armed is disarmed after the test."""
    try:
        yield s3_server.faults
    finally:
        s3_server.faults.clear()


@pytest.fixture
def s3_closed_endpoint() -> str:
    """An endpoint URL that refuses connections, for "the network is gone" tests."""
    return closed_port_url()
