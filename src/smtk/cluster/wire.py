"""The status channel's wire format: one JSON object per line, at most :data:`MAX_MESSAGE` bytes.

Messages (every host listens on ``SMTK_STATUS_PORT``; members keep one connection to
the master)::

    {"hello": "algo-2"}                            member -> master, first line of its connection
    {"ready": "algo-2"}                            both ways: this host prepared and will launch
    {"failure": <Failure>}                         master -> members: a host failed; stop
    {"report": <Failure>}                          a rank's failure: rank wrapper -> its host
                                                   (one line, then close), member -> master,
                                                   master -> members (a root-cause candidate)
    {"done": {"host": h, "exit_status": n,         a host's outcome: member -> master, and the
              "failure": <Failure> | null}}        master's own -> members

:class:`LineBuffer` splits what a non-blocking socket delivers into lines; a line longer
than :data:`MAX_MESSAGE` ends the connection (a stranger or a broken peer must not make
a host buffer without bound). Anything that is not a JSON object decodes to ``{}``.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Mapping
from typing import Any

from smtk.failure import Failure
from smtk.settings import Settings

#: The longest line a host accepts.
MAX_MESSAGE = 1 << 20


def encode(message: Mapping[str, object]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> dict[str, Any]:
    """The message on ``line``; ``{}`` for anything that is not a JSON object."""
    try:
        message = json.loads(line) if line.strip() else {}
    except (ValueError, RecursionError):
        return {}
    return message if isinstance(message, dict) else {}


class LineTooLong(Exception):
    """A peer sent more than :data:`MAX_MESSAGE` bytes without a newline."""


class LineBuffer:
    """Splits a byte stream into lines, looking at each byte once."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines ``data`` finished; :class:`LineTooLong` past the bound."""
        start = len(self._buffer)
        self._buffer.extend(data)
        lines: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            lines.append(bytes(self._buffer[:end]))
            del self._buffer[: end + 1]
            start = 0
        if len(self._buffer) > MAX_MESSAGE:
            raise LineTooLong
        return lines


def hello(host: str) -> dict[str, object]:
    return {"hello": host}


def ready(host: str) -> dict[str, object]:
    return {"ready": host}


def failure(record: Failure) -> dict[str, object]:
    return {"failure": record.to_json()}


def report(record: Failure) -> dict[str, object]:
    return {"report": record.to_json()}


def outcome(host: str, exit_status: int, record: Failure | None) -> dict[str, object]:
    """What a ``done`` message carries (the master also keeps it for late members)."""
    return {"host": host, "exit_status": exit_status, "failure": record.to_json() if record else None}


def done(payload: Mapping[str, object]) -> dict[str, object]:
    return {"done": dict(payload)}


def done_of(message: Mapping[str, Any]) -> tuple[int, Failure | None] | None:
    """``(exit status, failure)`` of a ``done`` message, or ``None`` when it is not one."""
    data = message.get("done")
    if not isinstance(data, Mapping):
        return None
    status = data.get("exit_status", 1)
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status < 256:
        status = 1
    return status, Failure.from_json(data.get("failure"))


def send_report(record: Failure, host: str, settings: Settings, timeout: float = 1.0) -> bool:
    """Report a rank's failure to ``host``'s ``train`` (best effort: one line, then close)."""
    address = settings.host_addresses.get(host, "127.0.0.1")
    with contextlib.suppress(OSError):
        with socket.create_connection((address, settings.status_port), timeout=timeout) as conn:
            conn.sendall(encode(report(record.evolve(detail=""))))
        return True
    return False
