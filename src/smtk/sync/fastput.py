"""A lean SigV4-signed ``PutObject`` for small files, beside botocore.

A small ``put_object`` through botocore costs ~2 ms of CPU (event hooks, endpoint
rules, user agent, signing, response parsing), and the upload threads share one
interpreter lock: on a burst of small files that CPU, not the network, sets the pace.
:class:`FastPut` sends the same request with :mod:`hashlib`, :mod:`hmac` and
:mod:`http.client` on one persistent connection per upload thread, for ~0.25 ms.

It never guesses what S3 expects; botocore stays the reference:

- **The route** (scheme, host, path-style or virtual-hosted, signing region, checksum
  algorithm) is learned per bucket from a real botocore ``PutObject``, observed through
  the client's public ``before-send`` event (:meth:`FastPut.observe`). It is trusted
  only when this module, signing that very request with the client's credentials,
  reproduces botocore's URL, payload hashes and signature exactly, so a key encoding
  or signing difference can never reach S3.
- **Credentials** are the client's own credentials object (the boto3 chain), frozen
  for every request, so a refresh botocore makes is picked up at once; a session
  token is sent as ``x-amz-security-token``.
- **What is sent**: ``Content-MD5`` (S3 refuses a body that does not match it),
  ``x-amz-content-sha256`` (the signed payload hash), and the CRC32 checksum botocore
  sends by default, so the stored object is the same as botocore would store.
- **Where it is not used**: a proxy configured (``HTTP(S)_PROXY``, ``ALL_PROXY`` or the
  client's ``proxies``), a client certificate, ``verify=False``, a signature other
  than SigV4 for ``s3``, a request carrying headers it does not reproduce, a checksum
  algorithm other than CRC32, or a URL with a query string.
- **Failures**: :meth:`FastPut.put` never raises. Any exception, timeout or status
  other than 200 returns ``False`` and the caller sends that object with botocore (its
  retries, redirects and error reports unchanged). After
  :data:`MAX_CONSECUTIVE_FAILURES` failures in a row the fast path switches itself off
  for the rest of the run and says so once. Nothing here logs credentials,
  signatures or request headers.

Importing this module imports neither boto3 nor botocore (it only ever works on a client
that exists already).

::

    fast = FastPut.create(client, os.environ)     # None: not applicable (proxy, ...)
    if fast is None or not fast.put(bucket, key, body):
        with fast.observe(bucket, key, body) if fast else contextlib.nullcontext():
            client.put_object(Bucket=bucket, Key=key, Body=body)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import logging
import os
import re
import ssl
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

log = logging.getLogger("smtk.sync")

#: Failures in a row after which the fast path stays off for the rest of the run.
MAX_CONSECUTIVE_FAILURES = 5
#: Botocore requests per bucket whose route may fail to verify before the bucket is left to botocore.
MAX_LEARNING_ATTEMPTS = 3
#: Appended to the user agent of every request sent by this module (seen in server logs).
USER_AGENT_MARKER = "smtk-fastput"

_ALGORITHM = "AWS4-HMAC-SHA256"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s]+)/(?P<day>\d{8})/(?P<region>[^/\s]+)/(?P<service>[^/\s]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;_.-]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSIGNED_PAYLOADS = frozenset({"UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"})
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")

#: Headers of botocore's ``PutObject`` this module reproduces (or may leave out: telemetry,
#: transfer framing). A request with any other header is not reproduced, e.g. an ACL,
#: server-side encryption or metadata a user's event hook added.
_KNOWN_HEADERS = frozenset(
    {
        "authorization",
        "content-encoding",  # only "aws-chunked" (the framing of a streamed checksum)
        "content-length",
        "content-md5",
        "expect",
        "host",
        "transfer-encoding",
        "user-agent",
        "x-amz-checksum-crc32",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-decoded-content-length",
        "x-amz-sdk-checksum-algorithm",
        "x-amz-security-token",
        "x-amz-trailer",
        "x-amzn-trace-id",
    }
)


def encode_key(key: str) -> str:
    """The object key as it appears in the URL path and in SigV4's canonical URI for S3.

    Every byte of the UTF-8 encoding except ``A-Z a-z 0-9 - _ . ~`` and ``/`` is
    percent-encoded, once (S3 signs the path as sent, without normalising it).
    """
    return quote(key, safe="/~")


def host_header(scheme: str, hostname: str, port: int | None) -> str:
    """The ``Host`` value botocore signs: lower case, IPv6 in brackets, no default port."""
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    return host


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, day: str, region: str, service: str = "s3") -> bytes:
    """SigV4's derived key for one day, region and service."""
    k_date = _hmac(f"AWS4{secret_key}".encode(), day)
    return _hmac(_hmac(_hmac(k_date, region), service), "aws4_request")


