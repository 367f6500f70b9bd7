"""``Channel``: one input channel of the job, whatever its input mode.

A channel knows its name, mode (``File``, ``FastFile``, ``Pipe``), path, content type,
S3 distribution type and record wrapper (all from ``inputdataconfig.json``).

File and FastFile channels are directories (FastFile is read-only): ``directory`` and
``files()``. Pipe channels are FIFOs, one per epoch: ``epoch(n)`` and ``epochs()``.
Both modes also answer ``epoch(n)`` / ``epochs()`` with an object that has
``records(format)``, so one training loop runs unchanged in either mode::

    import smtk.channels

    train = smtk.channels.get("train")
    for epoch in train.epochs(count=10):
        with epoch:
            for record in epoch.records("recordio"):
                ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from smtk.channels.pipe import PipeEpoch
from smtk.channels.records import DEFAULT_CHUNK_SIZE, RecordReader, open_records
from smtk.config import ChannelConfig
from smtk.errors import ChannelError


class Channel:
    """One channel of ``inputdataconfig.json`` and where its data is."""

    def __init__(self, config: ChannelConfig, path: str, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.path = path
        self._environ = dict(os.environ if environ is None else environ)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def mode(self) -> str:
        """``File``, ``FastFile`` or ``Pipe``."""
        return self.config.input_mode

    @property
    def content_type(self) -> str | None:
        return self.config.content_type

    @property
    def distribution(self) -> str:
        """``FullyReplicated`` or ``ShardedByS3Key``."""
        return self.config.distribution

    @property
    def record_wrapper(self) -> str:
        """``None`` or ``RecordIO``."""
        return self.config.record_wrapper

    @property
    def compression(self) -> str | None:
        return self.config.compression

    @property
    def is_pipe(self) -> bool:
        return self.mode == "Pipe"

    @property
    def read_only(self) -> bool:
        """FastFile channels are a read-only mount."""
        return self.mode == "FastFile"

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} {self.mode} {self.path}>"

    # -- File / FastFile ---------------------------------------------------------------

    @property
    def directory(self) -> str:
        """The channel's directory (File and FastFile modes)."""
        if self.is_pipe:
            raise ChannelError(
                f"channel {self.name!r} is in Pipe mode: it has no directory; its data arrives "
                f"through the FIFOs {self.path}_0, {self.path}_1, ...",
                hint="read it with channel.epochs() or channel.epoch(n)",
            )
        return self.path

    def files(self) -> Iterator[str]:
        """Every regular file under the directory, in S3 key order (byte order of the
        relative path), so each host sees the same order.

        Links to directories are followed, but each directory is listed once: a link
        back up the tree (a loop) or a second link to the same directory adds nothing.
        """
        directory = self.directory
        if not os.path.isdir(directory):
            raise ChannelError(
                f"channel {self.name!r} ({self.mode} mode): the directory {directory} does not exist"
            )
        found: list[tuple[bytes, str]] = []
        seen: set[tuple[int, int]] = set()
        for root, dirs, names in os.walk(directory, followlinks=True):
            try:
                info = os.stat(root)
            except OSError:
                dirs[:] = []
                continue
            if (info.st_dev, info.st_ino) in seen:
                dirs[:] = []  # reached again through a link: its files are listed already
                continue
            seen.add((info.st_dev, info.st_ino))
            dirs.sort()
            for name in names:
                full = os.path.join(root, name)
                if os.path.isfile(full):
                    rel = os.path.relpath(full, directory).replace(os.sep, "/")
                    found.append((os.fsencode(rel), full))
        found.sort()
        return iter([full for _, full in found])

    # -- epochs (both modes) -----------------------------------------------------------

    def epoch(self, number: int, **options: Any) -> PipeEpoch | FileEpoch:
        """Epoch ``number``: Pipe mode opens (waiting, bounded) the FIFO ``<name>_<number>``.

        Options for Pipe mode: ``timeout``, ``stall_timeout``, ``pipe_buffer``, ``chunk_size``
        (see :mod:`smtk.channels.pipe`). In File modes the epoch reads the files again.
        """
        if number < 0:
            raise ValueError(f"epoch numbers start at 0, got {number}")
        if self.is_pipe:
            options.setdefault("record_wrapper", self.record_wrapper)
            options.setdefault("environ", self._environ)
            return PipeEpoch(self.path, number, **options)
        return FileEpoch(self, number, chunk_size=options.get("chunk_size", DEFAULT_CHUNK_SIZE))

    def epochs(
        self, start: int = 0, count: int | None = None, **options: Any
    ) -> Iterator[PipeEpoch | FileEpoch]:
        """Epochs ``start``, ``start + 1``, ... (``count`` of them, or until you stop).

        Each epoch is closed when the next one is asked for (or the loop ends), so breaking
        out of an epoch's records early is fine: the writer moves on.
        """
        number = start
        while count is None or number < start + count:
            epoch = self.epoch(number, **options)
            try:
                yield epoch
            finally:
                epoch.close()
            number += 1

    def records(self, format: str = "recordio", *, epoch: int = 0, **options: Any) -> Iterator[Any]:
        """The records of one epoch (default 0), closing the epoch afterwards."""
        with self.epoch(epoch) as opened:
            yield from opened.records(format, **options)


class FileEpoch:
    """One pass over a File/FastFile channel's files; mirrors :class:`PipeEpoch`."""

    def __init__(self, channel: Channel, number: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.channel = channel
        self.number = number
        self.chunk_size = chunk_size
        self.files = list(channel.files())
        self._readers: list[RecordReader[Any]] = []

    def records(self, format: str = "chunks", **options: Any) -> Iterator[Any]:
        """Records of every file in order (a record never spans two files)."""
        options.setdefault("chunk_size", self.chunk_size)
        for path in self.files:
            reader = open_records(path, format, **options)
            self._readers.append(reader)
            try:
                yield from reader
            finally:
                reader.close()
                self._readers.remove(reader)

    def __iter__(self) -> Iterator[bytes]:
        return self.records("chunks")

    def close(self) -> None:
        for reader in list(self._readers):
            reader.close()

    def __enter__(self) -> FileEpoch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FileEpoch {self.number} of {self.channel.name!r}: {len(self.files)} files>"
