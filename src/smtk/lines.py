"""A child's output, line by line: whole lines, throttled progress bars, a bounded tail.

::

    child stdout ──┐                       ┌──> on_line("stdout", line)   (masked, prefixed by the sink)
    child stderr ──┴─> OutputPump thread ──┤
                       (selectors, 64 KiB  └──> tail: the last N lines, each cut to TAIL_LINE_CHARS
                        reads, LineSplitter)

- Lines are kept whole; a line longer than :data:`MAX_LINE_BYTES` is emitted in pieces
  (a runaway writer must not eat memory), each ending ``[line continues]``.
- ``\\r``-only updates (progress bars) are throttled to one line per interval; the last
  state is always emitted.
- Every byte is examined a bounded number of times: the splitter looks for line ends in
  new data only, so a megabyte line arriving in small reads costs linear time.
"""

from __future__ import annotations

import codecs
import collections
import math
import os
import selectors
import threading
import time
from collections.abc import Callable, Mapping

#: A line longer than this is emitted in pieces.
MAX_LINE_BYTES = 1 << 20
#: Characters of each line kept in the tail (the failure report shows 300 of them).
TAIL_LINE_CHARS = 16 * 1024
#: Bytes read from a pipe at a time.
READ_SIZE = 65536

#: Where lines go: ``(stream name, line)``; the sink masks and writes.
LineSink = Callable[[str, str], None]


class LineSplitter:
    """Turns a byte stream into whole lines; ``\\r``-only updates are throttled."""

    def __init__(self, emit: Callable[[str], None], progress_interval: float) -> None:
        self._emit = emit
        self._buffer = bytearray()
        #: How much of the buffer is known to hold neither ``\n`` nor ``\r``.
        self._scanned = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._progress_interval = progress_interval
        self._last_progress = -math.inf  # the first update shows at once
        self._pending_progress: str | None = None

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer.extend(data)
        start = self._scanned
        while True:
            nl = buffer.find(b"\n", start)
            if nl < 0:
                break
            raw = bytes(buffer[:nl])
            del buffer[: nl + 1]  # amortised O(1): bytearray keeps an offset for deletes at the front
            start = 0
            self._line(raw)
        # Progress bars rewrite one line with \r and may never send \n.
        cr = buffer.rfind(b"\r", start)
        if cr >= 0:
            raw = bytes(buffer[:cr])
            del buffer[: cr + 1]
            self._progress(raw)
        if len(buffer) > MAX_LINE_BYTES:
            raw = bytes(buffer)
            buffer.clear()
            self._emit(self._decode(raw) + " [line continues]")
        self._scanned = len(buffer)

    def close(self) -> None:
        if self._buffer:
            raw = bytes(self._buffer)
            self._buffer.clear()
            self._line(raw)
        self._scanned = 0
        self._flush_progress()

    def _decode(self, raw: bytes) -> str:
        return self._decoder.decode(raw, final=True)

    def _line(self, raw: bytes) -> None:
        # A line ending in \r\n is a normal line; \r inside it means progress updates:
        # only the last state is worth keeping.
        text = self._decode(raw.rstrip(b"\r"))
        if "\r" in text:
            text = text.rsplit("\r", 1)[-1]
        self._pending_progress = None
        self._emit(text)

    def _progress(self, raw: bytes) -> None:
        text = self._decode(raw).rsplit("\r", 1)[-1]
        if not text.strip():
            return
        now = time.monotonic()
        if now - self._last_progress >= self._progress_interval:
            self._last_progress = now
            self._pending_progress = None
            self._emit(text)
        else:
            self._pending_progress = text

    def _flush_progress(self) -> None:
        if self._pending_progress is not None:
            self._emit(self._pending_progress)
            self._pending_progress = None


class OutputPump:
    """One thread reading a child's pipes (fd -> stream name) into ``sink`` and the tails."""

    def __init__(
        self, streams: Mapping[int, str], sink: LineSink, *, tail_lines: int, progress_interval: float
    ) -> None:
        self._selector = selectors.DefaultSelector()
        self._sink = sink
        self._stop_at: float | None = None
        self.tails: dict[str, collections.deque[str]] = {
            name: collections.deque(maxlen=tail_lines) for name in set(streams.values())
        }
        self._splitters: dict[int, LineSplitter] = {}
        for fd, name in streams.items():
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ)
            self._splitters[fd] = LineSplitter(self._make_emit(name), progress_interval)
        self._thread = threading.Thread(target=self._run, name="smtk-output", daemon=True)

    def _make_emit(self, name: str) -> Callable[[str], None]:
        tail = self.tails[name]
        sink = self._sink

        def emit(line: str) -> None:
            tail.append(line if len(line) <= TAIL_LINE_CHARS else line[:TAIL_LINE_CHARS] + " [cut]")
            sink(name, line)

        return emit

    def tail(self, name: str) -> tuple[str, ...]:
        return tuple(self.tails.get(name, ()))

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while self._selector.get_map():
            if self._stop_at is not None and time.monotonic() >= self._stop_at:
                break
            for key, _ in self._selector.select(timeout=0.1):
                fd = key.fd if isinstance(key.fd, int) else key.fd.fileno()
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self._splitters[fd].feed(data)
                else:
                    self._selector.unregister(fd)
                    self._splitters[fd].close()
        for leftover in list(self._splitters):
            if leftover in self._selector.get_map():
                self._selector.unregister(leftover)
                self._splitters[leftover].close()

    def finish(self, drain_seconds: float) -> None:
        """Wait for EOF on every pipe, at most ``drain_seconds`` (a stray holder of the
        pipe must not keep the caller from reporting)."""
        self._stop_at = time.monotonic() + drain_seconds
        self._thread.join(drain_seconds + 1.0)
        self._selector.close()
