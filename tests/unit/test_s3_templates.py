"""Requests built from a template are botocore's own requests, for every key it may see.

The differential oracle is s3transfer's ``BotocoreCRTRequestSerializer`` itself: for
generated buckets, keys and endpoint styles, the request :class:`TemplateSerializer`
builds must equal the one botocore builds, but for the per-invocation headers.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("awscrt")

from botocore.config import Config
from botocore.session import get_session
from s3transfer.crt import BaseCRTRequestSerializer, BotocoreCRTRequestSerializer

from smtk.s3.templates import plain_bucket, plain_key, template_serializer

ENDPOINTS = {
    "custom, path style": {
        "endpoint_url": "http://127.0.0.1:9000",
        "config": Config(s3={"addressing_style": "path"}),
    },
    "custom, base path": {
        "endpoint_url": "https://s3.example.test/gateway",
        "config": Config(s3={"addressing_style": "path"}),
    },
    "AWS, virtual host": {"region_name": "eu-west-1"},
    "AWS, path style": {"region_name": "us-east-1", "config": Config(s3={"addressing_style": "path"})},
}
PER_INVOCATION = {"amz-sdk-invocation-id", "amz-sdk-request"}


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


class Counting:
    """botocore's serializer, counting how often it was asked."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        kwargs = {"region_name": "us-east-1", **kwargs}
        self.inner = BotocoreCRTRequestSerializer(get_session(), kwargs)
        self.calls = 0

    def serialize_http_request(self, transfer_type: str, future: Any) -> Any:
        self.calls += 1
        return self.inner.serialize_http_request(transfer_type, future)

    def translate_crt_exception(self, exception: BaseException) -> Any:
        return self.inner.translate_crt_exception(exception)


def future(bucket: str, key: str, kind: str, size: int = 0, **extra: Any) -> Any:
    args: dict[str, Any] = dict(extra)
    if kind == "put_object":
        # What s3transfer's S3ClientArgsCreator sets before asking for the request.
        args.setdefault("ContentLength", size)
        args.setdefault("ContentMD5", "override-to-be-removed")
    return SimpleNamespace(
        meta=SimpleNamespace(call_args=SimpleNamespace(bucket=bucket, key=key, extra_args=args))
    )


def shape(request: Any) -> tuple[str, str, list[tuple[str, str]]]:
    headers = sorted((n.lower(), v) for n, v in request.headers if n.lower() not in PER_INVOCATION)
    return request.method, request.path, headers


_SERIALIZERS: dict[str, tuple[Counting, Any]] = {}


def serializers(style: str) -> tuple[Counting, Any]:
    # Built once per endpoint style: a botocore client takes ~50 ms to make.
    if style not in _SERIALIZERS:
        delegate = Counting(dict(ENDPOINTS[style]))
        _SERIALIZERS[style] = (delegate, template_serializer(delegate))
    return _SERIALIZERS[style]


buckets = st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True).filter(
    lambda b: ".." not in b and not b.endswith("--x-s3")
)
#: Characters URL encoders treat differently, then anything at all.
SPECIAL = "~/+%?#&=. -_!*'()[]{}:;,@$\\^`|\"<>\n\tü€😀"
keys = st.text(
    alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs",))),
    min_size=1,
    max_size=60,
).filter(plain_key)


def test_it_is_an_s3transfer_serializer() -> None:
    assert isinstance(serializers("custom, path style")[1], BaseCRTRequestSerializer)


@settings(max_examples=300, deadline=None)
@given(
    style=st.sampled_from(sorted(ENDPOINTS)),
    bucket=buckets,
    first=keys,
    key=keys,
    kind=st.sampled_from(["put_object", "get_object"]),
    size=st.integers(0, 5 * 2**30),
)
def test_templated_requests_equal_botocores(
    style: str, bucket: str, first: str, key: str, kind: str, size: int
) -> None:
    delegate, templated = serializers(style)
    templated.serialize_http_request(kind, future(bucket, first, kind, size=1))  # learns the template
    before = delegate.calls
    got = templated.serialize_http_request(kind, future(bucket, key, kind, size=size))
    assert delegate.calls == before  # built from the template, botocore not asked
    assert shape(got) == shape(
        delegate.inner.serialize_http_request(kind, future(bucket, key, kind, size=size))
    )


@pytest.mark.parametrize(
    ("bucket", "key", "kind", "extra"),
    [
        ("bkt", "a//b", "put_object", {}),
        ("bkt", "/leading", "put_object", {}),
        ("bkt", "dir/", "put_object", {}),
        ("bkt", "a/./b", "get_object", {}),
        ("bkt", "a/../b", "get_object", {}),
        ("bkt", "..", "get_object", {}),
        ("bkt", "x", "put_object", {"ContentType": "text/plain"}),
        ("bkt", "x", "get_object", {"VersionId": "3"}),
        ("bkt", "x", "delete_object", {}),
        ("arn:aws:s3:us-east-1:123456789012:accesspoint/ap", "x", "put_object", {}),
        ("data--use1-az4--x-s3", "x", "get_object", {}),
    ],
)
def test_everything_else_goes_to_botocore(bucket: str, key: str, kind: str, extra: dict[str, str]) -> None:
    delegate, templated = serializers("AWS, virtual host")
    templated.serialize_http_request("put_object", future("bkt", "learned", "put_object", size=3))
    templated.serialize_http_request("get_object", future("bkt", "learned", "get_object"))
    before = delegate.calls
    templated.serialize_http_request(kind, future(bucket, key, kind, size=5, **extra))
    assert delegate.calls == before + 1


@pytest.mark.parametrize(
    ("key", "plain"),
    [
        ("a", True),
        ("epoch-01/step-00001.json", True),
        ("weird name/ü+%?#&=~.txt", True),
        (".hidden/..ok/x..y", True),
        ("", False),
        ("/a", False),
        ("a/", False),
        ("a//b", False),
        (".", False),
        ("..", False),
        ("a/./b", False),
        ("a/../b", False),
        ("a/..", False),
        ("./a", False),
    ],
)
def test_plain_keys(key: str, plain: bool) -> None:
    assert plain_key(key) is plain


@pytest.mark.parametrize(
    ("bucket", "plain"),
    [
        ("my-bucket", True),
        ("my.bucket.name", True),
        ("arn:aws:s3:us-west-2:123456789012:accesspoint/test", False),
        ("arn:aws:s3-outposts:us-west-2:123456789012:outpost/op-01/accesspoint/ap", False),
        ("mybucket--usw2-az1--x-s3", False),
    ],
)
def test_plain_buckets(bucket: str, plain: bool) -> None:
    assert plain_bucket(bucket) is plain


def test_a_request_that_does_not_end_with_its_key_is_never_templated() -> None:
    class Odd(Counting):
        def serialize_http_request(self, transfer_type: str, future: Any) -> Any:
            request = super().serialize_http_request(transfer_type, future)
            request.path = request.path + "/suffix"  # an endpoint rule we do not know
            return request

    delegate = Odd(dict(ENDPOINTS["custom, path style"]))
    templated = template_serializer(delegate)
    for index in range(3):
        got = templated.serialize_http_request("get_object", future("bkt", f"k{index}", "get_object"))
        assert got.path == f"/bkt/k{index}/suffix"
    assert delegate.calls == 3
