"""Record readers and writers over any byte source: a FIFO, a file, a stream, bytes.

Formats (the ``format`` names :func:`open_records` takes):

``chunks``
    the raw bytes, in reads of up to ``chunk_size`` (no framing).
``lines``
    text lines as bytes, without the ``\\n`` (a last line without one is kept).
``recordio``
    SageMaker/MXNet RecordIO: uint32 magic ``0xCED7230A``, uint32 length word (low 29
    bits the length, top 3 bits the multipart flag), payload, zero padding to 4 bytes;
    little-endian. Multipart records (flags 1, 2, 3) are joined back into one.
``tfrecord``
    uint64 length, masked CRC32C of the length, data, masked CRC32C of the data. CRCs
    are checked unless ``check_crc=False``; ``skip_corrupt=True`` skips records whose
    data CRC is wrong and counts them in ``reader.skipped`` (a wrong *length* CRC always
    raises: the framing after it cannot be trusted).
``manifest``
    an augmented manifest: JSON lines (``record_wrapper="None"``, yields dicts) or, as
    Pipe mode sends it with ``RecordWrapperType: RecordIO``, one RecordIO record per
    attribute, regrouped into ``{attribute: bytes}`` per line given ``attribute_names``.

Every reader reads large chunks and parses them with ``struct`` (runs of same-length
records in bulk, see ``_cut``; records of 64 KiB and more straight from the source, one
copy); records are ``bytes``. Input that ends inside a record raises :class:`RecordError` naming the
source and the byte offset; it is never a silent short read.

Zero-copy (``views=True``; formats ``chunks``, ``recordio`` and ``tfrecord``): records
are read-only ``memoryview`` objects instead of ``bytes``. A file given by its path is
mapped into memory (``mmap``), so a record is a view of the page cache: nothing is
copied, and its bytes are read from disk when something touches them (``np.frombuffer``,
``torch.frombuffer``, ``PIL.Image.open(io.BytesIO(view))``, ``bytes(view)``). Other
sources (FIFOs, streams) are read as usual and records are views of the buffers they
were read into. A view stays valid for as long as you hold it; nothing is ever written
into a buffer a view points to. Take ``bytes(view)`` for a record you keep for long:
a view keeps its whole buffer alive. A mapped file must not shrink while its records
are in use (touching a page past the new end kills the process with ``SIGBUS``), which
holds for channel files. A TFRecord CRC check copies each record once (the C CRC
routine takes ``bytes`` only).

::

    from smtk.channels.records import open_records, encode_recordio

    for payload in open_records("/data/train.rec", "recordio"):
        ...
    for view in open_records("/data/images.rec", "recordio", views=True):
        image = decode(view)                  # no copy made by the reader
    with open_records(sys.stdin.buffer, "tfrecord", skip_corrupt=True) as reader:
        n = sum(1 for _ in reader)
        print(n, "records,", reader.skipped, "skipped")
"""

from __future__ import annotations

import functools
import io
import json
import logging
import mmap
import os
import stat
import struct
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from itertools import chain
from typing import IO, Any, ClassVar, Generic, Literal, TypeVar, Union, cast

from smtk.channels.crc32c import Buffer, crc32c, crc32c_function, mask, masked_crc32c
from smtk.errors import ChannelError

logger = logging.getLogger("smtk")

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_MASK_DELTA = 0xA282EAD8
#: Payloads of at least this size that are not buffered yet are read straight into their
#: own ``bytes`` (one copy) instead of through the chunk buffer (two).
_DIRECT_MIN = 64 << 10
DEFAULT_CHUNK_SIZE = 1 << 20
_FIRST_CHUNK = 64 << 10

Format = Literal["chunks", "lines", "recordio", "tfrecord", "manifest"]
FORMATS: tuple[str, ...] = ("chunks", "lines", "recordio", "tfrecord", "manifest")
#: The formats that can hand out records as ``memoryview`` (``views=True``).
VIEW_FORMATS: tuple[str, ...] = ("chunks", "recordio", "tfrecord")

#: What a reader accepts: a path, an open file descriptor, bytes, or an object with
#: ``read(n)`` (files, sockets' makefile, BytesIO, a Pipe epoch, ``sys.stdin.buffer``).
Source = Union[str, "os.PathLike[str]", int, bytes, bytearray, memoryview, IO[bytes], Any]

T = TypeVar("T")
_RIO = struct.Struct("<II")
_TFH = struct.Struct("<QI")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class RecordError(ChannelError):
    """A record is malformed or cut short; ``source`` and ``offset`` say where."""

    reference = "record-error"

    def __init__(self, source: str, offset: int, problem: str, *, hint: str | None = None) -> None:
        self.source = source
        self.offset = offset
        super().__init__(f"{source}: byte offset {offset}: {problem}", hint=hint)


