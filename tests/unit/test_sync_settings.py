"""SMTK_SYNC_* parsing, S3 error classification and the sync report (pure, no server)."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from smtk.errors import ConfigError
from smtk.s3.retry import Aborted, RetryPolicy, describe, is_transient
from smtk.sync import SyncReport, SyncSettings


def client_error(code: str, status: int) -> ClientError:
    error = {"Code": code, "Message": f"{code} happened"}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def test_defaults() -> None:
    settings = SyncSettings.from_environ({})
    assert settings == SyncSettings()
    assert settings.intermediate == "auto" and not settings.checkpoints and not settings.strict


def test_values_are_read() -> None:
    settings = SyncSettings.from_environ(
        {
            "SMTK_SYNC_INTERMEDIATE": "ON",
            "SMTK_SYNC_CHECKPOINTS": "yes",
            "SMTK_SYNC_WORKERS": "3",
            "SMTK_SYNC_DEBOUNCE_MS": "0",
            "SMTK_SYNC_MODE": "poll",
            "SMTK_SYNC_MULTIPART_MB": "32",
            "SMTK_SYNC_STRICT": "1",
        }
    )
    assert settings.intermediate == "on" and settings.checkpoints and settings.strict
    assert settings.workers == 3 and settings.debounce_seconds == 0 and settings.mode == "poll"
    assert settings.multipart_threshold == 32 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SMTK_SYNC_WORKERS", "0"),
        ("SMTK_SYNC_WORKERS", "many"),
        ("SMTK_SYNC_STRICT", "maybe"),
        ("SMTK_SYNC_MODE", "fanotify"),
        ("SMTK_SYNC_RETRY_SECONDS", "nan"),
        ("SMTK_SYNC_MULTIPART_MB", "1"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        SyncSettings.from_environ({name: value})
    assert name in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("NoSuchBucket", 404), False),
        (client_error("AccessDenied", 403), False),
        (client_error("InvalidAccessKeyId", 403), False),
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("RequestTimeout", 400), True),
        (client_error("Whatever", 502), True),
        (client_error("Whatever", 400), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (NoCredentialsError(), False),
        (ValueError("bug"), False),
    ],
)
def test_classification(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_describe_is_one_short_line() -> None:
    text = describe(client_error("AccessDenied", 403))
    assert text == "AccessDenied: AccessDenied happened"
    assert "\n" not in describe(RuntimeError("a\nb" * 500)) and len(describe(RuntimeError("x" * 999))) <= 240


def test_retry_policy_retries_transient_then_succeeds() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        return "ok"

    assert RetryPolicy(max_seconds=60, first_wait_seconds=0.001).call(flaky) == "ok"
    assert len(calls) == 3


def test_retry_policy_gives_up_at_once_on_permanent_errors() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(ClientError):
        RetryPolicy(max_seconds=60).call(denied)
    assert len(calls) == 1


def test_retry_policy_stops_when_aborted() -> None:
    abort = threading.Event()
    calls = []

    def down() -> None:
        calls.append(1)
        abort.set()
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises((Aborted, EndpointConnectionError)):
        RetryPolicy(max_seconds=600, abort=abort).call(down)
    assert len(calls) == 1


def test_report_summary_and_strictness() -> None:
    clean = SyncReport(uploaded=3, failed=0, pending_abandoned=0, seconds=0.5, strict=True)
    assert clean.complete and not clean.fails_job
    assert "3 files uploaded" in clean.summary() and "0.50 s" in clean.summary()
    broken = SyncReport(uploaded=3, failed=1, pending_abandoned=2, seconds=1.0)
    assert not broken.complete and not broken.fails_job
    assert SyncReport(uploaded=0, failed=0, pending_abandoned=1, seconds=1.0, strict=True).fails_job
