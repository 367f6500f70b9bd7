"""Which S3 failures are worth retrying, and the retry loop itself.

Transient: the endpoint cannot be reached, the connection broke, a timeout, HTTP 5xx,
throttling. Permanent: the bucket does not exist, access is denied, the credentials
are wrong or missing -- retrying those only delays the report. A local file that
vanished is neither: the caller treats it as "nothing to do".

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


class Aborted(Exception):
    """The retry loop was told to stop (flush deadline passed)."""


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError``, else the exception's class name."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


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