class _Stream:
    """Reads from one source into ``buf``; ``base`` is the offset of ``buf[0]``.

    Two ways of refilling, chosen so that no byte is copied more often than needed:

    * *chunk mode* (the default): an empty buffer is refilled with one read of
      ``chunk_size`` (the very first one at most 64 KiB, so that big records switch to
      direct mode after the first, not after a whole chunk of them); what a record
      still lacks past the end of the buffer is read exactly (a few bytes), so a big
      chunk never has to be joined to a leftover.
    * *direct mode* (``direct = True``, set by a reader that just read a big record
      straight from the source with :meth:`take_exact`): refills read only what is asked
      for (the next header), so the next big payload again arrives in one read, one copy.

    With ``views`` every buffer is a read-only ``memoryview``, so the parsers' slices are
    views too (typed as ``bytes`` here: they support every operation the parsers use); a
    regular file given by path becomes one buffer: its memory mapping.
    """

    def __init__(self, source: Source, chunk_size: int, *, views: bool = False) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        # The first read is small: if the records are big, only the first one is copied
        # twice (joined from this read and the rest of it); the next ones are read
        # straight into their own bytes (direct mode), not cut out of a whole chunk.
        self._next_chunk = min(chunk_size, _FIRST_CHUNK)
        self.views = views
        self.buf = _view(b"") if views else b""
        self.pos = 0
        self.base = 0
        self.direct = False
        self._fd: int | None = None
        self._read: Callable[[int], bytes]
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.name = "<bytes>"
            self.buf = _view(source) if views else bytes(source)
            self._read = _no_more
        elif isinstance(source, (str, os.PathLike)):
            self.name = os.fspath(source)
            try:
                self._fd = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise ChannelError(f"cannot open {self.name}: {exc.strerror}") from None
            self._read = functools.partial(os.read, self._fd)
            mapping = _map_file(self._fd) if views else None
            if mapping is not None:
                # The mapping keeps the file's pages reachable; the descriptor can go.
                os.close(self._fd)
                self._fd = None
                self.buf = _view(mapping)
                self._read = _no_more
        elif isinstance(source, int):
            self.name = f"<fd {source}>"
            self._read = functools.partial(os.read, source)
        elif hasattr(source, "read"):
            self.name = str(getattr(source, "name", None) or f"<{type(source).__name__}>")
            # read1 returns what one underlying read gives, so a slow writer's complete
            # records are handed on at once instead of waiting for a full chunk.
            self._read = getattr(source, "read1", None) or source.read
        else:
            raise TypeError(f"cannot read records from {type(source).__name__}")
        if views and self._read is not _no_more:
            read = self._read
            self._read = lambda size: _view(read(size))

    def _joined(self, parts: list[bytes]) -> bytes:
        if len(parts) == 1:
            return parts[0]
        return _view(b"".join(parts)) if self.views else b"".join(parts)

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def available(self) -> int:
        return len(self.buf) - self.pos

    def fill(self, needed: int, extra: int = 0) -> bool:
        """Make at least ``needed`` bytes available at ``pos``; False at end of input.

        ``extra``: in direct mode, also ask for that many more bytes in the same read
        (the next header after a record's trailer), without waiting for them.
        """
        buf, pos = self.buf, self.pos
        have = len(buf) - pos
        if have >= needed:
            return True
        self.base += pos
        read = self._read
        # A leftover (or direct mode) is completed exactly; an empty buffer takes a chunk.
        want = needed - have + extra if have or self.direct else max(self._next_chunk, needed)
        self._next_chunk = self.chunk_size
        if not have:
            # The usual case (a chunk, or the header after a big record): one read, no join.
            chunk = read(want)
            if len(chunk) >= needed:
                self.buf, self.pos = chunk, 0
                return True
            if not chunk:
                self.buf, self.pos = buf[:0], 0
                return False
            parts = [chunk]
            have = len(chunk)
            want = needed - have
        else:
            parts = [buf[pos:]]
        while have < needed:
            chunk = read(want)
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
            want = needed - have
        self.buf = self._joined(parts)
        self.pos = 0
        return have >= needed

    def take_exact(self, start: int, length: int, ahead: int = 0) -> bytes:
        """``buf[start:start + length]``, reading what is not buffered straight from the source.

        A payload that starts at the end of the buffer arrives in one read of exactly its
        size: one copy, as from a plain ``read(length)``. Shorter only at the end of input.
        Leaves ``pos`` after what it returns. ``ahead``: when the payload was read from the
        source, also read up to that many bytes after it (its trailer and the next
        header) into the buffer, in one more read.
        """
        buf = self.buf
        end = start + length
        if end <= len(buf):
            self.pos = end
            return buf[start:end]
        read = self._read
        if start == len(buf):
            # The usual case for big records: the payload is what the source holds next.
            self.base += start
            data = read(length)
            if len(data) == length:
                self.base += length
                self.buf, self.pos = (read(ahead) if ahead else buf[:0]), 0
                return data
            parts = [data] if data else []
            self.base += len(data)
            need = length - len(data)
        else:
            parts = [buf[start:]] if start < len(buf) else []
            self.base += len(buf)
            need = end - max(start, len(buf))
        self.buf, self.pos = buf[:0], 0
        while need > 0:
            chunk = read(need)
            if not chunk:
                break
            parts.append(chunk)
            need -= len(chunk)
            self.base += len(chunk)
        return self._joined(parts) if parts else self.buf[:0]

    def take(self, limit: int | None = None) -> bytes:
        """What is buffered (at most ``limit`` bytes), else the next read; ``b""`` at the end."""
        buf, pos = self.buf, self.pos
        if pos < len(buf):
            end = len(buf) if limit is None else min(len(buf), pos + limit)
            data = buf if pos == 0 and end == len(buf) else buf[pos:end]
            if end == len(buf):
                self.base += end
                self.buf, self.pos = buf[:0], 0
            else:
                self.pos = end
            return data
        self.base += len(buf)
        self.buf, self.pos = buf[:0], 0
        data = self._read(self.chunk_size if limit is None else min(limit, self.chunk_size))
        self.base += len(data)
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _no_more(_n: int) -> bytes:
    return b""


