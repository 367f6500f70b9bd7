"""Which S3 failures are worth retrying, and the retry loop itself.

Transient: the endpoint cannot be reached, the connection broke, a timeout, HTTP 5xx,
throttling. Permanent: the bucket does not exist, access is denied, the credentials
are wrong or missing -- retrying those only delays the report. A local file that
vanished is neither: the caller treats it as "nothing to do".

Errors of AWS's CRT client that carry an S3 response arrive translated into botocore's
``ClientError`` (by s3transfer); the others are ``AwsCrtError`` with a name such as
``AWS_IO_SOCKET_CONNECTION_REFUSED``, classified here by that name. A third kind,
:func:`is_incompatible`, says the endpoint answered in a way the CRT client cannot use
(``AWS_ERROR_S3_MISSING_UPLOAD_ID`` from a server whose multipart answer differs from
S3's): botocore's classic client, which is more lenient, gets the transfer instead.

Retries use the ``retrying`` package with exponential backoff and jitter; the wait
between attempts is interruptible (a flush deadline or abort ends it at once).

::

    policy = RetryPolicy(max_seconds=900, max_wait_seconds=5, abort=stop_event)
    policy.call(client.put_object, Bucket=..., Key=..., Body=...)
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: S3 error codes that retrying cannot fix.
PERMANENT_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "AccountProblem",
        "InvalidToken",
        "ExpiredToken",
        "InvalidObjectState",
        "EntityTooLarge",
        "KMS.NotFoundException",
        "KMS.DisabledException",
    }
)
#: Codes that are throttling or server trouble even when the HTTP status says otherwise.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
        "OperationAborted",
    }
)


#: ``AwsCrtError`` names of failures that may go away by themselves.
CRT_TRANSIENT = frozenset(
    {
        "AWS_IO_SOCKET_CONNECTION_REFUSED",
        "AWS_IO_SOCKET_TIMEOUT",
        "AWS_IO_SOCKET_NO_ROUTE_TO_HOST",
        "AWS_IO_SOCKET_NETWORK_DOWN",
        "AWS_IO_SOCKET_CLOSED",
        "AWS_IO_SOCKET_NOT_CONNECTED",
        "AWS_IO_SOCKET_CONNECT_ABORTED",
        "AWS_IO_DNS_QUERY_FAILED",
        "AWS_IO_DNS_QUERY_AGAIN",
        "AWS_IO_DNS_NO_ADDRESS_FOR_HOST",
        "AWS_IO_DNS_HOST_REMOVED_FROM_CACHE",
        "AWS_IO_TLS_CLOSED_ABORT",
        "AWS_IO_TLS_NEGOTIATION_TIMEOUT",
        "AWS_ERROR_HTTP_CONNECTION_CLOSED",
        "AWS_ERROR_HTTP_SERVER_CLOSED",
        "AWS_ERROR_HTTP_RESPONSE_FIRST_BYTE_TIMEOUT",
        "AWS_ERROR_HTTP_CONNECTION_MANAGER_ACQUISITION_TIMEOUT",
        "AWS_ERROR_S3_INTERNAL_ERROR",
        "AWS_ERROR_S3_SLOW_DOWN",
        "AWS_ERROR_S3_REQUEST_TIMEOUT",
        "AWS_ERROR_S3_REQUEST_TIME_TOO_SKEWED",
        "AWS_ERROR_S3_RESPONSE_CHECKSUM_MISMATCH",
        "AWS_ERROR_S3_OBJECT_MODIFIED",
        "AWS_ERROR_S3_FILE_MODIFIED",
    }
)
#: ``AwsCrtError`` names that mean "this endpoint's answers do not suit the CRT client".
CRT_INCOMPATIBLE = frozenset(
    {
        "AWS_ERROR_S3_MISSING_UPLOAD_ID",
        "AWS_ERROR_S3_MISSING_CONTENT_RANGE_HEADER",
        "AWS_ERROR_S3_INVALID_CONTENT_RANGE_HEADER",
        "AWS_ERROR_S3_MISSING_CONTENT_LENGTH_HEADER",
        "AWS_ERROR_S3_INVALID_CONTENT_LENGTH_HEADER",
        "AWS_ERROR_S3_MISSING_ETAG",
        "AWS_ERROR_S3_INVALID_RANGE_HEADER",
        "AWS_ERROR_S3_MULTIRANGE_HEADER_UNSUPPORTED",
        "AWS_ERROR_S3_LIST_PARTS_PARSE_FAILED",
        "AWS_ERROR_S3_INCORRECT_CONTENT_LENGTH",
        "AWS_ERROR_S3_INTERNAL_BUFFER_SIZE_MISMATCH_RETRYING_WITH_RANGE",
    }
)


def crt_error_name(exc: BaseException) -> str | None:
    """The name of an ``awscrt.exceptions.AwsCrtError`` (``AWS_IO_...``), else None."""
    if type(exc).__name__ != "AwsCrtError":
        return None
    name = getattr(exc, "name", None)
    return name if isinstance(name, str) else ""


def is_incompatible(exc: BaseException) -> bool:
    """Whether ``exc`` says the endpoint's answer does not suit the CRT client (see module doc)."""
    return crt_error_name(exc) in CRT_INCOMPATIBLE


