"""S3 failures as one sentence each: what failed, where, and what to check.

botocore raises a handful of exception types and S3 servers a few dozen error codes; the user
needs to know only which of three things to fix: configuration (credentials, bucket, permissions:
a ``StoreAccessError``, so the CLI exits 2), the network or endpoint, or the store itself.
Retrying is not decided here: botocore's retry configuration is the only retry layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hardening_pipeline.backup.store.interface import StoreAccessError, StoreError
from hardening_pipeline.settings import ENV_S3_ENDPOINT_URL, ENV_STORE_URL

ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
    }
)


def redact_url(url: str) -> str:
    """Drop any user:password@ from a URL before it reaches a log line."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a ``ClientError`` (``NoSuchKey``, ``AccessDenied``...), else None."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return response.get("Error", {}).get("Code")


def store_error(exc: BaseException, action: str, *, where: str, endpoint: str) -> StoreError:
    """Map a botocore exception raised while doing ``action`` in the store ``where``."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StoreAccessError(
            f"could not {action} in {where}: no S3 credentials found; set AWS_ACCESS_KEY_ID "
            f"and AWS_SECRET_ACCESS_KEY (the B2 keyID and applicationKey)"
        )
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return StoreError(
            f"could not {action}: timed out talking to the backup store at {endpoint}; "
            f"check {ENV_S3_ENDPOINT_URL} and the network"
        )
    if isinstance(exc, EndpointConnectionError):
        detail = str(exc.kwargs.get("error") or exc)
        reason = "connection refused" if "refused" in detail.lower() else "no connection"
        return StoreError(
            f"could not {action}: could not reach the backup store at {endpoint}: "
            f"{reason}; check {ENV_S3_ENDPOINT_URL} and the network"
        )
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code") or "error"
        message = (err.get("Message") or "").rstrip(".")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        said = f"{code}{f' ({message})' if message else ''}"
        if code in ACCESS_CODES or status in (401, 403):
            return StoreAccessError(
                f"could not {action} in {where}: the store said {said}; check the bucket "
                f"name in {ENV_STORE_URL}, the key's permissions and AWS_ACCESS_KEY_ID/"
                f"AWS_SECRET_ACCESS_KEY"
            )
        if "unsupported header" in message.lower():
            return StoreError(
                f"could not {action} in {where}: the store said {said}; the S3 client must "
                f"be built with checksums 'when_required' (use make_s3_client)"
            )
        return StoreError(f"could not {action} in {where}: the store said {said}")
    return StoreError(f"could not {action} in {where}: {type(exc).__name__}: {exc}")


def call_s3(
    action: str, fn: Callable[..., Any], *, where: str, endpoint: str, **kwargs: Any
) -> Any:
    """``fn(**kwargs)`` once (botocore has already retried what it retries), errors mapped."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise store_error(exc, action, where=where, endpoint=endpoint) from exc
