"""The lean PUT path for small files (smtk.sync.fastput) against a real S3 server on loopback.

Uploads run through :class:`smtk.sync.uploader.Uploader` (the upload side of the sync)
with boto3 pointed at a :class:`CheckingProxy` in front of moto. The proxy is the
narrow seam: per request it records whether the fast path sent it (its user agent
carries ``USER_AGENT_MARKER``) or botocore did, and it checks every SigV4 signature
with botocore's own signer as the oracle, plus the payload hash, Content-MD5 and CRC32
against the bytes received -- moto checks none of these. It can also answer chosen
requests with an error, or drop its kept-alive connections. What arrived is compared
with a listing and a GET of every object.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest

from smtk.errors import ConfigError
from smtk.settings import SyncSettings
from smtk.sync.fastput import (
    MAX_CONSECUTIVE_FAILURES,
    USER_AGENT_MARKER,
    FastPut,
    encode_key,
    sign,
    signing_key,
)
from smtk.sync.uploader import Target, Uploader
from tests.helpers.s3server import S3Server
from tests.integration.sync_support import captured

pytestmark = pytest.mark.usefixtures("s3_env", "quiet_server_log")

PREFIX = "out/job/output/intermediate"

TRICKY = {
    "plain.json": b'{"loss": 0.5}',
    "with space.txt": b"space",
    "two  spaces/and trailing .txt": b"spaces",
    "plus+sign/a+b=c.txt": b"plus and equals",
    "percent%20not-a-space%2F.txt": b"percent",
    "tilde~/~home.txt": b"tilde",
    "unicode/ünï cödé/日本語/emoji-\N{ROCKET}.bin": "unicode ✓".encode(),
    "reserved/a&b;c,d:e@f$g!h'i(j)k*l.txt": b"reserved characters",
    "nested/a/b/c/d/e/f/deep.bin": bytes(range(256)) * 4,
    "empty.txt": b"",
}


@pytest.fixture(autouse=True)
def fresh_boto3_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new default boto3 session per test: it caches credentials resolved from the environment."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


# -- the checking proxy ---------------------------------------------------------------------------


@dataclass
class Seen:
    """One request the proxy received (no secrets kept)."""

    method: str
    key: str  # the object key (decoded), "" for bucket-level requests
    fast: bool
    access_key: str
    verdict: str  # "ok" or what was wrong
    headers: set[str]  # lower-case header names
    status: int = 0


def _verdict(method: str, path: str, headers: Mapping[str, str], body: bytes, keys: Mapping[str, Any]) -> str:
    """Check one request the way S3 does, with botocore's signer as the reference."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request, ?"
        r"SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})",
        headers.get("authorization", ""),
    )
    if match is None:
        return "not signed with SigV4"
    access_key, _day, region, signed, signature = match.groups()
    if access_key not in keys:
        return "unknown access key"
    secret, token = keys[access_key]
    if headers.get("x-amz-security-token") != token:
        return "wrong or missing session token"
    names = signed.split(";")
    if token is not None and "x-amz-security-token" not in names:
        return "session token not signed"
    request = AWSRequest(
        method=method, url=f"http://{headers['host']}{path}", headers={n: headers[n] for n in names}
    )
    request.context["timestamp"] = headers["x-amz-date"]
    auth = S3SigV4Auth(Credentials(access_key, secret, token), "s3", region)
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if expected != signature:
        return "SignatureDoesNotMatch"
    payload_hash = headers.get("x-amz-content-sha256", "")
    if re.fullmatch(r"[0-9a-f]{64}", payload_hash) and payload_hash != hashlib.sha256(body).hexdigest():
        return "XAmzContentSHA256Mismatch"
    if "content-md5" in headers and headers["content-md5"] != base64.b64encode(
        hashlib.md5(body).digest()
    ).decode("ascii"):
        return "BadDigest"
    crc = headers.get("x-amz-checksum-crc32")
    if crc is not None and crc != base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode():
        return "crc32 mismatch"
    return "ok"


