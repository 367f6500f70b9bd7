"""Classifying S3 failures (smtk.s3.retry): botocore's and the CRT client's, as tables."""

from __future__ import annotations

import pytest
from awscrt.exceptions import AwsCrtError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from smtk.s3.retry import CRT_INCOMPATIBLE, CRT_TRANSIENT, describe, error_code, is_incompatible, is_transient


def crt(name: str) -> AwsCrtError:
    return AwsCrtError(code=0, name=name, message=f"{name.lower()} happened")


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("error", "transient", "incompatible"),
    [
        (crt("AWS_IO_SOCKET_CONNECTION_REFUSED"), True, False),
        (crt("AWS_IO_SOCKET_TIMEOUT"), True, False),
        (crt("AWS_IO_DNS_QUERY_FAILED"), True, False),
        (crt("AWS_ERROR_HTTP_CONNECTION_CLOSED"), True, False),
        (crt("AWS_ERROR_S3_SLOW_DOWN"), True, False),
        (crt("AWS_ERROR_S3_INTERNAL_ERROR"), True, False),
        (crt("AWS_ERROR_S3_MISSING_UPLOAD_ID"), False, True),
        (crt("AWS_ERROR_S3_INVALID_CONTENT_RANGE_HEADER"), False, True),
        (crt("AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE"), False, False),
        (crt("AWS_ERROR_S3_CANCELED"), False, False),
        (crt("AWS_ERROR_SOMETHING_NEW"), False, False),
        (client_error("SlowDown", 503), True, False),
        (client_error("InternalError", 500), True, False),
        (client_error("AccessDenied", 403), False, False),
        (client_error("NoSuchBucket", 404), False, False),
        (EndpointConnectionError(endpoint_url="http://x"), True, False),
        (NoCredentialsError(), False, False),
        (ConnectionResetError(), True, False),
        (ValueError("x"), False, False),
    ],
)
def test_classification(error: BaseException, transient: bool, incompatible: bool) -> None:
    assert is_transient(error) is transient
    assert is_incompatible(error) is incompatible


def test_the_two_crt_tables_do_not_overlap() -> None:
    assert not CRT_TRANSIENT & CRT_INCOMPATIBLE


def test_every_name_in_the_tables_is_one_the_installed_crt_client_knows() -> None:
    from awscrt.exceptions import from_code

    known = set()
    for base in range(0, 16384, 1024):
        for code in range(base, base + 400):
            name = getattr(from_code(code), "name", None)
            if name:
                known.add(name)
    assert (CRT_TRANSIENT | CRT_INCOMPATIBLE) - known == set()


def test_crt_errors_are_described_by_name() -> None:
    error = crt("AWS_IO_SOCKET_CONNECTION_REFUSED")
    assert error_code(error) == "AWS_IO_SOCKET_CONNECTION_REFUSED"
    assert describe(error) == "AWS_IO_SOCKET_CONNECTION_REFUSED: aws_io_socket_connection_refused happened"