def sign(
    key: bytes,
    *,
    amz_date: str,
    scope: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    payload_hash: str,
) -> tuple[str, str]:
    """``(signed header names, signature)`` of a request without a query string.

    ``headers`` maps lower-case names to values; all of them are signed. ``path`` is the
    request path exactly as sent (already percent-encoded).
    """
    names = sorted(headers)
    canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in names)
    signed = ";".join(names)
    canonical = f"{method}\n{path}\n\n{canonical_headers}\n{signed}\n{payload_hash}"
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    string_to_sign = f"{_ALGORITHM}\n{amz_date}\n{scope}\n{digest}"
    return signed, hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def crc32_header(body: bytes) -> str:
    """``x-amz-checksum-crc32``: the big-endian CRC32 of the body, base64."""
    return base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode("ascii")


def md5_header(body: bytes) -> str:
    """``Content-MD5``: the MD5 of the body, base64."""
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


def _proxy_configured(client: Any, environ: Mapping[str, str]) -> bool:
    if getattr(client.meta.config, "proxies", None):
        return True
    for source in (os.environ, environ):
        for name, value in source.items():
            if name.lower() in _PROXY_VARIABLES and value.strip():
                return True
    return False


@dataclass(frozen=True)
class Route:
    """How ``PutObject`` requests for one bucket are addressed and signed."""

    scheme: str
    hostname: str
    port: int
    host: str  # the Host header (and what is signed)
    prefix: str  # the path before "/<encoded key>": "/bucket" (path style) or "" (virtual host)
    region: str
    crc32: bool  # send x-amz-checksum-crc32, as botocore does by default
    user_agent: str


@dataclass
class _Observed:
    url: str
    headers: dict[str, str]


class RouteRefused(Exception):
    """botocore's request was not reproduced exactly; the message says why (no secrets)."""