def _view(data: Buffer | mmap.mmap) -> bytes:
    """A read-only byte view of ``data`` (typed as ``bytes``: see ``_Stream``)."""
    return cast(bytes, memoryview(data).toreadonly().cast("B"))


def _map_file(fd: int) -> mmap.mmap | None:
    """A read-only mapping of the regular file ``fd``; ``None`` where one cannot be made.

    Empty files, non-regular files and file systems without ``mmap`` are read as streams.
    """
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return None
        mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    # Records are parsed front to back: let the kernel read ahead generously.
    mapping.madvise(mmap.MADV_SEQUENTIAL)
    return mapping


class RecordReader(Generic[T]):
    """One pass over one source. Iterate it once; ``close()`` (or ``with``) ends early."""

    format: ClassVar[str] = ""

    def __init__(self, source: Source, *, chunk_size: int = DEFAULT_CHUNK_SIZE, views: bool = False) -> None:
        if views and self.format not in VIEW_FORMATS:
            raise ChannelError(
                f"views=True is not available for the {self.format!r} format; "
                f"it is for {', '.join(VIEW_FORMATS)}"
            )
        # A reader may be layered on another's stream (the manifest reader does).
        self._stream = source if isinstance(source, _Stream) else _Stream(source, chunk_size, views=views)
        self._batches_gen: Generator[Sequence[T], None, None] | None = None
        #: Records handed out (for ``manifest``: lines).
        self.count = 0
        #: Corrupt records skipped (TFRecord with ``skip_corrupt=True``).
        self.skipped = 0

    @property
    def source_name(self) -> str:
        return self._stream.name

    @property
    def offset(self) -> int:
        """Bytes of the source consumed so far."""
        return self._stream.offset

    def __iter__(self) -> Iterator[T]:
        if self._batches_gen is not None:
            raise ChannelError(
                f"{self._stream.name}: this {self.format} reader was already iterated; "
                "a reader makes one pass over its source: open a new one"
            )
        # Parsers hand over a list of records per buffer; chain() walks them in C, so a
        # record costs no Python frame on its way to the caller.
        self._batches_gen = self._guarded()
        return chain.from_iterable(self._batches_gen)

    def _guarded(self) -> Generator[Sequence[T], None, None]:
        try:
            yield from self._batches()
        finally:
            self._stream.close()

    def _batches(self) -> Iterator[Sequence[T]]:
        raise NotImplementedError

    def close(self) -> None:
        if self._batches_gen is not None:
            self._batches_gen.close()
        self._stream.close()

    def __enter__(self) -> RecordReader[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, offset: int, problem: str, hint: str | None = None) -> RecordError:
        return RecordError(self._stream.name, offset, problem, hint=hint)


class ChunkReader(RecordReader[bytes]):
    """The source's bytes as they arrive, in reads of up to ``chunk_size``."""

    format = "chunks"

    def _batches(self) -> Iterator[Sequence[bytes]]:
        stream = self._stream
        while True:
            data = stream.take(stream.chunk_size)
            if not data:
                return
            self.count += 1
            yield (data,)


class LineReader(RecordReader[bytes]):
    """Lines split on ``\\n`` (not included); a final unterminated line is yielded too."""

    format = "lines"

    def _batches(self) -> Iterator[Sequence[bytes]]:
        stream = self._stream
        pending: list[bytes] = []
        while True:
            # At most a chunk at a time, also from a big in-memory source: the lists stay small.
            data = stream.take(stream.chunk_size)
            if not data:
                if pending:
                    self.count += 1
                    yield (b"".join(pending),)
                return
            lines = data.split(b"\n")
            if len(lines) == 1:
                pending.append(data)
                continue
            if pending:
                pending.append(lines[0])
                lines[0] = b"".join(pending)
                pending = []
            last = lines.pop()
            if last:
                pending.append(last)
            self.count += len(lines)
            yield lines


