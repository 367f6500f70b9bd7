"""A member's one connection to the master: connect with backoff, then messages both ways.

::

    link = MasterLink(host, master, settings, events)   # connects in a thread, forever
    link.send({"ready": host})                            # queued until connected, in order
    link.close()                                          # half-close after what was sent

Connecting retries with exponential backoff (20 ms, x1.5, up to 0.25 s) until it works or
the link is closed; the hello line and whatever was queued go first, in order. Once
connected, a thread reads the master's lines and hands each to
:meth:`LinkEvents.on_master_message`; a connection that ends is
:meth:`LinkEvents.on_master_lost` (unless the link was closed). TCP keepalive notices a
master host that vanished in about 15 s.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from smtk.cluster import wire
from smtk.cluster.hub import keepalive
from smtk.cluster.probe import BACKOFF, Peer, connect
from smtk.settings import Settings


class LinkEvents(Protocol):
    """What the link tells its owner (called on the link's thread)."""

    def on_link_changed(self) -> None:
        """The link connected, or another attempt failed (see :meth:`MasterLink.status`)."""

    def on_master_message(self, message: dict[str, Any]) -> None:
        """The master sent ``message``."""

    def on_master_lost(self, reason: str) -> None:
        """The connection to the master ended (``reason``: how)."""


class MasterLink:
    """This member's connection to the master's status port."""

    def __init__(self, host: str, master: str, settings: Settings, events: LinkEvents) -> None:
        self.host = host
        self.master = master
        self._peer = Peer(master, settings.status_port, "smtk status")
        self._settings = settings
        self._events = events
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._outbox: list[dict[str, object]] = []
        self._closed = threading.Event()
        self.attempts = 0
        self.problem = "not tried yet"
        #: Whether the link was ever up (what was queued before then has been sent).
        self.ever_connected = False
        threading.Thread(target=self._run, name="smtk-status-master", daemon=True).start()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def send(self, message: Mapping[str, object]) -> None:
        """Send ``message`` now, or as soon as the link is up (in order)."""
        with self._lock:
            if self._sock is None:
                self._outbox.append(dict(message))
                return
            with contextlib.suppress(OSError):
                self._sock.sendall(wire.encode(message))

    def close(self) -> None:
        """Stop connecting; half-close after what was sent, then close."""
        self._closed.set()
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        delay, factor, cap = BACKOFF
        while True:
            sock, problem = connect(self._peer, self._settings)
            if sock is not None:
                break
            self.attempts += 1
            self.problem = problem or "not reachable"
            self._events.on_link_changed()
            if self._closed.wait(delay):
                return
            delay = min(delay * factor, cap)
        sock.settimeout(None)
        with contextlib.suppress(OSError):
            keepalive(sock)
        with self._lock:  # the hello and anything queued go first, in order
            if self._closed.is_set():
                sock.close()
                return
            pending = [wire.hello(self.host), *self._outbox]
            self._outbox.clear()
            with contextlib.suppress(OSError):
                for message in pending:
                    sock.sendall(wire.encode(message))
            self._sock = sock
            self.ever_connected = True
        self._events.on_link_changed()
        self._read(sock)

    def _read(self, sock: socket.socket) -> None:
        reason = "its connection closed"
        buffer = wire.LineBuffer()
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                for line in buffer.feed(data):
                    self._events.on_master_message(wire.decode(line))
        except wire.LineTooLong:
            reason = f"it sent a line longer than {wire.MAX_MESSAGE} bytes"
        except OSError as exc:
            reason = f"connection error: {exc.strerror or exc}"
        with self._lock:
            current = self._sock is sock
            self._sock = None
        with contextlib.suppress(OSError):
            sock.close()
        if current and not self._closed.is_set():
            self._events.on_master_lost(reason)
