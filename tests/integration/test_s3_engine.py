"""The S3 engine (smtk.s3.engine) and many-object downloads (smtk.s3.batch) against a real server.

Both clients, AWS's CRT client and botocore's classic one, run the same cases against
moto on loopback, through :class:`~tests.helpers.s3proxy.S3Proxy` where an endpoint must
misbehave (errors, an answer the CRT client refuses, TLS with its own certificate) and
through :class:`~tests.helpers.slowproxy.SlowProxy` where a transfer must take long
(progress, cancelling). What arrived is compared byte for byte.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import threading
import time
from pathlib import Path

import boto3
import pytest

from smtk.s3.batch import Wanted, download_many, download_prefix, list_objects
from smtk.s3.engine import MULTIPART_THRESHOLD, PART_SIZE, Engine, _bypassed, _proxy_for
from smtk.s3.retry import Aborted, RetryPolicy
from smtk.settings import S3Settings, SyncSettings
from smtk.stop import Stop
from smtk.sync.uploader import Target, Uploader
from tests.helpers.s3proxy import S3Proxy
from tests.helpers.s3server import S3Server
from tests.helpers.slowproxy import SlowProxy
from tests.integration.sync_support import captured

pytestmark = pytest.mark.usefixtures("s3_env", "quiet_server_log")

CLIENTS = ["crt", "classic"]
MiB = 1024 * 1024

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


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def engine_for(endpoint: str, client: str, **settings: object) -> Engine:
    environ = {**os.environ, "S3_ENDPOINT_URL": endpoint}
    return Engine(environ, S3Settings(client=client, **settings))  # type: ignore[arg-type]


# -- both clients, the same results ---------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_tricky_keys_and_a_multipart_file_go_up_and_come_back(
    tmp_path: Path, s3_server: S3Server, client: str
) -> None:
    files = {**TRICKY, "big/model.bin": os.urandom(20 * MiB + 17)}
    write_tree(tmp_path / "up", files)
    bucket = s3_server.new_bucket()
    engine = engine_for(s3_server.endpoint, client)
    assert engine.kind == client
    moved: list[int] = []
    transfers = [
        engine.upload(str(tmp_path / "up" / rel), bucket, f"p/{rel}", size=len(data), progress=moved.append)
        for rel, data in files.items()
    ]
    for transfer in transfers:
        engine.wait(transfer)
    assert s3_server.objects(bucket, "p/") == {f"p/{rel}": data for rel, data in files.items()}
    assert sum(moved) == sum(len(d) for d in files.values())

    down = tmp_path / "down"
    result = download_many(
        engine,
        bucket,
        (
            Wanted(key, str(down / key[2:]), size)
            for key, size in list_objects(engine.client, bucket, "p/", RetryPolicy())
        ),
        concurrency=4,
        policy=RetryPolicy(max_seconds=30),
    )
    engine.close()
    assert (result.files, result.failed, result.stopped) == (len(files), 0, False)
    assert read_tree(down) == files


@pytest.mark.parametrize("client", CLIENTS)
def test_transient_errors_are_retried_until_everything_arrives(
    tmp_path: Path, s3_server: S3Server, client: str
) -> None:
    proxy = S3Proxy(s3_server.port)
    failed: set[str] = set()
    lock = threading.Lock()

    def first_put_of_each_key_fails(request):  # type: ignore[no-untyped-def]
        with lock:
            if request.method != "PUT" or request.key in failed:
                return None
            failed.add(request.key)
        return (503, "SlowDown")

    proxy.fault = first_put_of_each_key_fails
    bucket = s3_server.new_bucket()
    root = tmp_path / "tree"
    files = {f"f/{i:02d}.json": f"file {i}".encode() * (i + 1) for i in range(30)}
    write_tree(root, files)
    environ = {**os.environ, "S3_ENDPOINT_URL": proxy.endpoint}
    uploader = Uploader(
        [Target("intermediate", str(root), bucket, "out")],
        SyncSettings(debounce_seconds=0.0),
        environ,
        S3Settings(client=client),  # type: ignore[arg-type]
    )
    uploader.start()
    try:
        for rel in files:
            uploader.offer_event(0, rel)
        assert uploader.flush(time.monotonic() + 120)
    finally:
        uploader.close()
        proxy.stop()
    assert uploader.errors() == ()
    assert s3_server.objects(bucket, "out/") == {f"out/{rel}": data for rel, data in files.items()}
    assert failed == {f"out/{rel}" for rel in files}  # every key did fail once


@pytest.mark.parametrize("client", CLIENTS)
def test_a_permanent_error_is_reported_with_its_code_and_not_retried(
    tmp_path: Path, s3_server: S3Server, client: str
) -> None:
    proxy = S3Proxy(s3_server.port)
    proxy.fault = lambda request: (403, "AccessDenied") if request.method == "PUT" else None
    bucket = s3_server.new_bucket()
    root = tmp_path / "tree"
    write_tree(root, {"a.txt": b"a", "big.bin": os.urandom(9 * MiB)})
    environ = {**os.environ, "S3_ENDPOINT_URL": proxy.endpoint}
    uploader = Uploader(
        [Target("intermediate", str(root), bucket, "out")],
        SyncSettings(debounce_seconds=0.0, multipart_threshold=8 * MiB),
        environ,
        S3Settings(client=client),  # type: ignore[arg-type]
    )
    uploader.start()
    started = time.monotonic()
    try:
        with captured() as records:
            uploader.offer_event(0, "a.txt")
            uploader.offer_event(0, "big.bin")
            assert uploader.flush(time.monotonic() + 60)
    finally:
        uploader.close()
        proxy.stop()
    assert time.monotonic() - started < 30  # not the 900 s of retries a transient error gets
    errors = uploader.errors()
    assert len(errors) == 2 and all("AccessDenied" in e for e in errors), errors
    assert sum("AccessDenied" in m for m in records.messages(logging.ERROR)) == 1  # logged once per code


def test_an_endpoint_that_refuses_crt_multipart_gets_single_crt_puts(
    tmp_path: Path, s3_server: S3Server
) -> None:
    # rclone serve s3 names its CreateMultipartUpload answer <InitiateMultipartUpload>.
    proxy = S3Proxy(s3_server.port)
    proxy.rewrite = lambda request, body: body.replace(
        b"InitiateMultipartUploadResult", b"InitiateMultipartUpload"
    )
    bucket = s3_server.new_bucket()
    big = {"big-1.bin": MULTIPART_THRESHOLD + 4 * MiB, "big-2.bin": MULTIPART_THRESHOLD + 2 * MiB}  # in parts
    files = {**{rel: os.urandom(size) for rel, size in big.items()}, "small.txt": b"small"}
    write_tree(tmp_path, files)
    engine = engine_for(proxy.endpoint, "auto")
    routes = []
    try:
        with captured("smtk.s3") as records:
            for rel, data in files.items():
                transfer = engine.upload(str(tmp_path / rel), bucket, rel, size=len(data))
                try:
                    engine.wait(transfer)
                except Exception as exc:
                    assert engine.fall_back(transfer, exc), exc
                    assert transfer.kind == "crt" and not transfer.whole
                    transfer = engine.upload(str(tmp_path / rel), bucket, rel, size=len(data))
                    engine.wait(transfer)
                routes.append((rel, transfer.kind, transfer.whole))
    finally:
        engine.close()
        proxy.stop()
    assert s3_server.objects(bucket) == files
    assert routes == [("big-1.bin", "crt", True), ("big-2.bin", "crt", True), ("small.txt", "crt", False)]
    warnings = records.messages(logging.WARNING)
    assert len(warnings) == 1 and "AWS_ERROR_S3_MISSING_UPLOAD_ID" in warnings[0], warnings
    assert "uploads in parts go through single PUTs on the CRT client" in warnings[0]
    # Every body went through the CRT client (a streamed body with a checksum trailer;
    # botocore over plain HTTP signs a SHA-256 of the body), none in parts.
    puts = proxy.seen("PUT")
    assert {r.key for r in puts} == set(files)
    assert all(r.headers.get("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER" for r in puts)
    assert not [r for r in puts if "partNumber" in r.query]


def test_a_refused_single_put_leaves_the_classic_client(s3_server: S3Server, s3_env: dict[str, str]) -> None:
    from awscrt.exceptions import AwsCrtError

    from smtk.s3.engine import Transfer

    engine = engine_for(s3_server.endpoint, "auto")
    try:
        assert engine.kind == "crt"
        refused = AwsCrtError(0, "AWS_ERROR_S3_MISSING_UPLOAD_ID", "no upload id")
        for whole, then in ((False, (True, "crt")), (True, (False, "classic"))):
            tried = Transfer("s3://b/k", "upload", 64 * MiB, "crt", None, None, whole)
            assert engine.fall_back(tried, refused)
            kind, now_whole, _ = engine._manager("upload", 64 * MiB)
            assert (now_whole, kind) == then
        # Above S3's limit for one PUT, the classic client's parts are the only route.
        assert engine._manager("upload", 6 * 1024**3)[0] == "classic"
        assert engine._manager("upload", 100)[0] == "crt"  # small files were never refused
    finally:
        engine.close()


# -- choosing the client --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "no_proxy", "bypassed"),
    [
        ("127.0.0.1", "", False),
        ("127.0.0.1", "*", True),
        ("127.0.0.1", "localhost,127.0.0.1", True),
        ("127.0.0.1", "127.0.0.0/8", True),
        ("10.1.2.3", "127.0.0.0/8", False),
        ("s3.us-east-1.amazonaws.com", ".amazonaws.com", True),
        ("s3.us-east-1.amazonaws.com", "amazonaws.com", True),
        ("s3.us-east-1.amazonaws.com", "notamazonaws.com", False),
        ("minio.internal", "minio.internal:9000", True),
        ("minio.internal", " other , minio.internal ", True),
    ],
)
def test_no_proxy_rules(host: str, no_proxy: str, bypassed: bool) -> None:
    assert _bypassed(host, no_proxy) is bypassed


def test_a_proxy_for_the_endpoint_means_the_classic_client(s3_server: S3Server) -> None:
    endpoint = s3_server.endpoint
    assert _proxy_for(endpoint, {"HTTP_PROXY": "http://proxy:3128"}) == "http://proxy:3128"
    assert _proxy_for(endpoint, {"https_proxy": "http://proxy:3128"}) == ""  # http endpoint
    assert _proxy_for(endpoint, {"ALL_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1"}) == ""
    proxied = Engine(
        {**os.environ, "S3_ENDPOINT_URL": endpoint, "HTTP_PROXY": "http://proxy:3128"}, S3Settings()
    )
    assert proxied.kind == "classic"
    bypassing = Engine(
        {
            **os.environ,
            "S3_ENDPOINT_URL": endpoint,
            "HTTP_PROXY": "http://proxy:3128",
            "NO_PROXY": "127.0.0.1",
        },
        S3Settings(),
    )
    assert bypassing.kind == "crt"


def test_without_credentials_the_classic_client_names_the_problem(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it cached the credentials of earlier tests
    (tmp_path / "f.txt").write_bytes(b"x")
    engine = engine_for(s3_server.endpoint, "auto")
    assert engine.kind == "classic"
    transfer = engine.upload(str(tmp_path / "f.txt"), "bucket", "f.txt", size=1)
    with pytest.raises(Exception, match="Unable to locate credentials"):
        engine.wait(transfer)


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


@pytest.mark.parametrize("client", CLIENTS)
def test_https_with_aws_ca_bundle(
    tmp_path: Path,
    s3_server: S3Server,
    tls_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    client: str,
) -> None:
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    secure = S3Proxy(s3_server.port, tls=context)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    bucket = s3_server.new_bucket()
    files = {"a.txt": b"over TLS", "b/c.bin": os.urandom(PART_SIZE + MiB)}  # in parts
    write_tree(tmp_path / "up", files)
    engine = engine_for(secure.endpoint, client)
    try:
        assert engine.kind == client
        for rel, data in files.items():
            engine.wait(engine.upload(str(tmp_path / "up" / rel), bucket, rel, size=len(data)))
        engine.wait(engine.download(bucket, "b/c.bin", str(tmp_path / "c.bin"), size=PART_SIZE + MiB))
    finally:
        engine.close()
        secure.stop()
    assert s3_server.objects(bucket) == files
    assert (tmp_path / "c.bin").read_bytes() == files["b/c.bin"]
    assert secure.seen("PUT")


# -- stopping and progress ------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_cancelling_ends_a_slow_upload_at_once(tmp_path: Path, s3_server: S3Server, client: str) -> None:
    bucket = s3_server.new_bucket()
    (tmp_path / "big.bin").write_bytes(os.urandom(24 * MiB))
    cancelled = threading.Event()
    with SlowProxy(s3_server.port, bytes_per_second=500_000) as proxy:
        engine = engine_for(proxy.endpoint, client)
        transfer = engine.upload(str(tmp_path / "big.bin"), bucket, "big.bin", size=24 * MiB)
        threading.Timer(0.5, cancelled.set).start()
        started = time.monotonic()
        with pytest.raises(Aborted):
            engine.wait(transfer, cancelled)
        assert time.monotonic() - started < 5
        engine.close(cancel=True, wait=False)
    assert "big.bin" not in s3_server.objects(bucket)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_stop_ends_a_prefix_download_leaving_only_whole_files(
    tmp_path: Path, s3_server: S3Server, client: str
) -> None:
    bucket = s3_server.new_bucket()
    objects = {f"data/part-{i:02d}.bin": os.urandom(3 * MiB) for i in range(8)}
    s3 = s3_server.client()
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    stop = Stop()
    target = tmp_path / "target"
    with SlowProxy(s3_server.port, bytes_per_second=1_000_000) as proxy:
        environ = {**os.environ, "S3_ENDPOINT_URL": proxy.endpoint}
        threading.Timer(1.0, stop.request).start()
        started = time.monotonic()
        result = download_prefix(
            f"s3://{bucket}/data",
            str(target),
            environ,
            settings=S3Settings(client=client),
            stop=stop,  # type: ignore[arg-type]
        )
        assert time.monotonic() - started < 6
    assert result.stopped and result.files < len(objects)
    time.sleep(1.0)  # anything the client still had in hand is cancelled by now
    for path in target.rglob("*"):
        if path.is_file() and path.name.startswith("part-") and path.suffix == ".bin":
            assert path.read_bytes() == objects[f"data/{path.name}"], f"{path} is not whole"


@pytest.mark.parametrize("client", CLIENTS)
def test_prefix_download_counts_failures_and_keeps_the_rest(
    tmp_path: Path, s3_server: S3Server, client: str
) -> None:
    bucket = s3_server.new_bucket()
    objects = {f"train/{i:03d}.rec": f"record {i}".encode() * (i + 1) for i in range(120)}
    objects["train/sub/dir/large.bin"] = os.urandom(PART_SIZE + 2 * MiB)  # in parts
    objects["train/exact"] = b"a key that is also a prefix of nothing"
    s3 = s3_server.client()
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    proxy = S3Proxy(s3_server.port)
    proxy.fault = lambda request: (
        (403, "AccessDenied") if request.key == "train/007.rec" and request.method == "GET" else None
    )
    try:
        environ = {**os.environ, "S3_ENDPOINT_URL": proxy.endpoint}
        result = download_prefix(
            f"s3://{bucket}/train/",
            str(tmp_path / "t"),
            environ,
            settings=S3Settings(client=client, concurrency=8),  # type: ignore[arg-type]
        )
    finally:
        proxy.stop()
    assert (result.files, result.failed) == (len(objects) - 1, 1)
    assert result.errors[0].startswith(f"s3://{bucket}/train/007.rec: AccessDenied"), result.errors
    expected = {key[len("train/") :]: data for key, data in objects.items() if key != "train/007.rec"}
    assert read_tree(tmp_path / "t") == expected


def test_download_many_keeps_at_most_concurrency_in_flight(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    for i in range(40):
        s3.put_object(Bucket=bucket, Key=f"k/{i}", Body=b"x" * 100)
    engine = engine_for(s3_server.endpoint, "crt")
    original = engine.download
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def counting(*args, on_done=None, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal in_flight, most

        def done(transfer):  # type: ignore[no-untyped-def]
            nonlocal in_flight
            with lock:
                in_flight -= 1
            on_done(transfer)

        with lock:
            in_flight += 1
            most = max(most, in_flight)
        return original(*args, on_done=done, **kwargs)

    engine.download = counting  # type: ignore[method-assign]
    wanted = (Wanted(f"k/{i}", str(tmp_path / str(i)), 100) for i in range(40))
    result = download_many(engine, bucket, wanted, concurrency=3, policy=RetryPolicy())
    engine.close()
    assert result.files == 40 and 1 <= most <= 3


def test_a_slow_prefix_download_logs_progress(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    s3 = s3_server.client()
    for i in range(6):
        s3.put_object(Bucket=bucket, Key=f"d/{i}.bin", Body=os.urandom(MiB))
    with SlowProxy(s3_server.port, bytes_per_second=1_500_000) as proxy, captured("smtk.s3") as records:
        environ = {**os.environ, "S3_ENDPOINT_URL": proxy.endpoint}
        result = download_prefix(
            f"s3://{bucket}/d",
            str(tmp_path / "d"),
            environ,
            settings=S3Settings(progress_seconds=0.3),
            label="channel 'train'",
        )
    assert result.files == 6
    lines = [m for m in records.messages(logging.INFO) if m.startswith("channel 'train': ")]
    assert len(lines) >= 2, records.messages()
    assert any(" of 6 files" in line for line in lines), lines