class Aborted(Exception):
    """The retry loop was told to stop (flush deadline passed)."""


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError``, the name of a CRT error, else the
    exception's class name."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return crt_error_name(exc) or type(exc).__name__


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away by itself (retry), as opposed to a permanent refusal."""
    if isinstance(exc, Aborted):
        return False
    crt_name = crt_error_name(exc)
    if crt_name is not None:
        return crt_name in CRT_TRANSIENT
    # Import here: classification only happens once an upload ran, i.e. boto3 is loaded.
    from botocore import exceptions as bexc

    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError, bexc.ParamValidationError)):
        return False
    if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError)):
        return True
    if isinstance(exc, bexc.ClientError):
        code = error_code(exc)
        if code in PERMANENT_CODES:
            return False
        if code in TRANSIENT_CODES:
            return True
        status = _http_status(exc)
        return status is None or status >= 500 or status in (408, 429)
    if isinstance(exc, bexc.BotoCoreError):
        # e.g. a checksum mismatch on a broken connection: worth another try.
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def describe(exc: BaseException) -> str:
    """``Code: message`` on one line, short (the caller adds the bucket/key)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        message = response.get("Error", {}).get("Message") or ""
        text = f"{error_code(exc)}: {message}".rstrip(": ")
    elif crt_error_name(exc):
        text = f"{crt_error_name(exc)}: {getattr(exc, 'message', '') or ''}".rstrip(": ")
    else:
        text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    text = " ".join(text.split())
    return text if len(text) <= 240 else text[:237] + "..."


@dataclass
class RetryPolicy:
    """Retry transient failures for up to ``max_seconds``, backing off exponentially."""

    max_seconds: float = 900.0
    max_wait_seconds: float = 5.0
    first_wait_seconds: float = 0.1
    abort: threading.Event | None = None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried while it raises a transient error.

        Raises the last exception when it is permanent or the time is up, and
        :class:`Aborted` when ``abort`` was set during a wait.
        """
        from retrying import Retrying

        retrying = Retrying(
            retry_on_exception=is_transient,
            stop_func=self._stop,
            wait_func=self._wait,
            wrap_exception=False,
        )
        result: T = retrying.call(fn, *args, **kwargs)
        return result

    def _stop(self, attempts: int, delay_ms: int) -> bool:
        if self.abort is not None and self.abort.is_set():
            return True
        return delay_ms >= self.max_seconds * 1000.0

    def _wait(self, attempts: int, delay_ms: int) -> int:
        # Exponential backoff with full jitter, capped. The sleep happens here rather
        # than in retrying's time.sleep so that an abort interrupts it; we return 0.
        ceiling = min(self.max_wait_seconds, self.first_wait_seconds * (2 ** (attempts - 1)))
        remaining = self.max_seconds - delay_ms / 1000.0
        seconds = max(0.0, min(random.uniform(ceiling / 2, ceiling), remaining))
        if self.abort is not None:
            if self.abort.wait(seconds):
                raise Aborted("sync stopped while waiting to retry")
        else:
            threading.Event().wait(seconds)
        return 0