class CheckingProxy:
    """An HTTP(S) proxy in front of the S3 server that checks and records every request."""

    def __init__(
        self, upstream_port: int, keys: Mapping[str, Any], tls: ssl.SSLContext | None = None
    ) -> None:
        self.upstream_port = upstream_port
        self.keys = dict(keys)
        #: (Seen) -> (status, S3 error code) to answer instead of forwarding, or None.
        self.fault: Callable[[Seen], tuple[int, str] | None] = lambda seen: None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.drop_connections()

    def drop_connections(self) -> None:
        """Close every client connection the proxy holds, as a server does with idle keep-alives."""
        with self._lock:
            sockets, self._sockets = set(self._sockets), set()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def puts(self, *, fast: bool | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == "PUT" and s.key and (fast is None or s.fast == fast)]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 does
    server: Any

    def setup(self) -> None:
        super().setup()
        proxy: CheckingProxy = self.server.proxy
        with proxy._lock:
            proxy._sockets.add(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        proxy: CheckingProxy = self.server.proxy
        body = self._body()
        headers = {name.lower(): value for name, value in self.headers.items()}
        parts = urlsplit(self.path).path.split("/", 2)
        seen = Seen(
            method=self.command,
            key=unquote(parts[2]) if len(parts) > 2 else "",
            fast=USER_AGENT_MARKER in headers.get("user-agent", ""),
            access_key=re.sub(r"^.*Credential=([^/]+)/.*$", r"\1", headers.get("authorization", "")),
            verdict=_verdict(self.command, self.path, headers, body, proxy.keys),
            headers=set(headers),
        )
        proxy._record(seen)
        answer = proxy.fault(seen) or ((403, seen.verdict) if seen.verdict != "ok" else None)
        if answer is not None:
            status, code = answer
            reply = f"<Error><Code>{code}</Code><Message>from the test proxy</Message></Error>".encode()
            reply_headers: list[tuple[str, str]] = [("Content-Type", "application/xml")]
        else:
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
            skip = {"connection", "keep-alive", "transfer-encoding", "expect", "content-length"}
            forward = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            forward["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=forward)
            response = upstream.getresponse()
            reply, status = response.read(), response.status
            reply_headers = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")
            ]
            upstream.close()
        seen.status = status
        self.send_response(status)
        for name, value in reply_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay


@pytest.fixture
def proxy(s3_server: S3Server, s3_env: dict[str, str]) -> Iterator[CheckingProxy]:
    keys = {s3_env["AWS_ACCESS_KEY_ID"]: (s3_env["AWS_SECRET_ACCESS_KEY"], s3_env.get("AWS_SESSION_TOKEN"))}
    checking = CheckingProxy(s3_server.port, keys)
    yield checking
    checking.stop()


# -- running the uploader ---------------------------------------------------------------------------


@dataclass
class Run:
    uploader: Uploader
    root: Path
    bucket: str
    written: dict[str, bytes] = field(default_factory=dict)

    def write(self, files: Mapping[str, bytes]) -> None:
        """Write ``files`` and offer them, then wait until everything is uploaded."""
        for rel, data in files.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.written[rel] = data
            self.uploader.offer_event(0, rel)
        assert self.uploader.flush(time.monotonic() + 180), "uploads did not finish"


@contextmanager
def uploading(
    tmp_path: Path, server: S3Server, endpoint: str, extra_env: Mapping[str, str] | None = None
) -> Iterator[Run]:
    bucket = server.new_bucket()
    root = tmp_path / "tree"
    root.mkdir()
    environ = {**server.env(), "S3_ENDPOINT_URL": endpoint, "SMTK_SYNC_DEBOUNCE_MS": "0", **(extra_env or {})}
    uploader = Uploader(
        [Target("intermediate", str(root), bucket, PREFIX)], SyncSettings.from_environ(environ), environ
    )
    uploader.start()
    run = Run(uploader, root, bucket)
    try:
        yield run
    finally:
        uploader.close()
    counts = uploader.counts()[0]
    assert counts.failed == 0, uploader.errors()
    assert counts.uploaded == len(run.written)
    # Every key and every content, by a listing and a GET of each object.
    assert server.objects(bucket, PREFIX + "/") == {f"{PREFIX}/{rel}": d for rel, d in run.written.items()}


def numbered(count: int, stem: str = "f") -> dict[str, bytes]:
    return {f"{stem}/{i:03d}.json": f"{stem} {i} ".encode() * (1 + i % 9) for i in range(count)}


# -- signing against published vectors and botocore ----------------------------------------------


def test_signer_reproduces_the_aws_documentation_examples() -> None:
    # "Examples: Signature Calculations" (Amazon S3 API reference, SigV4 header auth).
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    key = signing_key(secret, "20130524", "us-east-1")
    empty = hashlib.sha256(b"").hexdigest()
    got = sign(
        key,
        amz_date="20130524T000000Z",
        scope="20130524/us-east-1/s3/aws4_request",
        method="GET",
        path="/test.txt",
        headers={
            "host": "examplebucket.s3.amazonaws.com",
            "range": "bytes=0-9",
            "x-amz-content-sha256": empty,
            "x-amz-date": "20130524T000000Z",
        },
        payload_hash=empty,
    )
    assert got == (
        "host;range;x-amz-content-sha256;x-amz-date",
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    )
    body_hash = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    got = sign(
        key,
        amz_date="20130524T000000Z",
        scope="20130524/us-east-1/s3/aws4_request",
        method="PUT",
        path="/" + encode_key("test$file.text"),
        headers={
            "date": "Fri, 24 May 2013 00:00:00 GMT",
            "host": "examplebucket.s3.amazonaws.com",
            "x-amz-content-sha256": body_hash,
            "x-amz-date": "20130524T000000Z",
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
        },
        payload_hash=body_hash,
    )
    assert got[1] == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"


@pytest.mark.parametrize("key", [f"{PREFIX}/{rel}" for rel in TRICKY] + ["a//b", "%", "~/+/=/ /"])
def test_key_encoding_and_signature_agree_with_botocore(key: str) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.utils import percent_encode

    assert encode_key(key) == percent_encode(key, safe="/~")
    path = "/bucket-1/" + encode_key(key)
    headers = {
        "host": "127.0.0.1:9000",
        "content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "x-amz-content-sha256": hashlib.sha256(b"").hexdigest(),
        "x-amz-date": "20260102T030405Z",
        "x-amz-security-token": "token  with   spaces",
    }
    request = AWSRequest(method="PUT", url=f"http://127.0.0.1:9000{path}", headers=headers)
    request.context["timestamp"] = headers["x-amz-date"]
    auth = S3SigV4Auth(Credentials("AKID", "se/cr+et", "token  with   spaces"), "s3", "eu-west-3")
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    signed, got = sign(
        signing_key("se/cr+et", "20260102", "eu-west-3"),
        amz_date=headers["x-amz-date"],
        scope="20260102/eu-west-3/s3/aws4_request",
        method="PUT",
        path=path,
        headers=headers,
        payload_hash=headers["x-amz-content-sha256"],
    )
    assert got == expected
    assert signed == "content-md5;host;x-amz-content-sha256;x-amz-date;x-amz-security-token"


# -- through the uploader --------------------------------------------------------------------------


@pytest.mark.parametrize("with_token", [True, False], ids=["session-token", "static-keys"])
def test_tricky_keys_arrive_through_the_fast_path(
    tmp_path: Path,
    s3_server: S3Server,
    proxy: CheckingProxy,
    monkeypatch: pytest.MonkeyPatch,
    with_token: bool,
) -> None:
    if not with_token:
        monkeypatch.delenv("AWS_SESSION_TOKEN")
        proxy.keys = {k: (secret, None) for k, (secret, _) in proxy.keys.items()}
    with uploading(tmp_path, s3_server, proxy.endpoint) as run:
        run.write({"first.txt": b"botocore sends this one and teaches the route"})
        run.write(TRICKY)
    assert [p.key for p in proxy.puts(fast=False)] == [f"{PREFIX}/first.txt"]
    fast = proxy.puts(fast=True)
    assert sorted(p.key for p in fast) == sorted(f"{PREFIX}/{rel}" for rel in TRICKY)
    assert all(p.verdict == "ok" and p.status == 200 for p in proxy.puts())
    for p in fast:
        assert {"content-md5", "x-amz-content-sha256", "x-amz-checksum-crc32"} <= p.headers
        assert ("x-amz-security-token" in p.headers) == with_token


def test_many_files_on_kept_alive_connections_that_the_server_drops(
    tmp_path: Path, s3_server: S3Server, proxy: CheckingProxy
) -> None:
    with uploading(tmp_path, s3_server, proxy.endpoint) as run:
        run.write({"first.txt": b"route"})
        run.write(numbered(120, "a"))
        # The server closes idle keep-alive connections: each thread's next PUT meets a
        # closed connection and is sent again on a new one, still by the fast path.
        proxy.drop_connections()
        run.write(numbered(120, "b"))
    assert len(proxy.puts(fast=False)) == 1
    assert len(proxy.puts(fast=True)) == 240
    assert all(p.verdict == "ok" and p.status == 200 for p in proxy.puts())


def test_a_server_error_on_the_fast_path_falls_back_to_botocore(
    tmp_path: Path, s3_server: S3Server, proxy: CheckingProxy
) -> None:
    proxy.fault = lambda seen: (500, "InternalError") if seen.fast and "flaky" in seen.key else None
    files = {**numbered(6), "flaky-1.txt": b"one", "x/flaky-2.txt": b"two", **numbered(6, "g")}
    with uploading(tmp_path, s3_server, proxy.endpoint) as run:
        run.write({"first.txt": b"route"})
        run.write(files)
        run.write(numbered(4, "after"))  # the fast path is still on
    flaky = {f"{PREFIX}/flaky-1.txt", f"{PREFIX}/x/flaky-2.txt"}
    assert {p.key for p in proxy.puts(fast=True) if p.status == 500} == flaky
    assert {p.key for p in proxy.puts(fast=False)} == flaky | {f"{PREFIX}/first.txt"}
    assert all(p.status == 200 for p in proxy.puts(fast=False))
    assert len([p for p in proxy.puts(fast=True) if p.status == 200]) == 16


def test_repeated_failures_switch_the_fast_path_off_once_without_leaking_secrets(
    tmp_path: Path, s3_server: S3Server, proxy: CheckingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    access, secret, token = "AKIA" + uuid.uuid4().hex[:16].upper(), uuid.uuid4().hex, uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    proxy.keys = {access: (secret, token)}
    proxy.fault = lambda seen: (403, "AccessDenied") if seen.fast else None
    # One worker: the failures come strictly one after another.
    one_worker = {"SMTK_SYNC_WORKERS": "1"}
    with captured("smtk") as records, uploading(tmp_path, s3_server, proxy.endpoint, one_worker) as run:
        run.write({"first.txt": b"route"})
        run.write(numbered(12))
    assert len(proxy.puts(fast=True)) == MAX_CONSECUTIVE_FAILURES
    assert len(proxy.puts(fast=False)) == 13  # every file arrived through botocore
    infos = [m for m in records.messages(20) if "switched off" in m]
    assert len(infos) == 1, records.messages()
    assert "AccessDenied" in infos[0]
    text = "\n".join(records.messages())
    assert "fast PUT of s3://" in text  # the per-file debug lines were captured
    for leak in (secret, token, "Signature=", "Authorization", "authorization"):
        assert leak not in text


def test_refreshed_session_credentials_are_used_at_once(
    tmp_path: Path, s3_server: S3Server, proxy: CheckingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore.session
    from botocore.credentials import CredentialProvider, RefreshableCredentials

    generations = {
        name: ("AKIA" + uuid.uuid4().hex[:16].upper(), uuid.uuid4().hex, f"token-{name}-{uuid.uuid4().hex}")
        for name in ("A", "B")
    }
    current = ["A"]

    def metadata() -> dict[str, str]:
        access, secret, token = generations[current[0]]
        # Inside botocore's advisory refresh window (15 min), outside the mandatory one:
        # every use asks for a refresh, and a refresh gives whatever is current.
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=14)
        return {"access_key": access, "secret_key": secret, "token": token, "expiry_time": expiry.isoformat()}

    class Rotating(CredentialProvider):
        METHOD = CANONICAL_NAME = "smtk-test-rotating"

        def load(self) -> Any:
            return RefreshableCredentials.create_from_metadata(metadata(), metadata, self.METHOD)

    session = botocore.session.get_session()
    session.get_component("credential_provider").insert_before("env", Rotating())
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", boto3.Session(botocore_session=session))
    proxy.keys = {access: (secret, token) for access, secret, token in generations.values()}
    with uploading(tmp_path, s3_server, proxy.endpoint) as run:
        run.write({"first.txt": b"route"})
        run.write(numbered(10, "a"))
        current[0] = "B"
        run.write(numbered(10, "b"))
    assert all(p.verdict == "ok" and p.status == 200 for p in proxy.puts())
    fast = proxy.puts(fast=True)
    assert len(fast) == 20
    assert {p.access_key for p in fast if "/a/" in p.key} == {generations["A"][0]}
    assert {p.access_key for p in fast if "/b/" in p.key} == {generations["B"][0]}


def test_kill_switch(tmp_path: Path, s3_server: S3Server, proxy: CheckingProxy) -> None:
    with uploading(tmp_path, s3_server, proxy.endpoint, {"SMTK_SYNC_FAST_PUT": "0"}) as run:
        run.write({"first.txt": b"route"})
        run.write(numbered(10))
    assert proxy.puts(fast=True) == []
    assert len(proxy.puts(fast=False)) == 11


def test_kill_switch_setting() -> None:
    assert SyncSettings.from_environ({}).fast_put is True
    assert SyncSettings.from_environ({"SMTK_SYNC_FAST_PUT": "0"}).fast_put is False
    assert SyncSettings.from_environ({"SMTK_SYNC_FAST_PUT": "off"}).fast_put is False
    with pytest.raises(ConfigError, match="SMTK_SYNC_FAST_PUT"):
        SyncSettings.from_environ({"SMTK_SYNC_FAST_PUT": "maybe"})


def test_a_configured_proxy_leaves_everything_to_botocore(
    tmp_path: Path, s3_server: S3Server, proxy: CheckingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # For https only, so botocore (talking http here) does not use it; the fast path must not either.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with uploading(tmp_path, s3_server, proxy.endpoint) as run:
        run.write({"first.txt": b"route"})
        run.write(numbered(5))
    assert proxy.puts(fast=True) == []
    assert len(proxy.puts(fast=False)) == 6


def test_a_request_botocore_sends_with_extra_headers_is_not_reproduced(
    s3_server: S3Server, proxy: CheckingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smtk.s3 import make_client

    monkeypatch.setenv("S3_ENDPOINT_URL", proxy.endpoint)
    client = make_client()
    bucket = s3_server.new_bucket()

    def encrypt(request: Any, **_: Any) -> None:  # e.g. a plugin adding server-side encryption
        request.headers["x-amz-server-side-encryption"] = "AES256"

    client.meta.events.register("before-sign.s3.PutObject", encrypt)
    fast = FastPut.create(client, {})
    assert fast is not None
    for attempt in range(4):
        with fast.observe(bucket, f"k{attempt}", b"data"):
            client.put_object(Bucket=bucket, Key=f"k{attempt}", Body=b"data")
    assert fast.route(bucket) is None
    assert fast.put(bucket, "k9", b"data") is False
    assert proxy.puts(fast=True) == []


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtk test S3")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_with_aws_ca_bundle(
    tmp_path: Path,
    s3_server: S3Server,
    s3_env: dict[str, str],
    tls_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    keys = {s3_env["AWS_ACCESS_KEY_ID"]: (s3_env["AWS_SECRET_ACCESS_KEY"], s3_env.get("AWS_SESSION_TOKEN"))}
    secure = CheckingProxy(s3_server.port, keys, tls=context)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    try:
        with uploading(tmp_path, s3_server, secure.endpoint) as run:
            run.write({"first.txt": b"route"})
            run.write(TRICKY)
    finally:
        secure.stop()
    assert len(secure.puts(fast=False)) == 1
    assert len(secure.puts(fast=True)) == len(TRICKY)
    assert all(p.verdict == "ok" and p.status == 200 for p in secure.puts())


def test_importing_fastput_loads_no_boto3() -> None:
    code = "import sys, smtk.sync.fastput; print(sorted(m for m in sys.modules if m.startswith('boto')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