class RecordIOReader(RecordReader[bytes]):
    """SageMaker RecordIO records (multipart records joined)."""

    format = "recordio"

    def _batches(self) -> Iterator[Sequence[bytes]]:
        stream = self._stream
        unpack = _RIO.unpack_from
        magic_word, length_mask = RECORDIO_MAGIC, _LENGTH_MASK
        cut = _cut_views if stream.views else _cut
        cooldown = _RUN_MIN
        while True:
            # Big single-part records, one after another: each read straight from the
            # source into its own bytes (a header read, a payload read: one copy).
            while stream.direct and stream.fill(8):
                buf, pos = stream.buf, stream.pos
                magic, word = unpack(buf, pos)
                pad = -word & 3
                if (
                    magic != magic_word
                    or not _DIRECT_MIN <= word <= length_mask
                    or len(buf) - pos >= 8 + word + pad
                ):
                    break
                start = stream.base + pos
                # The padding and the next header come in the same read as before (none
                # without padding: the record is complete, so do not wait for more input).
                data = stream.take_exact(pos + 8, word, pad + 8 if pad else 0)
                if len(data) < word or not stream.fill(pad, 8):
                    raise self._truncated(
                        start, word, pad, len(data) + stream.available() * (len(data) == word)
                    )
                stream.pos += pad
                self.count += 1
                yield (data,)
                del data  # before the next big read: its memory can be reused at once
            # Fast path: every whole single-part record already in the buffer (a pass at a time).
            buf, pos = stream.buf, stream.pos
            size = len(buf)
            horizon = min(size, pos + _PASS_BYTES)
            out: list[bytes] = []
            append = out.append
            next_probe = pos
            while pos + 8 <= horizon:
                magic, word = unpack(buf, pos)
                if magic != magic_word or word > length_mask:
                    break
                end = pos + 8 + word
                following = end + (-word & 3)
                if following > size:
                    break
                if pos >= next_probe:
                    stride = following - pos
                    fit = min((size - pos) // stride, _PASS_RECORDS)
                    if fit >= _RUN_MIN:
                        run = _run_length(buf, pos, stride, 8, fit)
                        if run >= _RUN_MIN:
                            out += cut(buf, pos, 8, word, stride - 8 - word, run)
                            pos += run * stride
                            cooldown = _RUN_MIN
                            if len(out) >= _PASS_RECORDS:
                                break
                            continue
                        # Not a run here: parse one by one for a while, probing less often
                        # the longer lengths keep varying.
                        next_probe = pos + cooldown * stride
                        cooldown = min(cooldown * 2, _RUN_MAX_COOLDOWN)
                append(buf[pos + 8 : end])
                pos = following
            stream.pos = pos
            if out:
                self.count += len(out)
                yield out
            # Slow path: one record that needs more input, a multipart one, or an error.
            record = self._one()
            if record is None:
                return
            self.count += 1
            yield (record,)

    def _header(self, start: int) -> tuple[int, int] | None:
        stream = self._stream
        if not stream.fill(8):
            if stream.available() == 0:
                return None
            raise self._error(
                start, f"truncated RecordIO header: {stream.available()} of 8 bytes before the end"
            )
        magic, word = _RIO.unpack_from(stream.buf, stream.pos)
        if magic != RECORDIO_MAGIC:
            raise self._error(
                start,
                f"expected the RecordIO magic 0xCED7230A, found 0x{magic:08X}",
                hint="is this data RecordIO-wrapped? (RecordWrapperType: RecordIO)",
            )
        return word >> 29, word & _LENGTH_MASK

    def _part(self, start: int, length: int) -> bytes:
        stream = self._stream
        pad = -length & 3
        padded = 8 + length + pad
        pos = stream.pos
        if length >= _DIRECT_MIN and stream.available() < padded:
            # A big payload not yet buffered: read it straight into its own bytes.
            data = stream.take_exact(pos + 8, length)
            stream.direct = True
            if len(data) < length or not stream.fill(pad, 8):
                got = len(data) + (stream.available() if len(data) == length else 0)
                raise self._truncated(start, length, pad, got)
            stream.pos += pad
            return data
        stream.direct = False
        if not stream.fill(padded):
            raise self._truncated(start, length, pad, max(stream.available() - 8, 0))
        pos = stream.pos
        data = stream.buf[pos + 8 : pos + 8 + length]
        stream.pos = pos + padded
        return data

    def _truncated(self, start: int, length: int, pad: int, got: int) -> RecordError:
        return self._error(
            start,
            f"truncated RecordIO record: the header says {length} bytes of payload "
            f"(+{pad} padding) but only {got} arrived before the end",
        )

    def _one(self) -> bytes | None:
        start = self._stream.offset
        header = self._header(start)
        if header is None:
            return None
        flag, length = header
        if flag == 0:
            return self._part(start, length)
        if flag != 1:
            raise self._error(
                start,
                f"RecordIO length word has flag {flag}: "
                + ("a continuation part with no start part" if flag in (2, 3) else "not a valid flag"),
            )
        parts = [self._part(start, length)]
        while True:
            at = self._stream.offset
            header = self._header(at)
            if header is None:
                raise self._error(at, f"input ended inside the multipart record that starts at {start}")
            flag, length = header
            if flag not in (2, 3):
                raise self._error(
                    at, f"expected a continuation part (flag 2 or 3) of the record at {start}, found {flag}"
                )
            parts.append(self._part(at, length))
            if flag == 3:
                # Writers split a payload where it contains the magic word; put it back.
                joined = _MAGIC_BYTES.join(parts)
                return _view(joined) if self._stream.views else joined


# --- runs of same-length records ----------------------------------------------------------
#
# Fixed-size records are common (images of one size, feature vectors, ...). Their
# headers are one repeated byte pattern: a few strided compares of the buffer check
# a whole run at C speed, and one ``struct`` unpack with a repeated format ("skip the
# header, take L bytes, skip the trailer") cuts all its payloads out in one call,
# about 10 ns a record against ~150 ns for a Python loop over headers.

_RUN_MIN = 16
#: A whole file (memory-mapped, or given as ``bytes``) is one buffer. Parsers take it a
#: pass at a time (up to this many bytes parsed record by record, or records cut out of
#: runs) and hand each pass's list over before the next: one list of every record of a
#: big file would cost fresh memory and cache misses (measured: 300k records of 100 B
#: from ``bytes`` took 199 ns a record in one list against 105 ns from a file read in
#: 1 MiB chunks), and for views, collector passes over a growing heap.
_PASS_BYTES = 1 << 20
_PASS_RECORDS = 8192
#: Runs of TFRecords up to this stride have their CRCs checked in bulk; bigger records
#: are checked one by one (a call per record is then cheap next to the CRC itself, and
#: bulk batches of big records would copy megabytes through fresh memory).
_BULK_CRC_MAX_STRIDE = 4096
_RUN_WINDOW_MAX = 1024
_RUN_MAX_COOLDOWN = 4096
_CUT_BATCH = 1024
_cutters: dict[tuple[int, int, int, int], struct.Struct] = {}


def _same_headers(buf: bytes, start: int, stride: int, header: bytes, count: int) -> bool:
    """Whether the ``count`` records from ``start`` (``stride`` apart) all begin with ``header``."""
    hsize = len(header)
    if not (stride | hsize) & 3:
        words = memoryview(buf)[start : start + count * stride].cast("I")
        step = stride >> 2
        return all(words[k >> 2 :: step].tobytes() == header[k : k + 4] * count for k in range(0, hsize, 4))
    stop = start + (count - 1) * stride + 1
    return all(buf[start + k : stop + k : stride] == header[k : k + 1] * count for k in range(hsize))


def _run_length(buf: bytes, pos: int, stride: int, hsize: int, fit: int) -> int:
    """How many of the ``fit`` whole records from ``pos`` share the first one's header.

    Checks growing windows (16, 32, ... 1024 records), so the cost follows the run's
    length; a window that fails is halved down to ``_RUN_MIN`` to find where it ends.
    """
    header = bytes(buf[pos : pos + hsize])
    done = 0
    window = _RUN_MIN
    while done < fit:
        count = min(window, fit - done)
        if _same_headers(buf, pos + done * stride, stride, header, count):
            done += count
            window = min(window * 2, _RUN_WINDOW_MAX)
        elif count > _RUN_MIN:
            window = count >> 1
        else:
            break
    return done


def _cut(buf: bytes, pos: int, hsize: int, length: int, tsize: int, count: int) -> list[bytes]:
    """The payloads of ``count`` records of ``hsize + length + tsize`` bytes from ``pos``."""
    stride = hsize + length + tsize
    out: list[bytes] = []
    batch = _CUT_BATCH
    while count:
        while batch > count:
            batch >>= 1
        key = (hsize, length, tsize, batch)
        cutter = _cutters.get(key)
        if cutter is None:
            if len(_cutters) >= 256:
                _cutters.clear()
            cutter = _cutters[key] = struct.Struct("<" + f"{hsize}x{length}s{tsize}x" * batch)
        out += cutter.unpack_from(buf, pos)
        pos += batch * stride
        count -= batch
    return out


def _cut_views(buf: bytes, pos: int, hsize: int, length: int, tsize: int, count: int) -> list[bytes]:
    """Like :func:`_cut`, for a ``memoryview`` buffer: the payloads as views of it."""
    stride = hsize + length + tsize
    start = pos + hsize
    return [buf[at : at + length] for at in range(start, start + count * stride, stride)]


@functools.lru_cache(maxsize=128)
def _lanes(value: int, count: int, width: int = 8) -> int:
    """``value`` repeated in ``count`` lanes of ``width`` bytes of one integer (lane 0 lowest)."""
    return int.from_bytes(value.to_bytes(width, "little") * count, "little")


@functools.lru_cache(maxsize=64)
def _unmask_constants(size: int, width: int) -> tuple[int, int, int, int, int, int]:
    """The lane constants :func:`_unmasked_lanes` needs for ``size`` lanes (one cache lookup)."""
    add = 0x100000000 - _MASK_DELTA
    right, left = _lanes(0x7FFF, size, width), _lanes(0xFFFF8000, size, width)
    if width == 8:
        return _lanes(0xFFFFFFFF, size), _lanes(add, size), 0, 0, right, left
    return (
        _lanes(0x7FFFFFFF, size, 4),
        _lanes(add & 0x7FFFFFFF, size, 4),
        _lanes(0x80000000, size, 4),
        _lanes(add & 0x80000000, size, 4),
        right,
        left,
    )


def _unmasked_lanes(stored: int, size: int, width: int) -> int:
    """Unmask every lane of ``stored`` (``size`` masked CRCs in lanes of ``width`` bytes) at once.

    Unmasking subtracts ``_MASK_DELTA`` modulo 2**32 and rotates left by 15. In 8-byte
    lanes the subtraction's borrow stays in the lane's spare high half; 4-byte lanes
    have none, so the sum is taken without the top bit of each lane and that bit is
    put back by XOR (carry-less in the top bit), the usual SIMD-within-a-register add.
    """
    low, add_low, top, add_top, right, left = _unmask_constants(size, width)
    rot = ((stored + add_low) & low) if width == 8 else ((stored & low) + add_low) ^ (stored & top) ^ add_top
    return ((rot >> 17) & right) | ((rot << 15) & left)


def _tfrecord_verified_run(buf: Buffer, pos: int, length: int, fit: int) -> int:
    """How many of the ``fit`` TFRecords from ``pos`` are intact and framed like the first.

    The first record's header (its length and the length's CRC, already checked) is
    taken as every record's. Windows of 16, 32, ... records, up to the power of two
    that stays under ~64 KiB (so the copies stay hot in the CPU cache and the
    constants each size needs are cached), are checked with one CRC pass each (see
    :func:`_tfrecord_window_ok`); a window that fails is halved down to ``_RUN_MIN``
    to find where the good records end, and the caller parses the rest one by one,
    which says what is wrong there. The window check covers the headers as well, so
    no separate comparison of them is needed: a run that ends (a record of another
    length) fails it like a corrupt record does.
    """
    stride = 16 + length
    header = bytes(buf[pos : pos + 12])
    top = max(_RUN_MIN, 1 << (((64 << 10) // stride).bit_length() - 1))
    view = memoryview(buf)
    done = 0
    window = _RUN_MIN
    while True:
        while window > fit - done:
            window >>= 1
        if window < _RUN_MIN:
            return done
        if _tfrecord_window_ok(view, pos + done * stride, header, length, window):
            done += window
            window = min(window * 2, top)
        elif window > _RUN_MIN:
            window >>= 1
        else:
            return done


def _tfrecord_window_ok(view: memoryview, pos: int, header: bytes, length: int, size: int) -> bool:
    """Whether ``size`` TFRecords from ``pos`` all begin with ``header`` and have right data CRCs.

    One CRC pass over a copy instead of ``size`` calls. CRC32C without its initial and
    final inversion (``g``) is linear over GF(2), and for a 4-byte word ``v``,
    ``g(data + v) = Z4(g(data) ^ v)`` where ``Z4`` (four zero bytes) is invertible. So
    in a copy of the window where each stored CRC is replaced by
    ``v = unmask(stored) ^ crc32c(zeros(length))`` (which equals ``g(data)`` exactly
    when the record is intact), ``g(copy)`` is ``g(the headers alone)`` XOR an
    invertible image of each record's error (a wrong data byte, stored CRC or header
    byte): it matches when all records are intact, never when one is wrong, and with
    probability 2**-32 when several errors cancel (the strength of the CRC itself).
    Unmasking runs on all stored CRCs at once, as lanes of one big integer (see
    ``_unmasked_lanes``). When the records are a whole number of 4-byte words long,
    the CRCs are gathered and scattered as strided 32-bit words; otherwise byte by byte.
    """
    stride = 16 + length
    end = pos + size * stride
    first = pos + 12 + length  # the first record's data CRC
    copy = bytearray(view[pos:end])
    if not stride & 3:
        step = stride >> 2
        stored = view[first : first + (size - 1) * stride + 4].cast("I")[::step]
        values = _unmasked_lanes(int.from_bytes(stored, "little"), size, 4)
        values ^= _lanes(_zeros_crc(length), size, 4)
        target = memoryview(copy)[12 + length : 12 + length + (size - 1) * stride + 4]
        target.cast("I")[::step] = memoryview(values.to_bytes(4 * size, "little")).cast("I")
    else:
        lanes = bytearray(8 * size)
        for k in range(4):
            lanes[k::8] = view[first + k : end : stride]
        values = _unmasked_lanes(int.from_bytes(lanes, "little"), size, 8)
        values ^= _lanes(_zeros_crc(length), size)
        packed = values.to_bytes(8 * size, "little")
        for k in range(4):
            copy[12 + length + k :: stride] = packed[k::8]
    # crc32c() continuing from 0xFFFFFFFF starts from a zero register and returns ~g.
    return crc32c(bytes(copy), 0xFFFFFFFF) ^ _headers_g(header, stride, size) == 0xFFFFFFFF


@functools.lru_cache(maxsize=64)
def _headers_g(header: bytes, stride: int, count: int) -> int:
    """``g`` of ``count`` records that are ``header`` followed by zeros (see above)."""
    region = bytearray(count * stride)
    for k, byte in enumerate(header):
        region[k::stride] = bytes((byte,)) * count
    return crc32c(bytes(region), 0xFFFFFFFF) ^ 0xFFFFFFFF


@functools.lru_cache(maxsize=64)
def _zeros_crc(length: int) -> int:
    return crc32c(bytes(length))


class TFRecordReader(RecordReader[bytes]):
    """TFRecord records with CRC checking (``check_crc``) and optional skipping."""

    format = "tfrecord"

    def __init__(
        self,
        source: Source,
        *,
        check_crc: bool = True,
        skip_corrupt: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        views: bool = False,
    ) -> None:
        super().__init__(source, chunk_size=chunk_size, views=views)
        self.check_crc = check_crc
        self.skip_corrupt = skip_corrupt
        self._length_crcs: dict[int, int] = {}

    def _length_crc(self, length: int) -> int:
        # Fixed-size records repeat the same length: remember its CRC.
        crc = self._length_crcs.get(length)
        if crc is None:
            if len(self._length_crcs) > 4096:
                self._length_crcs.clear()
            crc = self._length_crcs[length] = mask(crc32c(_U64.pack(length)))
        return crc

    def _batches(self) -> Iterator[Sequence[bytes]]:
        stream = self._stream
        unpack = _TFH.unpack_from
        unpack_crc = _U32.unpack_from
        known_length_crcs = self._length_crcs
        length_crc = self._length_crc
        check = self.check_crc
        # Without CRC checks the C extension is not even imported (a few ms).
        crc = crc32c_function(any_buffer=stream.views) if check else crc32c
        cut = _cut_views if stream.views else _cut
        delta, low32 = _MASK_DELTA, 0xFFFFFFFF
        cooldown = _RUN_MIN
        while True:
            # Big records, one after another: each read straight from the source into its
            # own bytes; its CRC and the next header come in one small read.
            while stream.direct and stream.fill(12):
                buf, pos = stream.buf, stream.pos
                length, lcrc = unpack(buf, pos)
                if length < _DIRECT_MIN or len(buf) - pos >= 16 + length:
                    break
                if check and lcrc != length_crc(length):
                    break
                start = stream.base + pos
                data = stream.take_exact(pos + 12, length, 16)
                if len(data) < length or not stream.fill(4, 12):
                    raise self._truncated(
                        start, length, len(data) + stream.available() * (len(data) == length)
                    )
                stored = unpack_crc(stream.buf, stream.pos)[0]
                stream.pos += 4
                if check:
                    value = crc(data)
                    if (((value >> 15) | (value << 17)) + delta) & low32 != stored:
                        self._corrupt(start, length, stored, mask(value))
                        continue
                self.count += 1
                yield (data,)
                del data  # before the next big read: its memory can be reused at once
            buf, pos = stream.buf, stream.pos
            size = len(buf)
            horizon = min(size, pos + _PASS_BYTES)
            out: list[bytes] = []
            append = out.append
            next_probe = pos
            while pos + 12 <= horizon:
                length, lcrc = unpack(buf, pos)
                end = pos + 12 + length
                if end + 4 > size:
                    break
                if check and lcrc != (known_length_crcs.get(length) or length_crc(length)):
                    break
                if pos >= next_probe:
                    stride = length + 16
                    fit = min((size - pos) // stride, _PASS_RECORDS)
                    if fit >= _RUN_MIN and (not check or stride <= _BULK_CRC_MAX_STRIDE):
                        # With CRC checks the bulk check covers the headers too.
                        run = (
                            _tfrecord_verified_run(buf, pos, length, fit)
                            if check
                            else _run_length(buf, pos, stride, 12, fit)
                        )
                        if run >= _RUN_MIN:
                            out += cut(buf, pos, 12, length, 4, run)
                            pos += run * stride
                            cooldown = _RUN_MIN
                            if len(out) >= _PASS_RECORDS:
                                break
                            continue
                        # No run here (or a corrupt record at its start): one by one for a while.
                        next_probe = pos + cooldown * stride
                        cooldown = min(cooldown * 2, _RUN_MAX_COOLDOWN)
                data = buf[pos + 12 : end]
                if check:
                    value = crc(data)
                    if (((value >> 15) | (value << 17)) + delta) & low32 != unpack_crc(buf, end)[0]:
                        break
                append(data)
                pos = end + 4
            stream.pos = pos
            if out:
                self.count += len(out)
                yield out
            record = self._one()
            if record is None:
                return
            self.count += 1
            yield (record,)

    def _one(self) -> bytes | None:
        """The next good record (skipping corrupt ones when asked), ``None`` at the end."""
        while True:
            record = self._next_or_corrupt()
            if record is not False:
                return record

    def _next_or_corrupt(self) -> bytes | Literal[False] | None:
        stream = self._stream
        start = stream.offset
        if not stream.fill(12):
            if stream.available() == 0:
                return None
            raise self._error(start, f"truncated TFRecord header: {stream.available()} of 12 bytes")
        length, lcrc = _TFH.unpack_from(stream.buf, stream.pos)
        if self.check_crc and lcrc != self._length_crc(length):
            raise self._error(
                start,
                f"TFRecord length CRC mismatch (length field {length}, stored CRC 0x{lcrc:08X}, "
                f"computed 0x{self._length_crc(length):08X}); the framing after this point cannot be trusted",
            )
        pos = stream.pos
        if length >= _DIRECT_MIN and stream.available() < 16 + length:
            # A big record not yet buffered: its data straight into its own bytes, then
            # its CRC and the next header in one small read.
            data = stream.take_exact(pos + 12, length)
            stream.direct = True
            if len(data) < length or not stream.fill(4, 12):
                got = len(data) + (stream.available() if len(data) == length else 0)
                raise self._truncated(start, length, got)
            stored = _U32.unpack_from(stream.buf, stream.pos)[0]
            stream.pos += 4
        else:
            stream.direct = False
            if not stream.fill(16 + length):
                raise self._truncated(start, length, stream.available() - 12)
            pos = stream.pos
            data = stream.buf[pos + 12 : pos + 12 + length]
            stored = _U32.unpack_from(stream.buf, pos + 12 + length)[0]
            stream.pos = pos + 16 + length
        if self.check_crc:
            computed = masked_crc32c(data)
            if computed != stored:
                self._corrupt(start, length, stored, computed)
                return False
        return data

    def _corrupt(self, start: int, length: int, stored: int, computed: int) -> None:
        """A record whose data CRC is wrong: raise, or (``skip_corrupt``) count and log it."""
        if not self.skip_corrupt:
            raise self._error(
                start,
                f"TFRecord data CRC mismatch ({length} bytes, stored 0x{stored:08X}, "
                f"computed 0x{computed:08X})",
                hint="pass skip_corrupt=True to skip and count corrupt records",
            )
        self.skipped += 1
        if self.skipped <= 10:
            logger.warning(
                "%s: skipping corrupt TFRecord at byte offset %d (%d so far)",
                self._stream.name,
                start,
                self.skipped,
            )

    def _truncated(self, start: int, length: int, got: int) -> RecordError:
        return self._error(
            start,
            f"truncated TFRecord: the header says {length} bytes of data (+4 CRC) but only "
            f"{got} of those {length + 4} arrived before the end",
        )


class ManifestReader(RecordReader[dict[str, Any]]):
    """Augmented manifest lines as dicts.

    With ``record_wrapper="RecordIO"`` (Pipe mode) each attribute arrives as its own
    RecordIO record in ``attribute_names`` order; every ``len(attribute_names)``
    records become one ``{name: bytes}``. With ``"None"`` the input is JSON lines and
    each line is parsed (and narrowed to ``attribute_names`` when given).
    """

    format = "manifest"

    def __init__(
        self,
        source: Source,
        *,
        attribute_names: Sequence[str] | None = None,
        record_wrapper: str = "None",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        views: bool = False,
    ) -> None:
        if record_wrapper not in ("None", "RecordIO"):
            raise ValueError(f"record_wrapper must be 'None' or 'RecordIO', got {record_wrapper!r}")
        if record_wrapper == "RecordIO" and not attribute_names:
            raise ChannelError(
                "reading an augmented manifest in Pipe mode with RecordWrapperType RecordIO needs "
                "attribute_names (the job's AttributeNames, in order) to regroup records into lines"
            )
        self.attribute_names = tuple(attribute_names or ())
        self.record_wrapper = record_wrapper
        super().__init__(source, chunk_size=chunk_size, views=views)

    def _batches(self) -> Iterator[Sequence[dict[str, Any]]]:
        lines = self._regrouped() if self.record_wrapper == "RecordIO" else self._json_lines()
        for line in lines:
            yield (line,)

    def _regrouped(self) -> Iterator[dict[str, Any]]:
        names = self.attribute_names
        width = len(names)
        inner = RecordIOReader(self._stream)
        line_start = self._stream.offset
        group: list[bytes] = []
        for record in chain.from_iterable(inner._batches()):
            if not group:
                line_start = self._stream.offset
            group.append(record)
            if len(group) == width:
                self.count += 1
                yield dict(zip(names, group, strict=True))
                group = []
        if group:
            raise self._error(
                line_start,
                f"the input ended after {len(group)} of {width} attributes "
                f"({', '.join(names)}) of manifest line {self.count + 1}",
                hint="check that attribute_names matches the job's AttributeNames",
            )

    def _json_lines(self) -> Iterator[dict[str, Any]]:
        lines = LineReader(self._stream)
        names = self.attribute_names
        for number, line in enumerate(chain.from_iterable(lines._batches()), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise ChannelError(
                    f"{self._stream.name}: manifest line {number} is not valid JSON: {exc}"
                ) from None
            if not isinstance(value, dict):
                raise ChannelError(f"{self._stream.name}: manifest line {number} is not a JSON object")
            if names:
                missing = [n for n in names if n not in value]
                if missing:
                    raise ChannelError(
                        f"{self._stream.name}: manifest line {number} lacks attribute(s) "
                        + ", ".join(missing)
                    )
                value = {n: value[n] for n in names}
            self.count += 1
            yield value


def open_records(source: Source, format: str = "recordio", **options: Any) -> RecordReader[Any]:
    """A reader of ``format`` (one of :data:`FORMATS`) over ``source``."""
    readers: dict[str, type[RecordReader[Any]]] = {
        "chunks": ChunkReader,
        "lines": LineReader,
        "recordio": RecordIOReader,
        "tfrecord": TFRecordReader,
        "manifest": ManifestReader,
    }
    try:
        reader = readers[format]
    except KeyError:
        raise ChannelError(
            f"unknown record format {format!r}; expected one of {', '.join(FORMATS)}"
        ) from None
    return reader(source, **options)


# --- writers ------------------------------------------------------------------------------


def recordio_header(length: int) -> bytes:
    """The 8-byte header of a single-part RecordIO record of ``length`` bytes."""
    if not 0 <= length <= _LENGTH_MASK:
        raise ValueError(f"a RecordIO record holds at most {_LENGTH_MASK} bytes, got {length}")
    return _RIO.pack(RECORDIO_MAGIC, length)


def recordio_padding(length: int) -> bytes:
    """The zero bytes that follow a payload of ``length`` bytes."""
    return b"\0" * (-length & 3)


def encode_recordio(payload: bytes, *, split_magic: bool = False) -> bytes:
    """One RecordIO record. ``split_magic`` writes MXNet's multipart form, splitting the
    payload where it holds the magic word at a 4-byte boundary (what dmlc's writer does,
    so that readers that resynchronise on the magic never land inside a payload)."""
    length = len(payload)
    if split_magic:
        cuts = [i for i in range(0, length - 3, 4) if payload[i : i + 4] == _MAGIC_BYTES]
        if cuts:
            pieces, start = [], 0
            for number, cut in enumerate(cuts):
                flag = 1 if number == 0 else 2
                pieces.append(_RIO.pack(RECORDIO_MAGIC, (flag << 29) | (cut - start)))
                pieces.append(payload[start:cut])
                start = cut + 4
            tail = length - start
            pieces += [_RIO.pack(RECORDIO_MAGIC, (3 << 29) | tail), payload[start:], recordio_padding(tail)]
            return b"".join(pieces)
    return recordio_header(length) + payload + recordio_padding(length)


def encode_tfrecord(payload: bytes) -> bytes:
    """One TFRecord record (with both masked CRC32Cs)."""
    length = _U64.pack(len(payload))
    return b"".join((length, _U32.pack(masked_crc32c(length)), payload, _U32.pack(masked_crc32c(payload))))


def write_records(sink: IO[bytes] | io.RawIOBase, records: Iterable[bytes], format: str = "recordio") -> int:
    """Write ``records`` as ``recordio`` or ``tfrecord`` to ``sink``; returns bytes written."""
    encoders: dict[str, Callable[[bytes], bytes]] = {"recordio": encode_recordio, "tfrecord": encode_tfrecord}
    if format not in encoders:
        raise ValueError(f"write_records writes 'recordio' or 'tfrecord', not {format!r}")
    encode = encoders[format]
    total = 0
    batch: list[bytes] = []
    size = 0
    for record in records:
        encoded = encode(record)
        batch.append(encoded)
        size += len(encoded)
        if size >= DEFAULT_CHUNK_SIZE:
            sink.write(b"".join(batch))
            total += size
            batch, size = [], 0
    if batch:
        sink.write(b"".join(batch))
        total += size
    return total
