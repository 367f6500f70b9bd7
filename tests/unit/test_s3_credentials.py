"""What the CRT client is given to sign with: botocore's credentials, static or renewed."""

from __future__ import annotations

import datetime
import itertools

import pytest

pytest.importorskip("awscrt")

from botocore.credentials import Credentials, RefreshableCredentials
from s3transfer.crt import BotocoreCRTCredentialsWrapper

from smtk.s3.engine import _crt_credentials


def resolved(provider: object) -> tuple[str, str, str | None]:
    got = provider.get_credentials().result(timeout=5)  # type: ignore[attr-defined]
    return got.access_key_id, got.secret_access_key, got.session_token


def test_static_keys_are_handed_over_once() -> None:
    credentials = Credentials("AKIDSTATIC", "secret", "token")
    provider = _crt_credentials(credentials, BotocoreCRTCredentialsWrapper)
    assert resolved(provider) == ("AKIDSTATIC", "secret", "token")
    credentials.access_key = "AKIDCHANGED"  # a static provider does not call back into Python
    assert resolved(provider) == ("AKIDSTATIC", "secret", "token")


def test_refreshable_credentials_are_renewed() -> None:
    counter = itertools.count()

    def refresh() -> dict[str, str]:
        n = next(counter)
        # Already expiring: botocore refreshes on every access.
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        return {
            "access_key": f"AKID{n}",
            "secret_key": "s",
            "token": f"t{n}",
            "expiry_time": expiry.isoformat(),
        }

    credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, method="container-role")
    provider = _crt_credentials(credentials, BotocoreCRTCredentialsWrapper)
    first = resolved(provider)
    second = resolved(provider)
    assert first[0].startswith("AKID") and second[0].startswith("AKID")
    assert first != second  # asked again, renewed