class FastPut:
    """Lean ``PutObject`` for one boto3 S3 client; see the module documentation."""

    def __init__(self, client: Any, credentials: Any, *, verify: bool | str | None, timeout: float) -> None:
        self._client = client
        self._credentials = credentials
        self._verify = verify
        self._timeout = timeout
        self._routes: dict[str, Route] = {}
        self._learning: set[str] = set()
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._generation = 0  # bumped by close(): threads then drop the connections they hold
        self._ssl_context: Any = None
        self._key_cache: tuple[tuple[str, str, str], bytes] | None = None
        self._failures = 0
        self._enabled = True
        #: Objects stored by this path / objects it handed back to botocore after trying.
        self.sent = 0
        self.fell_back = 0
        client.meta.events.register(
            "before-send.s3.PutObject", self._on_before_send, unique_id=f"smtk-fastput-{id(self)}"
        )

    @classmethod
    def create(cls, client: Any, environ: Mapping[str, str]) -> FastPut | None:
        """A :class:`FastPut` for ``client``, or ``None`` where it must not be used."""
        reason = cls._unusable(client, environ)
        if reason:
            log.debug("small files go through botocore only: %s", reason)
            return None
        config = client.meta.config
        credentials = cls._credentials_of(client)
        verify = cls._verify_of(client)
        timeout = float(max(config.connect_timeout or 60, config.read_timeout or 60))
        return cls(client, credentials, verify=verify, timeout=timeout)

    @staticmethod
    def _unusable(client: Any, environ: Mapping[str, str]) -> str:
        config = client.meta.config
        if _proxy_configured(client, environ):
            return "a proxy is configured"
        if getattr(config, "client_cert", None):
            return "a client certificate is configured"
        if getattr(config, "signature_version", None) not in (None, "s3v4", "v4"):
            return "the client does not use SigV4"
        if FastPut._credentials_of(client) is None:
            return "the client has no credentials"
        return ""

    @staticmethod
    def _credentials_of(client: Any) -> Any:
        # The credentials object botocore signs with (refreshable ones refresh themselves).
        # botocore exposes it only privately; every route is checked against a signature
        # botocore made with it, so a change here can only switch the fast path off.
        return getattr(getattr(client, "_request_signer", None), "_credentials", None)

    @staticmethod
    def _verify_of(client: Any) -> bool | str | None:
        # botocore's resolved TLS verification: True, False, or a CA bundle path
        # (AWS_CA_BUNDLE, the profile's ca_bundle, REQUESTS_CA_BUNDLE). None: unknown,
        # and then https is left to botocore.
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        verify = getattr(session, "_verify", None)
        return verify if isinstance(verify, (bool, str)) else None

    # -- state --------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False once it switched itself off after repeated failures."""
        return self._enabled

    def route(self, bucket: str) -> Route | None:
        """The verified route for ``bucket``, if one was learned."""
        return self._routes.get(bucket)

    def close(self) -> None:
        """Close every connection of every thread (a later :meth:`put` opens a new one)."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._generation += 1
        for connection in connections:
            with suppress(Exception):  # closing is best effort
                connection.close()

    # -- learning the route from botocore ------------------------------------------------------

    @contextmanager
    def observe(self, bucket: str, key: str, body: bytes) -> Iterator[None]:
        """Wrap a botocore ``put_object(bucket, key, body)`` made in this thread to learn its route.

        Does nothing when the route is known, another thread is learning it, or the
        bucket has used up its attempts. When the wrapped call returns, the last request
        botocore sent is checked (see :meth:`_verify_route`) and, if exact, its route is
        used for every later object of that bucket.
        """
        with self._lock:
            wanted = (
                self._enabled
                and bucket not in self._routes
                and bucket not in self._learning
                and self._attempts.get(bucket, 0) < MAX_LEARNING_ATTEMPTS
            )
            if wanted:
                self._learning.add(bucket)
        if not wanted:
            yield
            return
        seen: list[_Observed] = []
        self._local.observed = seen
        succeeded = False
        try:
            yield
            succeeded = True
        finally:
            self._local.observed = None
            route: Route | None = None
            reason = "botocore's request was not seen"
            if succeeded and seen:
                try:
                    route = self._verify_route(bucket, key, body, seen[-1])
                except RouteRefused as exc:
                    reason = str(exc)
                except Exception as exc:  # a surprise in the check: leave the bucket to botocore
                    reason = f"{type(exc).__name__} while checking it"
            del seen[:]
            with self._lock:
                self._learning.discard(bucket)
                if route is not None:
                    self._routes[bucket] = route
                elif succeeded:
                    attempts = self._attempts[bucket] = self._attempts.get(bucket, 0) + 1
                    if attempts >= MAX_LEARNING_ATTEMPTS:
                        log.info("small files to s3://%s go through botocore: %s", bucket, reason)
                    else:
                        log.debug("fast PUT route for s3://%s not learned yet: %s", bucket, reason)
            if route is not None:
                log.debug(
                    "small files to s3://%s use the fast PUT path (%s://%s, %s-style, region %s)",
                    bucket,
                    route.scheme,
                    route.host,
                    "path" if route.prefix else "virtual-host",
                    route.region,
                )

    def _on_before_send(self, request: Any = None, **_: Any) -> None:
        # Runs in the thread that called put_object, for every PutObject of this client:
        # keep it cheap, and return None (a value would replace botocore's response).
        seen = getattr(self._local, "observed", None)
        if seen is None or request is None:
            return
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            lower = name.lower()
            headers[lower] = f"{headers[lower]},{text}" if lower in headers else text
        seen.append(_Observed(str(request.url), headers))

    def _verify_route(self, bucket: str, key: str, body: bytes, observed: _Observed) -> Route:
        """The route of ``observed`` if this module reproduces it exactly, else :class:`RouteRefused`."""
        headers = observed.headers
        url = urlsplit(observed.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise RouteRefused(f"unexpected URL scheme {url.scheme!r}")
        if url.query or url.fragment or url.username or url.password:
            raise RouteRefused("the URL has a query string or user information")
        if url.scheme == "https" and self._verify is not True and not isinstance(self._verify, str):
            raise RouteRefused("TLS verification is off or unknown")
        unknown = sorted(n for n in headers if n not in _KNOWN_HEADERS and not n.startswith("amz-sdk-"))
        if unknown:
            raise RouteRefused(f"botocore's request carries headers not reproduced: {', '.join(unknown)}")
        if headers.get("content-encoding", "aws-chunked").strip().lower() != "aws-chunked":
            raise RouteRefused("botocore's request has a content encoding")

        # Checksums: the same ones, with the same values.
        algorithm = headers.get("x-amz-sdk-checksum-algorithm", "").strip().upper()
        trailer = headers.get("x-amz-trailer", "").strip().lower()
        if algorithm not in ("", "CRC32") or trailer not in ("", "x-amz-checksum-crc32"):
            raise RouteRefused(f"checksum algorithm {algorithm or trailer!r} is not reproduced")
        crc32 = algorithm == "CRC32" or bool(trailer) or "x-amz-checksum-crc32" in headers
        if "x-amz-checksum-crc32" in headers and headers["x-amz-checksum-crc32"] != crc32_header(body):
            raise RouteRefused("the CRC32 checksum differs from botocore's")
        if "content-md5" in headers and headers["content-md5"] != md5_header(body):
            raise RouteRefused("the Content-MD5 differs from botocore's")
        payload_hash = headers.get("x-amz-content-sha256", "")
        if _HEX_SHA256.fullmatch(payload_hash):
            if payload_hash != hashlib.sha256(body).hexdigest():
                raise RouteRefused("the payload hash differs from botocore's")
        elif payload_hash not in _UNSIGNED_PAYLOADS:
            raise RouteRefused("unexpected x-amz-content-sha256")

        # The URL: this module's encoding of the key must give exactly botocore's path.
        encoded = "/" + encode_key(key)
        if not url.path.endswith(encoded):
            raise RouteRefused("the key's encoding differs from botocore's")
        prefix = url.path[: -len(encoded)]
        hostname = url.hostname
        if prefix:
            if not prefix.endswith("/" + encode_key(bucket)):
                raise RouteRefused("the path does not name the bucket")
        elif not hostname.startswith(bucket.lower() + "."):
            raise RouteRefused("the host does not name the bucket")
        host = host_header(url.scheme, hostname, url.port)

        # The signature: re-sign botocore's request with the same credentials and compare.
        match = _AUTHORIZATION.fullmatch(headers.get("authorization", "").strip())
        if match is None:
            raise RouteRefused("botocore's request is not signed with SigV4")
        if match["service"] != "s3":
            raise RouteRefused(f"signing service {match['service']!r} is not reproduced")
        amz_date = headers.get("x-amz-date", "")
        if not amz_date.startswith(match["day"]):
            raise RouteRefused("the signature's date differs from x-amz-date")
        frozen = self._credentials.get_frozen_credentials()
        if match["key"] != frozen.access_key:
            raise RouteRefused("botocore signed with other credentials (refreshed meanwhile?)")
        if headers.get("x-amz-security-token") != (frozen.token or None):
            raise RouteRefused("botocore sent another session token (refreshed meanwhile?)")
        names = match["signed"].split(";")
        if "host" not in names or any(n != "host" and n not in headers for n in names):
            raise RouteRefused("botocore signed headers that were not seen")
        signed_values = {n: host if n == "host" else headers[n] for n in names}
        scope = f"{match['day']}/{match['region']}/s3/aws4_request"
        key_bytes = signing_key(frozen.secret_key, match["day"], match["region"])
        signed, signature = sign(
            key_bytes,
            amz_date=amz_date,
            scope=scope,
            method="PUT",
            path=url.path,
            headers=signed_values,
            payload_hash=payload_hash,
        )
        if signed != match["signed"] or not hmac.compare_digest(signature, match["signature"]):
            raise RouteRefused("this module's signature of botocore's request differs from botocore's")

        port = url.port or (443 if url.scheme == "https" else 80)
        agent = " ".join(headers.get("user-agent", "").split())
        return Route(
            scheme=url.scheme,
            hostname=hostname,
            port=port,
            host=host,
            prefix=prefix,
            region=match["region"],
            crc32=crc32,
            user_agent=f"{agent} {USER_AGENT_MARKER}".strip(),
        )

    # -- sending ---------------------------------------------------------------------------------

    def put(self, bucket: str, key: str, body: bytes) -> bool:
        """Store ``body`` as ``s3://bucket/key``; ``False``: not sent or failed, use botocore."""
        route = self._routes.get(bucket)
        if route is None or not self._enabled:
            return False
        try:
            status, code = self._send(route, key, body)
        except Exception as exc:
            self._failed(bucket, key, type(exc).__name__)
            return False
        if status != 200:
            self._failed(bucket, key, f"HTTP {status}{' ' + code if code else ''}")
            return False
        with self._lock:
            self._failures = 0
            self.sent += 1
        return True

    def _failed(self, bucket: str, key: str, what: str) -> None:
        with self._lock:
            self.fell_back += 1
            self._failures += 1
            switch_off = self._enabled and self._failures >= MAX_CONSECUTIVE_FAILURES
            if switch_off:
                self._enabled = False
        log.debug("fast PUT of s3://%s/%s failed (%s); sending it with botocore", bucket, key, what)
        if switch_off:
            log.info(
                "the fast PUT path for small files is switched off after %d failures in a row "
                "(last: %s); small files go through botocore from now on",
                MAX_CONSECUTIVE_FAILURES,
                what,
            )
            self.close()

    def _key_for(self, secret_key: str, day: str, region: str) -> bytes:
        cached = self._key_cache
        if cached is not None and cached[0] == (secret_key, day, region):
            return cached[1]
        key = signing_key(secret_key, day, region)
        self._key_cache = ((secret_key, day, region), key)
        return key

    def _send(self, route: Route, key: str, body: bytes) -> tuple[int, str]:
        """One signed PUT; ``(HTTP status, S3 error code or "")``. Raises on I/O errors."""
        frozen = self._credentials.get_frozen_credentials()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        path = f"{route.prefix}/{encode_key(key)}"
        payload_hash = hashlib.sha256(body).hexdigest()
        headers = {
            "content-md5": md5_header(body),
            "host": route.host,
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
        }
        if route.crc32:
            headers["x-amz-checksum-crc32"] = crc32_header(body)
            headers["x-amz-sdk-checksum-algorithm"] = "CRC32"
        if frozen.token:
            headers["x-amz-security-token"] = frozen.token
        scope = f"{day}/{route.region}/s3/aws4_request"
        signed, signature = sign(
            self._key_for(frozen.secret_key, day, route.region),
            amz_date=amz_date,
            scope=scope,
            method="PUT",
            path=path,
            headers=headers,
            payload_hash=payload_hash,
        )
        credential = f"{frozen.access_key}/{scope}"
        headers["authorization"] = (
            f"{_ALGORITHM} Credential={credential}, SignedHeaders={signed}, Signature={signature}"
        )
        headers["content-length"] = str(len(body))
        headers["user-agent"] = route.user_agent
        for attempt in (1, 2):
            connection, reused = self._connection(route)
            try:
                connection.request("PUT", path, body=body, headers=headers)
                response = connection.getresponse()
                content = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop(route, connection)
                # A kept-alive connection the server had already closed: PUT is idempotent,
                # so send it once more on a new connection. A new connection failing is real.
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                self._drop(route, connection)
                raise
            # A response with "Connection: close" closed the socket; the connection object
            # opens a new one for the next request.
            if response.status == 200:
                return 200, ""
            found = _ERROR_CODE.search(content[:4096])
            return response.status, found[1].decode("ascii", "replace") if found else ""
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self, route: Route) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection for ``route``, and whether it was used before."""
        connections: dict[tuple[str, str, int], http.client.HTTPConnection] | None = getattr(
            self._local, "connections", None
        )
        if connections is None or self._local.generation != self._generation:
            connections = self._local.connections = {}
            self._local.generation = self._generation
        ident = (route.scheme, route.hostname, route.port)
        connection = connections.get(ident)
        if connection is not None:
            return connection, connection.sock is not None
        if route.scheme == "https":
            connection = http.client.HTTPSConnection(
                route.hostname, route.port, timeout=self._timeout, context=self._tls_context()
            )
        else:
            connection = http.client.HTTPConnection(route.hostname, route.port, timeout=self._timeout)
        connections[ident] = connection
        with self._lock:
            self._connections.append(connection)
        return connection, False

    def _drop(self, route: Route, connection: http.client.HTTPConnection) -> None:
        connections = getattr(self._local, "connections", None)
        if connections is not None:
            connections.pop((route.scheme, route.hostname, route.port), None)
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
        connection.close()

    def _tls_context(self) -> Any:
        with self._lock:
            if self._ssl_context is None:
                verify = self._verify
                if isinstance(verify, str):
                    # A CA bundle file (AWS_CA_BUNDLE, ca_bundle) or a directory of certificates.
                    if os.path.isdir(verify):
                        context = ssl.create_default_context(capath=verify)
                    else:
                        context = ssl.create_default_context(cafile=verify)
                elif verify is True:
                    # botocore's default trust store: certifi's bundle when installed, else its own.
                    from botocore.httpsession import get_cert_path

                    context = ssl.create_default_context(cafile=get_cert_path(True))
                else:  # never reached: routes are refused for https without verification
                    raise RouteRefused("TLS verification is off or unknown")
                self._ssl_context = context
            return self._ssl_context
