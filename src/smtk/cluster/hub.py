"""This host's status port: one thread, one selector, every connection.

Every host of a multi-host job listens on ``SMTK_STATUS_PORT``. A connection says what
it is in its first line (:mod:`smtk.cluster.wire`)::

    {"hello": "algo-7"}     a member's kept connection (the master's hub only): its later
                            lines are messages, and its end is that member's loss
    {"report": <Failure>}   a rank wrapper's one-line report of a failed rank
    (nothing)               a readiness probe: closed when it closes

One thread serves them all with a selector and non-blocking sockets, so the master's cost
grows with the number of members only in what each member needs (one socket, a read
buffer, a write buffer), never in threads. Sends from other threads are queued under a
lock and the loop is woken through a socket pair; the loop writes what the kernel takes
and keeps the rest for the next writable event. A connection that has not said who it is
within :data:`HELLO_TIMEOUT` seconds, or sends a line longer than
:data:`~smtk.cluster.wire.MAX_MESSAGE`, is closed.

The hub only moves messages: what they mean is the :class:`HubEvents` of the session
(called on the hub's thread, never while it holds its own lock).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from smtk.cluster import wire
from smtk.errors import ClusterError
from smtk.failure import Failure

logger = logging.getLogger("smtk")

#: Seconds a new connection may take to say who it is.
HELLO_TIMEOUT = 10.0
#: TCP keepalive on members' connections: idle seconds, interval, probes (a vanished host
#: is noticed in about 15 s).
KEEPALIVE = (5, 2, 5)
#: Bytes read from a socket at a time.
_READ = 65536


class HubEvents(Protocol):
    """What the hub tells its owner (all called on the hub's thread)."""

    def on_member(self, member: str) -> None:
        """``member`` connected and said hello (again, after a reconnect)."""

    def on_message(self, member: str, message: dict[str, Any]) -> None:
        """``member`` sent ``message``."""

    def on_member_lost(self, member: str, reason: str) -> None:
        """``member``'s connection ended (``reason``: how)."""

    def on_report(self, record: Failure) -> None:
        """A rank wrapper reported a failed rank to this host."""


class _Connection:
    __slots__ = ("accepted", "buffer", "member", "out", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.accepted = time.monotonic()
        self.buffer = wire.LineBuffer()
        self.out = bytearray()
        self.member: str | None = None


def keepalive(sock: socket.socket) -> None:
    """Turn on TCP keepalive with :data:`KEEPALIVE`'s timing."""
    idle, interval, count = KEEPALIVE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Hub:
    """Listens on ``(address, port)``; serves ``members`` (empty except on the master)."""

    def __init__(
        self, host: str, address: str, port: int, members: Collection[str], events: HubEvents
    ) -> None:
        self.host = host
        self.port = port
        self._members = frozenset(members)
        self._events = events
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._connections: dict[socket.socket, _Connection] = {}
        self._by_member: dict[str, _Connection] = {}
        self._closed = False
        self._listener = self._listen(address, port)
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, name="smtk-status", daemon=True)
        self._thread.start()

    def _listen(self, address: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            raise ClusterError(
                f"{self.host}: cannot listen on the status port {port}: {exc.strerror or exc}",
                hint="another process uses it; choose another with SMTK_STATUS_PORT (the same on every host)",
            ) from exc
        sock.setblocking(False)
        return sock

    # -- what other threads call ----------------------------------------------------------------

    def send(self, member: str, message: Mapping[str, object]) -> bool:
        """Queue ``message`` for ``member``; ``False`` when it is not connected."""
        data = wire.encode(message)
        with self._lock:
            conn = self._by_member.get(member)
            if conn is None or self._closed:
                return False
            conn.out.extend(data)
        self._wake()
        return True

    def broadcast(self, message: Mapping[str, object], exclude: Collection[str] = ()) -> list[str]:
        """Queue ``message`` for every connected member but ``exclude``; the members it went to."""
        data = wire.encode(message)
        sent: list[str] = []
        with self._lock:
            if self._closed:
                return sent
            for member, conn in self._by_member.items():
                if member not in exclude:
                    conn.out.extend(data)
                    sent.append(member)
        if sent:
            self._wake()
        return sent

    def connected(self) -> set[str]:
        with self._lock:
            return set(self._by_member)

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was written (or ``timeout``); whether it was."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while any(conn.out for conn in self._connections.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._drained.wait(left)
        return True

    def close(self, flush: float = 2.0) -> None:
        """Write what is queued (up to ``flush`` seconds), half-close, then close everything
        (once: a second call does nothing)."""
        with self._lock:
            if self._closed:
                return
        self.flush(flush)
        with self._lock:
            self._closed = True
        self._wake()
        self._thread.join(5.0)
        for conn in list(self._connections.values()):
            # Half-close first, so a peer reads what we sent before it sees the end.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                conn.sock.close()
        for sock in (self._listener, self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(OSError, ValueError):
            self._selector.close()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_write.send(b"w")

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    writers = [c for c in self._connections.values() if c.out]
                for conn in writers:
                    self._want_write(conn, True)
                for key, mask in self._selector.select(timeout=1.0):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_read:
                        with contextlib.suppress(BlockingIOError, OSError):
                            self._wake_read.recv(4096)
                    else:
                        conn = self._connections.get(sock)  # type: ignore[call-overload]
                        if conn is None:
                            continue
                        if mask & selectors.EVENT_WRITE:
                            self._write(conn)
                        if mask & selectors.EVENT_READ and conn.sock in self._connections:
                            self._read(conn)
                self._expire()
        except Exception:  # the channel must not die silently: say so, then stop serving
            logger.exception("the status channel's loop failed")

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("status port: cannot accept more connections: %s", exc.strerror)
                return
            sock.setblocking(False)
            conn = _Connection(sock, f"{address[0]}:{address[1]}")
            with self._lock:
                self._connections[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ)

    def _want_write(self, conn: _Connection, wanted: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
        with contextlib.suppress(KeyError, ValueError):
            if self._selector.get_key(conn.sock).events != events:
                self._selector.modify(conn.sock, events)

    def _write(self, conn: _Connection) -> None:
        with self._lock:
            pending = bytes(conn.out)
        if not pending:
            self._want_write(conn, False)
            return
        try:
            sent = conn.sock.send(pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, f"connection error: {exc.strerror or exc}")
            return
        with self._drained:
            del conn.out[:sent]
            if not conn.out:
                self._drained.notify_all()
                self._want_write(conn, False)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, f"connection error: {exc.strerror or exc}")
            return
        if not data:
            self._drop(conn, "its connection closed")
            return
        try:
            lines = conn.buffer.feed(data)
        except wire.LineTooLong:
            self._drop(conn, f"it sent a line longer than {wire.MAX_MESSAGE} bytes")
            return
        for line in lines:
            message = wire.decode(line)
            if conn.member is not None:
                self._events.on_message(conn.member, message)
            elif not self._first(conn, message):
                return

    def _first(self, conn: _Connection, message: dict[str, Any]) -> bool:
        """Handle a connection's first line; ``False`` when the connection is done."""
        member = message.get("hello")
        if isinstance(member, str) and member in self._members:
            with self._lock:
                old = self._by_member.get(member)
                conn.member = member
                self._by_member[member] = conn
            if old is not None:
                self._forget(old)  # a reconnect: the new connection takes over, quietly
            with contextlib.suppress(OSError):
                keepalive(conn.sock)
            self._events.on_member(member)
            return True
        record = Failure.from_json(message.get("report"))
        if record is not None:
            self._events.on_report(record)
        self._forget(conn)  # a report, a probe or a stranger
        return False

    def _drop(self, conn: _Connection, reason: str) -> None:
        member = conn.member
        with self._lock:
            current = member is not None and self._by_member.get(member) is conn
            if current:
                del self._by_member[member]  # type: ignore[arg-type]
            closing = self._closed
        self._forget(conn)
        if current and member is not None and not closing:
            self._events.on_member_lost(member, reason)

    def _forget(self, conn: _Connection) -> None:
        with self._drained:
            self._connections.pop(conn.sock, None)
            conn.out.clear()
            self._drained.notify_all()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _expire(self) -> None:
        limit = time.monotonic() - HELLO_TIMEOUT
        with self._lock:
            silent = [c for c in self._connections.values() if c.member is None and c.accepted < limit]
        for conn in silent:
            self._forget(conn)
