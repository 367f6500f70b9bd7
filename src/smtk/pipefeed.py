"""Feed Pipe-mode FIFOs locally, the way the platform does.

For each epoch ``n`` the feeder creates the FIFO ``<data_dir>/<channel>_<n>``, waits for
a reader to open it, streams every source file (or S3 object) into it in order, and
closes it, so the reader sees end-of-file. A reader that closes early is normal (the
write fails with ``EPIPE``): the feeder moves on to the next epoch. With
``record_wrapper="RecordIO"`` each file becomes one RecordIO record; with
``distribution="ShardedByS3Key"`` host ``host_index`` of ``host_count`` gets every
``host_count``-th file (by key order), as each platform host gets its share.

Files are streamed with ``sendfile`` (no copy through Python) into a pipe whose buffer
is raised to 1 MiB where allowed. The FIFOs it made are removed when it finishes or is
stopped.

::

    from smtk.pipefeed import PipeFeeder

    feeder = PipeFeeder("train", "/data/train", "/opt/ml/input/data", epochs=3)
    feeder.start()                 # background thread; returns at once
    ...                            # the job reads train_0, train_1, train_2
    feeder.wait(timeout=60)        # True once every epoch was fed
    feeder.stop()                  # always safe; unblocks a writer waiting for a reader
    if feeder.error: raise feeder.error
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smtk import config
from smtk.channels.records import recordio_header, recordio_padding
from smtk.errors import ChannelError, ConfigError, SmtkError
from smtk.s3 import make_client, parse_s3_uri

logger = logging.getLogger("smtk")

CHUNK_SIZE = 1 << 20
PIPE_BUFFER = 1 << 20


class _Stopped(Exception):
    """Raised inside the feeding thread when stop() was called."""


@dataclass(frozen=True)
class SourceObject:
    """One file or S3 object the feeder streams each epoch."""

    name: str
    size: int
    path: str | None = None  # local file
    bucket: str | None = None  # S3 object (``name`` is the key)


class PipeFeeder:
    """Streams ``source`` into the FIFOs ``<data_dir>/<channel>_<epoch>``, one epoch after another."""

    def __init__(
        self,
        channel: str,
        source: str,
        data_dir: str,
        epochs: int,
        record_wrapper: str = "None",
        distribution: str = "FullyReplicated",
        host_index: int = 0,
        host_count: int = 1,
        environ: Mapping[str, str] | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
        host: str = "",
    ) -> None:
        config.parse_channel("pipe feeder", channel, {})  # validates the name
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError("pipe feeder", "epochs", "a whole number >= 1", epochs)
        if record_wrapper not in config.RECORD_WRAPPERS:
            raise ConfigError(
                "pipe feeder", "record_wrapper", " or ".join(config.RECORD_WRAPPERS), record_wrapper
            )
        if distribution not in config.DISTRIBUTION_TYPES:
            raise ConfigError(
                "pipe feeder", "distribution", " or ".join(config.DISTRIBUTION_TYPES), distribution
            )
        if host_count < 1 or not 0 <= host_index < host_count:
            raise ConfigError(
                "pipe feeder",
                "host_index",
                f"0 <= host_index < host_count (host_count {host_count})",
                host_index,
            )
        self.channel = channel
        #: How its log lines name it: ``algo-2 | pipe-feed train`` beside several hosts' lines.
        self.name = f"{host} | pipe-feed {channel}" if host else f"pipe-feed {channel}"
        self.source = source
        self.data_dir = data_dir
        self.epochs = epochs
        self.record_wrapper = record_wrapper
        self.distribution = distribution
        self.host_index = host_index
        self.host_count = host_count
        self.chunk_size = chunk_size
        self._environ = dict(os.environ if environ is None else environ)
        #: The exception that ended feeding early, if any (``None`` when all went well).
        self.error: BaseException | None = None
        #: Epochs fed to the end or closed early by their reader.
        self.epochs_done = 0
        self.bytes_written = 0
        self.objects: list[SourceObject] = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._made: list[str] = []
        self._opening: str | None = None
        self._thread: threading.Thread | None = None
        self._s3: Any = None
        self._lock = threading.Lock()
        self._cleaned = False

    # -- public ------------------------------------------------------------------------

    def fifo(self, epoch: int) -> str:
        return os.path.join(self.data_dir, f"{self.channel}_{epoch}")

    def start(self) -> None:
        """List the source (errors raise here) and start feeding in a background thread."""
        if self._thread is not None:
            raise RuntimeError("PipeFeeder.start() called twice")
        self.objects = self._list_source()
        os.makedirs(self.data_dir, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"pipe-feed-{self.channel}", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Feed every epoch in this thread (what ``start`` runs in the background); raises on failure."""
        if not self.objects:
            self.objects = self._list_source()
        os.makedirs(self.data_dir, exist_ok=True)
        self._run()
        if self.error is not None:
            raise self.error

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for feeding to end; True when it has (done, failed or stopped)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._cleanup()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop feeding, unblock a writer waiting for (or on) a reader, remove the FIFOs."""
        self._stop.set()
        with self._lock:
            if not self._cleaned:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            opening = self._opening
            if opening is not None:
                _release_writer(opening)
            assert self._thread is not None
            self._thread.join(0.05)
        if self.running:
            logger.warning("%s: the feeding thread did not stop within %.0f s", self.name, timeout)
            return
        self._cleanup()

    # -- source ------------------------------------------------------------------------

    def _list_source(self) -> list[SourceObject]:
        objects = self._list_s3() if self.source.startswith("s3://") else _list_local(self.source)
        if self.distribution == "ShardedByS3Key":
            objects = objects[self.host_index :: self.host_count]
        if self.record_wrapper == "RecordIO":
            for obj in objects:
                recordio_header(obj.size)  # too big for one record: fail now, not mid-epoch
        logger.info(
            "%s: %d file(s), %d bytes per epoch from %s (%s%s)",
            self.name,
            len(objects),
            sum(o.size for o in objects),
            self.source,
            self.distribution,
            f", host {self.host_index} of {self.host_count}" if self.distribution == "ShardedByS3Key" else "",
        )
        return objects

    def _list_s3(self) -> list[SourceObject]:
        uri = parse_s3_uri(self.source, "--source")
        self._s3 = make_client(self._environ)
        objects: list[SourceObject] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.key)
            for page in pages:
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):
                        objects.append(SourceObject(item["Key"], int(item["Size"]), bucket=uri.bucket))
        except Exception as exc:  # botocore's errors are many; name the prefix and the cause
            raise ChannelError(f"cannot list {self.source}: {type(exc).__name__}: {exc}") from exc
        return objects

    # -- feeding -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            for epoch in range(self.epochs):
                if self._stop.is_set():
                    break
                self._feed_epoch(epoch)
                self.epochs_done += 1
            else:
                logger.info("%s: all %d epoch(s) fed", self.name, self.epochs)
        except _Stopped:
            logger.info("%s: stopped after %d epoch(s)", self.name, self.epochs_done)
        except (SmtkError, OSError) as exc:
            self.error = exc
            logger.error("%s: %s", self.name, exc)
        finally:
            self._cleanup()

    def _feed_epoch(self, epoch: int) -> None:
        path = self.fifo(epoch)
        _make_fifo(path)
        with self._lock:
            self._made.append(path)
        logger.info("%s: epoch %d: waiting for a reader on %s", self.name, epoch, path)
        self._opening = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # blocks until a reader opens it
        finally:
            self._opening = None
        started, written = time.monotonic(), self.bytes_written
        try:
            if self._stop.is_set():
                raise _Stopped
            _grow_pipe(fd)
            os.set_blocking(fd, False)
            for obj in self.objects:
                self._send_object(fd, obj)
        except BrokenPipeError:
            logger.info(
                "%s: epoch %d: the reader closed it after %d bytes; next epoch",
                self.name,
                epoch,
                self.bytes_written - written,
            )
            return
        finally:
            os.close(fd)
        seconds = time.monotonic() - started
        size = self.bytes_written - written
        logger.info(
            "%s: epoch %d: %d bytes in %.2f s (%.0f MB/s)",
            self.name,
            epoch,
            size,
            seconds,
            size / max(seconds, 1e-9) / 1e6,
        )

    def _send_object(self, fd: int, obj: SourceObject) -> None:
        wrap = self.record_wrapper == "RecordIO"
        if wrap:
            self._write(fd, recordio_header(obj.size))
        if obj.path is not None:
            self._send_file(fd, obj)
        else:
            self._send_s3(fd, obj)
        if wrap and obj.size & 3:
            self._write(fd, recordio_padding(obj.size))

    def _send_file(self, out: int, obj: SourceObject) -> None:
        assert obj.path is not None
        with open(obj.path, "rb") as handle:
            source = handle.fileno()
            sent = 0
            use_sendfile = True
            while sent < obj.size:
                if use_sendfile:
                    try:
                        count = os.sendfile(out, source, sent, min(obj.size - sent, 16 * self.chunk_size))
                    except BlockingIOError:
                        self._wait_writable(out)
                        continue
                    except OSError as exc:
                        if exc.errno in (errno.EINVAL, errno.ENOSYS):
                            use_sendfile = False
                            continue
                        raise
                    self.bytes_written += count
                    if self._stop.is_set():
                        raise _Stopped
                else:
                    data = os.pread(source, min(obj.size - sent, self.chunk_size), sent)
                    if data:
                        self._write(out, data)
                    count = len(data)
                if count == 0:
                    raise ChannelError(
                        f"{self.name}: {obj.path} shrank while being sent ({sent} of {obj.size} bytes)"
                    )
                sent += count

    def _send_s3(self, out: int, obj: SourceObject) -> None:
        body = self._s3.get_object(Bucket=obj.bucket, Key=obj.name)["Body"]
        sent = 0
        try:
            while True:
                data = body.read(self.chunk_size)
                if not data:
                    break
                self._write(out, data)
                sent += len(data)
        finally:
            body.close()
        if sent != obj.size:
            raise ChannelError(
                f"{self.name}: s3://{obj.bucket}/{obj.name} gave {sent} bytes, its listing said {obj.size}"
            )

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                count = os.write(fd, view)
            except BlockingIOError:
                self._wait_writable(fd)
                continue
            view = view[count:]
        self.bytes_written += len(data)
        if self._stop.is_set():
            raise _Stopped

    def _wait_writable(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.register(self._wake_r, select.POLLIN)
        for ready, _ in poller.poll():
            if ready == self._wake_r:
                raise _Stopped

    def _cleanup(self) -> None:
        """Remove the FIFOs made so far; once the thread is gone, close the wake-up pipe."""
        with self._lock:
            made, self._made = self._made, []
            for path in made:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if not self.running and not self._cleaned:
                self._cleaned = True
                os.close(self._wake_r)
                os.close(self._wake_w)


def _list_local(source: str) -> list[SourceObject]:
    if os.path.isfile(source):
        return [SourceObject(os.path.basename(source), os.path.getsize(source), path=source)]
    if not os.path.isdir(source):
        raise ConfigError("--source", None, "a directory, a file or an s3:// prefix", source)
    found: list[tuple[bytes, SourceObject]] = []
    for root, _dirs, names in os.walk(source, followlinks=True):
        for name in names:
            full = os.path.join(root, name)
            if os.path.isfile(full):
                rel = os.path.relpath(full, source).replace(os.sep, "/")
                found.append((os.fsencode(rel), SourceObject(rel, os.path.getsize(full), path=full)))
    found.sort(key=lambda pair: pair[0])
    return [obj for _, obj in found]


def _make_fifo(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISFIFO(st.st_mode):
            raise ChannelError(f"pipe-feed: {path} exists and is not a FIFO; refusing to replace it")
        os.unlink(path)  # a stale FIFO from an earlier run: start afresh
    os.mkfifo(path, 0o600)


def _grow_pipe(fd: int) -> None:
    for size in (PIPE_BUFFER, 256 << 10):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)  # type: ignore[attr-defined,unused-ignore]
            return
        except (OSError, AttributeError):
            continue


def _release_writer(path: str) -> None:
    # A writer blocked in open(O_WRONLY) returns once any reader opens the FIFO.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    os.close(fd)
