"""Pipe-mode epochs: the FIFOs ``<channel>_0``, ``<channel>_1``, ... one per epoch.

The platform creates the FIFO of an epoch when it is ready to stream it, so opening
one waits for it to appear: bounded, with exponential backoff (10 ms doubling up to
1 s between checks) and a progress line every ~10 s saying which FIFO, which attempt
and how long is left. The FIFO is opened non-blocking, so the wait for its writer is
bounded by the same deadline; then it is read in large chunks (``F_SETPIPE_SZ``
raises the pipe buffer where the kernel allows). Closing an epoch early is normal:
the writer gets ``EPIPE`` and moves on to the next epoch.

An epoch FIFO is written once. Opening again, in the same process, a FIFO this process
has already read to the end (and nobody re-created since) would wait for a writer that
never comes, so it fails at once with a message saying so.

::

    from smtk.channels.pipe import open_epoch

    with open_epoch("/opt/ml/input/data/train", 0, timeout=60) as epoch:
        for chunk in epoch:              # bytes, up to 128 KiB each
            ...
        # or: for view in epoch.views(): ...  (zero-copy, page-aligned buffers)
        # or: for record in epoch.records("recordio"): ...

Settings (each also a keyword argument): ``SMTK_PIPE_TIMEOUT`` (seconds to wait for
the FIFO and its first byte, default 300), ``SMTK_PIPE_STALL_TIMEOUT`` (seconds a
connected writer may send nothing before reading fails; default 0 = wait, logging a
warning every 60 s), ``SMTK_PIPE_BUFFER_SIZE`` (pipe buffer to ask for, default 1 MiB;
0 leaves it alone).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import mmap
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from smtk.channels.records import DEFAULT_CHUNK_SIZE, RecordReader, open_records
from smtk.errors import ChannelError
from smtk.settings import PipeSettings

logger = logging.getLogger("smtk")

_FIRST_DELAY = 0.01
_MAX_DELAY = 1.0
_PROGRESS_EVERY = 10.0
_STALL_WARN_EVERY = 60.0

#: path -> (dev, ino, mtime_ns, ctime_ns) of FIFOs this process read to the end.
_finished: dict[str, tuple[int, int, int, int]] = {}


class FifoTimeoutError(ChannelError):
    """A FIFO did not appear, or sent nothing, within the allowed time."""

    reference = "fifo-timeout"

    def __init__(self, message: str, *, path: str, waited: float, hint: str | None = None) -> None:
        self.path = path
        self.waited = waited
        super().__init__(message, hint=hint)


#: Raw chunks are read 128 KiB at a time: a fresh ``bytes`` of that size comes from the
#: allocator's reused heap, while 1 MiB ones are new mmapped memory every time, whose page
#: faults cost more than the copy (measured: 8.7-9.7 GiB/s against 4.9-8 GiB/s). Record
#: parsers keep 1 MiB reads: they parse in place and gain from fewer, larger reads.
RAW_CHUNK_SIZE = 128 * 1024
#: Size of the buffers ``PipeEpoch.views()`` reads into. While the caller's loop variable
#: still holds the last view, the next read goes to a second buffer, so two alternate:
#: measured here against ``cat`` (128 KiB a read; pinned, 14 alternating rounds of
#: 512 MiB, CPU time), 384 KiB buffers were 1.08-1.10x as fast, 256 KiB 1.00-1.05x (more
#: calls per byte), 128 KiB 0.9-0.98x, and 512 KiB 0.89x (two of them no longer stay in
#: the core's cache while the kernel copies into them). A loop over ``readinto`` with one
#: 512 KiB buffer of the caller's own was fastest (1.16-1.24x).
VIEW_CHUNK_SIZE = 384 * 1024
#: How many page-aligned buffers ``PipeEpoch.views()`` keeps for reuse.
_VIEW_POOL = 4


def fifo_path(prefix: str, number: int) -> str:
    """``<prefix>_<number>``: the FIFO of one epoch."""
    if number < 0:
        raise ValueError(f"epoch numbers start at 0, got {number}")
    return f"{prefix}_{number}"


class PipeEpoch:
    """One epoch of a Pipe channel: an open FIFO, read in large chunks.

    File-like (``read``, ``readinto``, ``fileno``, ``close``), iterable (chunks), and a
    context manager. ``records(format, ...)`` parses it (see :mod:`smtk.channels.records`).
    """

    def __init__(
        self,
        prefix: str,
        number: int,
        *,
        timeout: float | None = None,
        stall_timeout: float | None = None,
        pipe_buffer: int | None = None,
        chunk_size: int | None = None,
        record_wrapper: str = "None",
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.number = number
        self.path = fifo_path(prefix, number)
        self.name = self.path
        #: Size of the chunks ``for chunk in epoch`` yields (``RAW_CHUNK_SIZE`` by default).
        self.chunk_size = chunk_size or RAW_CHUNK_SIZE
        self._records_chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        self.record_wrapper = record_wrapper
        self.bytes_read = 0
        configured = PipeSettings.from_environ(os.environ if environ is None else environ)
        self.stall_timeout = configured.stall_timeout if stall_timeout is None else stall_timeout
        wait = configured.timeout if timeout is None else timeout
        buffer = configured.buffer_size if pipe_buffer is None else pipe_buffer
        self._eof = False
        self._fd: int | None = _open_fifo(self.path, number, wait)
        if buffer:
            _raise_pipe_size(self._fd, buffer)
        # Without a stall timeout, reads block in the kernel as `cat`'s do: a non-blocking
        # read that finds the pipe empty costs an exception and a poll, which at several
        # GiB/s is a large share of the time. A watchdog thread still reports a writer that
        # has gone quiet. With a stall timeout, reads stay non-blocking so they can give up.
        self._closed = threading.Event()
        if not self.stall_timeout:
            os.set_blocking(self._fd, True)
            threading.Thread(target=self._watch_for_stalls, name=f"smtk-pipe-{number}", daemon=True).start()

    # -- file-like ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._fd is None

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path}: epoch is closed")
        return self._fd

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes as soon as some arrive (``-1``: all to the end); ``b""`` at EOF."""
        if size < 0:
            return b"".join(iter(lambda: self.read(self.chunk_size), b""))
        fd = self.fileno()
        if self._eof or size == 0:
            return b""
        while True:
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                self._wait_for_data(fd)
                continue
            if not data:
                self._eof = True
                self._remember_finished(fd)
            self.bytes_read += len(data)
            return data

    def readinto(self, buffer: bytearray | memoryview | mmap.mmap) -> int:
        """Read up to ``len(buffer)`` bytes into ``buffer`` as soon as some arrive; 0 at EOF."""
        fd = self.fileno()
        if self._eof:
            return 0
        while True:
            try:
                count = os.readv(fd, [buffer])
            except BlockingIOError:
                self._wait_for_data(fd)
                continue
            if count == 0:
                self._eof = True
                self._remember_finished(fd)
            self.bytes_read += count
            return count

    def __iter__(self) -> Iterator[bytes]:
        read, size = self.read, self.chunk_size
        while True:
            data = read(size)
            if not data:
                return
            yield data

    def views(self, size: int = VIEW_CHUNK_SIZE) -> Iterator[memoryview]:
        """The epoch's bytes as read-only views of page-aligned buffers, ``size`` at most each.

        The fastest way to read raw bytes: each read lands in a buffer that is aligned
        to a memory page (as ``cat``'s is; the kernel copies into it fastest) and is
        handed over without a copy. A buffer is read into again only once nothing
        refers to it any more (no view of it, nor anything made from one, such as
        ``numpy.frombuffer(view)``), so a view never changes while you hold it; holding
        on to views only means that later reads use fresh buffers. ``bytes(view)`` makes
        a copy to keep.
        """
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        pool: list[mmap.mmap] = []
        while True:
            buffer = _free_buffer(pool)
            if buffer is None:
                buffer = mmap.mmap(-1, size)
                if len(pool) < _VIEW_POOL:
                    pool.append(buffer)
            count = self.readinto(buffer)
            if not count:
                return
            yield memoryview(buffer).toreadonly()[:count]

    def records(self, format: str = "chunks", **options: Any) -> RecordReader[Any]:
        """A reader of ``format`` over this epoch (manifests default to the channel's wrapper)."""
        if format == "manifest":
            options.setdefault("record_wrapper", self.record_wrapper)
        options.setdefault("chunk_size", self._records_chunk_size)
        return open_records(self, format, **options)

    def close(self) -> None:
        """Stop reading; the writer sees ``EPIPE`` and moves on to the next epoch."""
        self._closed.set()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> PipeEpoch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else ("at EOF" if self._eof else "open")
        return f"<PipeEpoch {self.number} {self.path} {state}, {self.bytes_read} bytes read>"

    # -- internals ---------------------------------------------------------------------

    def _watch_for_stalls(self) -> None:
        seen, quiet_since = self.bytes_read, time.monotonic()
        while not self._closed.wait(_STALL_WARN_EVERY):
            if self._eof:
                return
            if self.bytes_read != seen:
                seen, quiet_since = self.bytes_read, time.monotonic()
                continue
            logger.warning(
                "%s: no data for %.0f s after %d bytes of epoch %d; still waiting",
                self.path,
                time.monotonic() - quiet_since,
                self.bytes_read,
                self.number,
            )

    def _wait_for_data(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        started = time.monotonic()
        limit = self.stall_timeout
        while True:
            waited = time.monotonic() - started
            if limit and waited >= limit:
                raise FifoTimeoutError(
                    f"{self.path}: the writer sent nothing for {waited:.1f} s "
                    f"(after {self.bytes_read} bytes of epoch {self.number}); giving up",
                    path=self.path,
                    waited=waited,
                    hint="raise SMTK_PIPE_STALL_TIMEOUT (0 waits forever) if the source is slow",
                )
            step = _STALL_WARN_EVERY if not limit else min(_STALL_WARN_EVERY, limit - waited)
            if poller.poll(math.ceil(step * 1000)):
                return
            if step >= _STALL_WARN_EVERY:
                logger.warning(
                    "%s: no data for %.0f s after %d bytes of epoch %d; still waiting",
                    self.path,
                    time.monotonic() - started,
                    self.bytes_read,
                    self.number,
                )

    def _remember_finished(self, fd: int) -> None:
        try:
            st = os.fstat(fd)
        except OSError:
            return
        _finished[os.path.abspath(self.path)] = _identity(st)


def _free_buffer(pool: list[mmap.mmap]) -> mmap.mmap | None:
    """A buffer of ``pool`` that nothing but the pool refers to, if any.

    Every view handed out holds (through its shared buffer record) one reference to
    the ``mmap`` it views; the pool's list, the loop variable and ``getrefcount``'s
    argument account for the other three.
    """
    for buffer in pool:
        if sys.getrefcount(buffer) == 3:
            return buffer
    return None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _open_fifo(path: str, number: int, timeout: float) -> int:
    """Wait (bounded) for ``path`` to exist as a FIFO and for its writer; return the fd."""
    started = time.monotonic()
    deadline = started + timeout
    delay = _FIRST_DELAY
    attempt = 0
    next_log = started + 1.0
    while True:
        attempt += 1
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISFIFO(st.st_mode):
                kind = "directory" if stat.S_ISDIR(st.st_mode) else "regular file"
                raise ChannelError(
                    f"{path} is a {kind}, not a FIFO: Pipe mode streams epoch {number} through a named pipe",
                    hint="is the channel really in Pipe mode? (TrainingInputMode in inputdataconfig.json)",
                )
            if _finished.get(os.path.abspath(path)) == _identity(st):
                raise ChannelError(
                    f"{path}: epoch {number} was already read to the end by this process and the FIFO "
                    "has not been re-created since, so no writer will come",
                    hint=f"read epoch {number + 1} next (channel.epochs() counts for you)",
                )
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                _wait_for_writer(fd, path, number, started, deadline)
            except BaseException:
                os.close(fd)
                raise
            return fd
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            raise FifoTimeoutError(
                f"FIFO {path} (epoch {number}) did not appear within {now - started:.1f} s "
                f"({attempt} checks)",
                path=path,
                waited=now - started,
                hint=_missing_hint(path, number),
            )
        if now >= next_log:
            logger.info(
                "waiting for FIFO %s (epoch %d): attempt %d, %.1f s waited, %.1f s left",
                path,
                number,
                attempt,
                now - started,
                left,
            )
            next_log = now + _PROGRESS_EVERY
        time.sleep(min(delay, left))
        delay = min(delay * 2, _MAX_DELAY)


def _wait_for_writer(fd: int, path: str, number: int, started: float, deadline: float) -> None:
    # On Linux a read end opened with O_NONBLOCK polls as neither readable nor hung up
    # until a writer has connected, so this waits for the writer (or its first bytes).
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            waited = time.monotonic() - started
            raise FifoTimeoutError(
                f"FIFO {path} (epoch {number}) exists but no writer sent anything within {waited:.1f} s",
                path=path,
                waited=waited,
                hint="the platform (or smtk pipe-feed) writes each epoch once; was this epoch "
                "already read, or is the feeder stopped?",
            )
        if poller.poll(math.ceil(min(left, _PROGRESS_EVERY) * 1000)):
            return
        logger.info(
            "FIFO %s (epoch %d) exists; waiting for its writer: %.1f s waited, %.1f s left",
            path,
            number,
            time.monotonic() - started,
            max(0.0, deadline - time.monotonic()),
        )


def _missing_hint(path: str, number: int) -> str:
    directory = os.path.dirname(path) or "."
    prefix = os.path.basename(path).rsplit("_", 1)[0]
    try:
        present = sorted(n for n in os.listdir(directory) if n.startswith(prefix + "_"))
    except OSError:
        return f"the directory {directory} does not exist"
    if present:
        return f"FIFOs present: {', '.join(present[:8])}" + (" ..." if len(present) > 8 else "")
    if number > 0:
        return "no FIFO of this channel exists: was the previous epoch the last one?"
    return "is the channel in Pipe mode, and is something feeding it? (locally: smtk pipe-feed)"


def _raise_pipe_size(fd: int, wanted: int) -> None:
    """Ask for a bigger pipe buffer; fewer, larger reads. Best effort."""
    try:
        current = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)  # type: ignore[attr-defined,unused-ignore]
    except (OSError, AttributeError):
        return
    if current >= wanted:
        return
    for size in (wanted, _pipe_max_size()):
        if size <= current:
            continue
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)  # type: ignore[attr-defined,unused-ignore]
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EBUSY, errno.EINVAL):
                raise
            continue
        logger.debug("pipe buffer of fd %d raised from %d to %d bytes", fd, current, size)
        return


def _pipe_max_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size", "rb") as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def open_epoch(prefix: str, number: int, **options: Any) -> PipeEpoch:
    """Open epoch ``number`` of the Pipe channel whose FIFOs are ``<prefix>_<n>``."""
    return PipeEpoch(prefix, number, **options)
