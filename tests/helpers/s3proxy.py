"""An HTTP(S) proxy in front of the S3 test server: records requests, injects faults, rewrites answers.

It is the narrow seam for S3 client tests: moto (behind it) is a real S3-protocol
server, and the proxy makes it behave like the endpoints moto cannot imitate: one that
answers some requests with an error (``fault``), one whose answers differ from S3's in
a detail (``rewrite``, e.g. ``rclone serve s3``'s CreateMultipartUpload root element),
one served over TLS with its own certificate (``tls``). Keep-alive as S3 does.

::

    proxy = S3Proxy(server.port)
    proxy.fault = lambda request: (503, "SlowDown") if request.method == "PUT" else None
    env["S3_ENDPOINT_URL"] = proxy.endpoint
    ...
    proxy.requests            # every request seen: method, key, query, headers, status
    proxy.stop()
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    method: str
    bucket: str
    key: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0


class S3Proxy:
    def __init__(self, upstream_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.upstream_port = upstream_port
        #: (Request) -> (status, S3 error code) to answer instead of forwarding, or None.
        self.fault: Callable[[Request], tuple[int, str] | None] = lambda request: None
        #: (Request, upstream body) -> the body to answer with.
        self.rewrite: Callable[[Request, bytes], bytes] = lambda request, body: body
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def seen(self, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            sockets, self._sockets = set(self._sockets), set()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def setup(self) -> None:
        super().setup()
        proxy: S3Proxy = self.server.proxy
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
        proxy: S3Proxy = self.server.proxy
        body = self._body()
        url = urlsplit(self.path)
        parts = url.path.split("/", 2)
        request = Request(
            method=self.command,
            bucket=unquote(parts[1]) if len(parts) > 1 else "",
            key=unquote(parts[2]) if len(parts) > 2 else "",
            query=url.query,
            headers={name.lower(): value for name, value in self.headers.items()},
        )
        with proxy._lock:
            proxy.requests.append(request)
        answer = proxy.fault(request)
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
            status = response.status
            reply = proxy.rewrite(request, response.read())
            self._upstream_length = response.getheader("Content-Length", "0")
            reply_headers = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")
            ]
            upstream.close()
        request.status = status
        self.send_response(status)
        for name, value in reply_headers:
            self.send_header(name, value)
        length = self._upstream_length if self.command == "HEAD" and answer is None else str(len(reply))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay
