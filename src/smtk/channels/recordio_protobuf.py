"""RecordIO-protobuf (``application/x-recordio-protobuf``): Amazon ``Record`` messages in RecordIO.

The format of SageMaker's built-in algorithms and of the SageMaker SDK's
``write_numpy_to_dense_tensor`` / ``write_spmatrix_to_sparse_tensor`` / ``read_records``:
each RecordIO record holds one ``aialgs.data.Record`` protobuf message whose ``features``
and ``label`` maps name ``Value`` messages, each holding a ``Float32Tensor``,
``Float64Tensor`` or ``Int32Tensor`` (``values``; ``keys`` and ``shape`` for sparse rows).

Reading, a batch of records at a time, into numpy (and scipy.sparse for sparse rows)::

    from smtk.channels.recordio_protobuf import read_protobuf

    for batch in read_protobuf(smtk.channels.get("train"), batch_size=1024):
        batch.features   # numpy (n, d) or scipy.sparse.csr_matrix (n, columns)
        batch.labels     # numpy (n,) (or (n, k)), None when the records have no label

``source`` is a ``Channel`` (File, FastFile or Pipe mode), an epoch (``FileEpoch``,
``PipeEpoch``), a path, a file descriptor, ``bytes`` or a binary file object. Records are
streamed (never a whole file in memory) through :mod:`smtk.channels.records`' RecordIO
reader. Writing: :func:`write_dense`, :func:`write_sparse` (or :func:`write_protobuf`,
which picks one), byte for byte what the SDK's writers produce.

The schema is built at run time with the protobuf API (no generated ``_pb2`` module): the
real ``Record`` (:func:`record_class`, for :func:`read_protobuf_records`), and *views*
of it that the protobuf library parses from the same bytes. In a view, a tensor's packed
``values`` are declared ``bytes`` (the wire encoding of a packed field and of a bytes
field is the same), so float values come out as the raw little-endian bytes numpy wraps
as they are. Used message by message, the library costs 10-15 us a record here (a parse,
map lookups, a numpy conversion per record: ``benchmarks/recordio_protobuf.py``); the
batch decoding below does almost no Python work per record. A whole batch is parsed with one
library call: protobuf merges concatenated messages, so in a view whose ``features``
field is a single entry, the concatenated records give every record's key and tensor
chunks, in order; an empty *separator* chunk after each record
(real packed chunks are never empty) says which chunks are whose, empty sparse rows
included. The batch is used only when it checks out (one entry named ``feature_key`` per
record, one tensor kind, a separator after each record, one shape, keys matching values);
anything else is decoded record by record with the real schema, which also says which
record is wrong.

Needs the ``protobuf`` extra (``pip install 'smtk[protobuf]'``: protobuf, numpy, scipy).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import IO, Any, NamedTuple

from smtk.channels.channel import Channel, FileEpoch
from smtk.channels.pipe import PipeEpoch
from smtk.channels.records import (
    DEFAULT_CHUNK_SIZE,
    RecordError,
    Source,
    open_records,
    write_records,
)
from smtk.errors import ChannelError

CONTENT_TYPE = "application/x-recordio-protobuf"
DEFAULT_BATCH_SIZE = 1024
#: The ``Value`` oneof's tensor fields: (field name, field number, numpy dtype).
TENSOR_KINDS: tuple[tuple[str, int, str], ...] = (
    ("float32_tensor", 2, "<f4"),
    ("float64_tensor", 3, "<f8"),
    ("int32_tensor", 7, "<i4"),
)
_DTYPES = {name: dtype for name, _, dtype in TENSOR_KINDS}
_PACKAGE = "aialgs.data"
_VIEW_PACKAGE = "smtk.recordio_protobuf_view"
_EXTRA_HINT = "install the protobuf extra: pip install 'smtk[protobuf]'"


class SparseRows(NamedTuple):
    """Sparse rows in CSR form, for when scipy is not installed (else a ``csr_matrix``)."""

    data: Any
    indices: Any
    indptr: Any
    shape: tuple[int, int]


@dataclass(frozen=True)
class RecordBatch:
    """Consecutive records of one source, decoded.

    ``features``: a numpy array ``(n, d)`` (``(n, *shape)`` when the records carry a dense
    ``shape``), or for sparse records a ``scipy.sparse.csr_matrix`` ``(n, columns)``
    (:class:`SparseRows` without scipy). ``labels``: numpy ``(n,)`` for one label value a
    record, ``(n, k)`` for ``k``; ``None`` when no record has a label. ``start``: the
    index of the first record in ``source``.
    """

    features: Any
    labels: Any
    source: str
    start: int

    def __len__(self) -> int:
        return int(self.features.shape[0])


# --- schema -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Classes:
    record: Any  # the real aialgs.data.Record
    flat: Any  # a batch of concatenated records, merged (features/label: one entry each)
    int32_packed: Any  # one packed int32 field 1
    uint64_packed: Any  # one packed uint64 field 1
    write_record: Any  # writer's view: float values as raw bytes, ints/keys/shape typed
    decode_error: type[Exception]


@functools.cache
def _classes() -> _Classes:
    """Build the message classes (once): the real schema and the views, in a private pool
    (so that a ``record_pb2`` of the SDK in the same process never conflicts)."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
    except ImportError:
        raise ChannelError(f"reading or writing {CONTENT_TYPE} needs protobuf", hint=_EXTRA_HINT) from None
    F = descriptor_pb2.FieldDescriptorProto
    repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL

    def field(msg: Any, name: str, number: int, kind: int, label: int, **extra: Any) -> Any:
        added = msg.field.add(name=name, number=number, type=kind, label=label, **extra)
        if label == repeated and kind not in (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE):
            added.options.packed = True
        return added

    # The real schema (record.proto of the SDK and the built-in algorithms), proto2.
    real = descriptor_pb2.FileDescriptorProto(name="smtk/aialgs_record.proto", package=_PACKAGE)
    real.syntax = "proto2"
    value_kinds = {
        "float32_tensor": F.TYPE_FLOAT,
        "float64_tensor": F.TYPE_DOUBLE,
        "int32_tensor": F.TYPE_INT32,
    }
    for name, _, _ in TENSOR_KINDS:
        tensor = real.message_type.add(name=_camel(name))
        field(tensor, "values", 1, value_kinds[name], repeated)
        field(tensor, "keys", 2, F.TYPE_UINT64, repeated)
        field(tensor, "shape", 3, F.TYPE_UINT64, repeated)
    raw = real.message_type.add(name="Bytes")
    field(raw, "value", 1, F.TYPE_BYTES, repeated)
    field(raw, "content_type", 2, F.TYPE_STRING, optional)
    value = real.message_type.add(name="Value")
    value.oneof_decl.add(name="value")
    for name, number, _ in TENSOR_KINDS:
        field(
            value,
            name,
            number,
            F.TYPE_MESSAGE,
            optional,
            type_name=f".{_PACKAGE}.{_camel(name)}",
            oneof_index=0,
        )
    field(value, "bytes", 9, F.TYPE_MESSAGE, optional, type_name=f".{_PACKAGE}.Bytes", oneof_index=0)
    record = real.message_type.add(name="Record")
    for name, number, entry in (("features", 1, "FeaturesEntry"), ("label", 2, "LabelEntry")):
        nested = record.nested_type.add(name=entry)
        nested.options.map_entry = True
        field(nested, "key", 1, F.TYPE_STRING, optional)
        field(nested, "value", 2, F.TYPE_MESSAGE, optional, type_name=f".{_PACKAGE}.Value")
        field(record, name, number, F.TYPE_MESSAGE, repeated, type_name=f".{_PACKAGE}.Record.{entry}")
    for name, number in (("uid", 3), ("metadata", 4), ("configuration", 5)):
        field(record, name, number, F.TYPE_STRING, optional)

    # Views: the same wire format, declared for fast decoding and encoding.
    view = descriptor_pb2.FileDescriptorProto(name="smtk/aialgs_record_view.proto", package=_VIEW_PACKAGE)
    view.syntax = "proto2"
    at = f".{_VIEW_PACKAGE}."
    raw_tensor = view.message_type.add(name="RawTensor")
    for name, number in (("values", 1), ("keys", 2), ("shape", 3)):
        field(raw_tensor, name, number, F.TYPE_BYTES, repeated)
    raw_value = view.message_type.add(name="RawValue")
    for name, number, _ in TENSOR_KINDS:  # no oneof: each kind merges on its own
        field(raw_value, name, number, F.TYPE_MESSAGE, optional, type_name=at + "RawTensor")
    # A Bytes value, only to see that a record has one (its field 1 is bytes too).
    field(raw_value, "bytes", 9, F.TYPE_MESSAGE, optional, type_name=at + "RawTensor")
    flat_entry = view.message_type.add(name="FlatEntry")
    field(flat_entry, "key", 1, F.TYPE_STRING, repeated)
    field(flat_entry, "value", 2, F.TYPE_MESSAGE, optional, type_name=at + "RawValue")
    flat = view.message_type.add(name="Flat")
    field(flat, "features", 1, F.TYPE_MESSAGE, optional, type_name=at + "FlatEntry")
    field(flat, "label", 2, F.TYPE_MESSAGE, optional, type_name=at + "FlatEntry")
    for name, kind in (("Int32Packed", F.TYPE_INT32), ("Uint64Packed", F.TYPE_UINT64)):
        field(view.message_type.add(name=name), "values", 1, kind, repeated)
    for name, kind in (("WriteFloatTensor", F.TYPE_BYTES), ("WriteIntTensor", F.TYPE_INT32)):
        tensor = view.message_type.add(name=name)
        field(tensor, "values", 1, kind, repeated)
        field(tensor, "keys", 2, F.TYPE_UINT64, repeated)
        field(tensor, "shape", 3, F.TYPE_UINT64, repeated)
    write_value = view.message_type.add(name="WriteValue")
    for name, number, _ in TENSOR_KINDS:
        kind_name = "WriteIntTensor" if name == "int32_tensor" else "WriteFloatTensor"
        field(write_value, name, number, F.TYPE_MESSAGE, optional, type_name=at + kind_name)
    write_entry = view.message_type.add(name="WriteEntry")
    field(write_entry, "key", 1, F.TYPE_STRING, optional)
    field(write_entry, "value", 2, F.TYPE_MESSAGE, optional, type_name=at + "WriteValue")
    write_record = view.message_type.add(name="WriteRecord")
    field(write_record, "features", 1, F.TYPE_MESSAGE, repeated, type_name=at + "WriteEntry")
    field(write_record, "label", 2, F.TYPE_MESSAGE, repeated, type_name=at + "WriteEntry")

    pool = descriptor_pool.DescriptorPool()
    pool.Add(real)
    pool.Add(view)

    def cls(full_name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

    return _Classes(
        record=cls(f"{_PACKAGE}.Record"),
        flat=cls(f"{_VIEW_PACKAGE}.Flat"),
        int32_packed=cls(f"{_VIEW_PACKAGE}.Int32Packed"),
        uint64_packed=cls(f"{_VIEW_PACKAGE}.Uint64Packed"),
        write_record=cls(f"{_VIEW_PACKAGE}.WriteRecord"),
        decode_error=message.DecodeError,
    )


def _camel(name: str) -> str:
    return {
        "float32_tensor": "Float32Tensor",
        "float64_tensor": "Float64Tensor",
        "int32_tensor": "Int32Tensor",
    }[name]


def record_class() -> Any:
    """The ``aialgs.data.Record`` message class (the SDK's ``record_pb2.Record`` schema)."""
    return _classes().record


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ChannelError(f"decoding {CONTENT_TYPE} to arrays needs numpy", hint=_EXTRA_HINT) from None
    return numpy


def _varint(value: int) -> bytes:
    """A protobuf varint (to frame concatenated packed chunks as one field for the library)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _packed(message_class: Any, chunk: bytes) -> Any:
    """The library's decoding of ``chunk`` (packed varints) as field 1 of ``message_class``."""
    return message_class.FromString(b"\x0a" + _varint(len(chunk)) + chunk).values


def _records_of(np: Any, chunks: list[bytes], count: int) -> tuple[list[bytes], Any] | None:
    """Chunks of ``count`` records, each record's closed by an empty separator chunk (which
    joins to nothing), and each record's end in their joined bytes; ``None`` if the
    separators do not come out ``count`` (a record with an empty chunk of its own)."""
    lengths = np.fromiter(map(len, chunks), np.int64, len(chunks))
    separators = np.flatnonzero(lengths == 0)
    if separators.size != count:
        return None
    return chunks, np.cumsum(lengths)[separators]


def _varint_counts(np: Any, joined: bytes | bytearray, ends: Any) -> Any:
    """How many packed varints each record's bytes (up to ``ends``) hold: one for each
    byte without the continuation bit (the protobuf library decodes the values)."""
    last_bytes = np.flatnonzero(np.frombuffer(joined, np.uint8) < 0x80)
    return np.diff(np.searchsorted(last_bytes, ends), prepend=0)


@dataclass(frozen=True)
class _Layout:
    """The fields a batch's first record uses (its separator marks those)."""

    kind: str
    keys: bool
    shape: bool
    label: str | None

    @classmethod
    def of(cls, record: Any) -> _Layout | None:
        """The layout of ``record`` (parsed with the flat view); ``None`` unless its
        features hold one tensor."""
        features = record.features.value.ListFields()
        if len(features) != 1 or features[0][0].name not in _DTYPES:
            return None
        kind = features[0][0].name
        tensor = getattr(record.features.value, kind)
        labels = record.label.value.ListFields()
        label = labels[0][0].name if len(labels) == 1 and len(record.label.key) else None
        return cls(kind, bool(len(tensor.keys) or len(tensor.shape)), bool(len(tensor.shape)), label)

    def separator(self, flat: Any) -> bytes:
        message = flat()
        tensor = getattr(message.features.value, self.kind)
        tensor.values.append(b"")
        if self.keys:
            tensor.keys.append(b"")
        if self.shape:
            tensor.shape.append(b"")
        if self.label is not None:
            getattr(message.label.value, self.label).values.append(b"")
        return bytes(message.SerializeToString())


def _split(
    np: Any, entry: Any, key: str, kind: str, count: int, keys: bool, shape: bool
) -> tuple[tuple[list[bytes], Any], tuple[list[bytes], Any], tuple[list[bytes], Any]] | None:
    """(chunks, each record's end in their bytes) of the values, keys and shapes of a merged
    entry whose ``count`` records each hold one entry ``key`` with a tensor of ``kind``;
    ``None`` if they do not (another key, several entries, another kind, fields the
    separators do not mark)."""
    names = list(entry.key)
    if len(names) != count or names.count(key) != count:
        return None
    value = entry.value
    if value.HasField("bytes"):
        return None
    for other, _, _ in TENSOR_KINDS:
        if other != kind and value.HasField(other):
            return None
    tensor = getattr(value, kind)
    out: list[tuple[list[bytes], Any]] = []
    for chunks, marked in ((tensor.values, True), (tensor.keys, keys), (tensor.shape, shape)):
        if not marked:
            if len(chunks):
                return None
            out.append(([], None))
            continue
        split = _records_of(np, list(chunks), count)
        if split is None:
            return None
        out.append(split)
    return out[0], out[1], out[2]


# --- reading ------------------------------------------------------------------------------

#: ``locate(k, problem)``: the error for record ``k`` of the batch being decoded.
Locate = Callable[[int, str], RecordError]


def read_protobuf(
    source: Channel | FileEpoch | PipeEpoch | Source,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    sparse: bool | None = None,
    feature_key: str = "values",
    label_key: str = "values",
    epoch: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[RecordBatch]:
    """Batches of up to ``batch_size`` records of ``source`` (a batch never spans two files).

    ``sparse``: ``None`` gives a CSR matrix for a batch with sparse records (``keys``) and
    an array otherwise; ``True`` always CSR; ``False`` always dense (sparse rows filled in,
    using their ``shape``). ``feature_key``/``label_key``: the map entries read (other
    entries are ignored). ``epoch``: the epoch read when ``source`` is a ``Channel``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # Built now, so that a missing protobuf or numpy is reported before anything is opened.
    decoder = _BatchDecoder(sparse=sparse, feature_key=feature_key, label_key=label_key)
    return decoder.read(_sources(source, epoch=epoch, chunk_size=chunk_size), batch_size)


def decode_payloads(
    payloads: Iterable[bytes],
    source: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    sparse: bool | None = None,
    feature_key: str = "values",
    label_key: str = "values",
) -> Iterator[RecordBatch]:
    """Batches of RecordIO payloads already read (``source`` names them in errors); what
    ``ChannelDataset`` uses after sharding records between consumers."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    decoder = _BatchDecoder(sparse=sparse, feature_key=feature_key, label_key=label_key)
    return decoder.stream(source, iter(payloads), batch_size)


def read_protobuf_records(
    source: Channel | FileEpoch | PipeEpoch | Source, *, epoch: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[Any]:
    """Every record of ``source`` as an ``aialgs.data.Record`` message (uid, metadata, ...)."""
    classes = _classes()
    parse = classes.record.FromString
    for name, payloads in _sources(source, epoch=epoch, chunk_size=chunk_size):
        offset = 0
        for index, payload in enumerate(payloads):
            try:
                message = parse(payload)
            except classes.decode_error as exc:
                raise _not_a_record(name, offset, index, exc) from None
            offset += _framed(len(payload))
            yield message


def _not_a_record(source: str, offset: int, index: int, exc: Exception) -> RecordError:
    return RecordError(
        source,
        offset,
        f"record {index}: expected an {_PACKAGE}.Record protobuf message ({CONTENT_TYPE}), "
        f"found bytes protobuf cannot parse ({exc})",
        hint="is this channel's data RecordIO-protobuf?",
    )


def _framed(length: int) -> int:
    """Bytes a single-part RecordIO record of a ``length``-byte payload takes."""
    return 8 + length + (-length & 3)


def _sources(
    source: Channel | FileEpoch | PipeEpoch | Source, *, epoch: int, chunk_size: int
) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(name, RecordIO payloads) for each file or stream of ``source``, opened one at a time."""
    if isinstance(source, Channel):
        check_content_type(source)
        with source.epoch(epoch, chunk_size=chunk_size) as opened:
            yield from _sources(opened, epoch=epoch, chunk_size=chunk_size)
        return
    if isinstance(source, FileEpoch):
        for path in source.files:
            yield from _sources(path, epoch=epoch, chunk_size=chunk_size)
        return
    with open_records(source, "recordio", chunk_size=chunk_size) as reader:
        if isinstance(source, PipeEpoch) and source.record_wrapper == "RecordIO":
            # The platform wrapped each file of the channel in one RecordIO record: each of
            # those is a RecordIO-protobuf stream of its own.
            for number, wrapped in enumerate(reader):
                with open_records(wrapped, "recordio", chunk_size=chunk_size) as inner:
                    yield f"{reader.source_name} (wrapped record {number})", iter(inner)
            return
        yield reader.source_name, iter(reader)


def check_content_type(channel: Channel) -> None:
    """Raise a ``ChannelError`` if ``channel`` declares a ContentType other than RecordIO-protobuf."""
    found = channel.content_type
    if found is None or found.split(";")[0].strip().lower() == CONTENT_TYPE:
        return
    raise ChannelError(
        f"channel {channel.name!r}: ContentType is {found!r} in inputdataconfig.json; "
        f"reading it as RecordIO-protobuf expects {CONTENT_TYPE!r}",
        hint="read it with a reader of its own format, or fix the channel's ContentType",
    )


class _BatchDecoder:
    """Decodes lists of ``Record`` payloads into :class:`RecordBatch` objects."""

    def __init__(self, *, sparse: bool | None, feature_key: str, label_key: str) -> None:
        self.classes = _classes()
        self.np = _numpy()
        self.sparse = sparse
        self.feature_key = feature_key
        self.label_key = label_key
        self._separators: dict[_Layout, bytes] = {}

    def read(self, sources: Iterator[tuple[str, Iterator[bytes]]], batch_size: int) -> Iterator[RecordBatch]:
        for name, payloads in sources:
            yield from self.stream(name, payloads, batch_size)

    def stream(self, name: str, payloads: Iterator[bytes], batch_size: int) -> Iterator[RecordBatch]:
        """Batches of ``payloads`` (the records of source ``name``); errors say where."""
        start = 0
        offset = 0

        def locate(k: int, problem: str) -> RecordError:
            at = offset + sum(_framed(len(p)) for p in batch[:k])
            return RecordError(name, at, f"record {start + k}: {problem}")

        while True:
            batch = list(islice(payloads, batch_size))
            if not batch:
                return
            yield self.decode(batch, name, start, locate)
            start += len(batch)
            # Each record: an 8-byte header, the payload padded to 4 bytes.
            lengths = self.np.fromiter(map(len, batch), self.np.int64, len(batch))
            offset += int(((lengths + 3) & ~3).sum()) + 8 * len(batch)

    def decode(self, payloads: Sequence[bytes], name: str, start: int, locate: Locate) -> RecordBatch:
        """One batch: one merged parse when it checks out, else record by record."""
        decoded = self._merged(payloads) or self._one_by_one(payloads, locate)
        return RecordBatch(decoded[0], decoded[1], name, start)

    # -- the merged parse --------------------------------------------------------------

    def _merged(self, payloads: Sequence[bytes]) -> tuple[Any, Any] | None:
        """The whole batch from one library parse; ``None`` if it does not check out (then
        each record is decoded with the real schema, which also names a broken one).

        Protobuf merges concatenated messages: parsed with the flat view, the batch gives
        every record's keys and value, keys and shape chunks, in order. After each record
        comes a *separator*, a message with one empty chunk in each of the fields the first
        record uses (real packed chunks are never empty), so the chunks between two
        separators are one record's, empty rows included. A record that uses other fields
        leaves them without separators, and the batch does not check out.
        """
        classes = self.classes
        try:
            layout = _Layout.of(classes.flat.FromString(payloads[0]))
            if layout is None:
                return None
            separator = self._separators.get(layout)
            if separator is None:
                separator = self._separators[layout] = layout.separator(classes.flat)
            merged = classes.flat.FromString(separator.join(payloads) + separator)
        except classes.decode_error:
            return None
        count = len(payloads)
        features = self._merged_features(merged.features, layout, count)
        if features is None:
            return None
        entry = merged.label
        if layout.label is None:
            if len(entry.key) or entry.HasField("value"):
                return None
            return features, None
        found = _split(self.np, entry, self.label_key, layout.label, count, False, False)
        if found is None:
            return None
        labels, label_counts = self._values(layout.label, *found[0])
        if labels is None or not label_counts[0] or (label_counts != label_counts[0]).any():
            return None
        return features, labels if label_counts[0] == 1 else labels.reshape(count, -1)

    def _merged_features(self, entry: Any, layout: _Layout, count: int) -> Any:
        np = self.np
        found = _split(np, entry, self.feature_key, layout.kind, count, layout.keys, layout.shape)
        if found is None:
            return None
        (values, value_ends), (key_chunks, key_ends), (shapes, shape_ends) = found
        data, per_record = self._values(layout.kind, values, value_ends)
        if data is None:
            return None
        shape: tuple[int, ...] = ()
        if layout.shape:
            # Every record has the same shape.
            joined = b"".join(shapes)
            width = len(joined) // count
            if joined != joined[:width] * count or (np.diff(shape_ends, prepend=0) != width).any():
                return None
            shape = tuple(int(n) for n in _packed(self.classes.uint64_packed, joined[:width]))
        size = math.prod(shape) if shape else None
        if not layout.keys and (size is None or (per_record == size).all()):
            return self._dense_batch(data, per_record, shape, count)
        return self._keyed_batch(data, per_record, key_chunks, key_ends, size, count)

    def _values(self, kind: str, chunks: list[bytes], ends: Any) -> tuple[Any, Any]:
        """All values in ``chunks`` and each record's count (``ends``: each record's end, in
        bytes); ``(None, None)`` if a record's bytes are not a whole number of values."""
        np = self.np
        # A bytearray: numpy arrays over it are writable (torch.from_numpy wants that).
        joined = bytearray().join(chunks)
        if kind == "int32_tensor":
            data = np.array(_packed(self.classes.int32_packed, bytes(joined)), np.int32)
            counts = _varint_counts(np, joined, ends)
            return (data, counts) if data.size == counts.sum() else (None, None)
        dtype = np.dtype(_DTYPES[kind])
        lengths = np.diff(ends, prepend=0)
        if (lengths % dtype.itemsize).any():
            return None, None
        return np.frombuffer(joined, dtype), lengths // dtype.itemsize

    def _dense_batch(self, data: Any, per_record: Any, shape: tuple[int, ...], count: int) -> Any:
        np = self.np
        if (per_record != per_record[0]).any():
            return None
        if self.sparse:
            width = int(per_record[0])
            columns = np.tile(np.arange(width, dtype=np.int64), count)
            return self._sparse_batch(data, columns, per_record, (count, width))
        return data.reshape(count, *(shape or (-1,)))

    def _keyed_batch(
        self, data: Any, per_record: Any, key_chunks: list[bytes], key_ends: Any, size: int | None, count: int
    ) -> Any:
        np = self.np
        if size is None:
            return None
        key_bytes = b"".join(key_chunks)
        indices = np.array(_packed(self.classes.uint64_packed, key_bytes), np.uint64)
        if indices.size != data.size or (_varint_counts(np, key_bytes, key_ends) != per_record).any():
            return None
        if indices.size and int(indices.max()) >= size:
            return None
        return self._sparse_batch(data, indices.astype(np.int64), per_record, (count, size))

    def _sparse_batch(self, data: Any, indices: Any, per_record: Any, shape: tuple[int, int]) -> Any:
        np = self.np
        indptr = np.zeros(shape[0] + 1, np.int64)
        np.cumsum(per_record, out=indptr[1:])
        if self.sparse is False:
            dense = np.zeros(shape, data.dtype)
            rows = np.repeat(np.arange(shape[0]), per_record)
            dense[rows, indices] = data
            return dense
        try:
            from scipy.sparse import csr_matrix
        except ImportError:
            return SparseRows(data, indices, indptr, shape)
        return csr_matrix((data, indices, indptr), shape=shape)

    # -- record by record --------------------------------------------------------------

    def _one_by_one(self, payloads: Sequence[bytes], locate: Locate) -> tuple[Any, Any]:
        """Decode each record with the real schema; any inconsistency names its record."""
        np = self.np
        parse = self.classes.record.FromString
        decode_error = self.classes.decode_error
        rows: list[_Row] = []
        labels: list[Any] = []
        for k, payload in enumerate(payloads):
            try:
                record = parse(payload)
            except decode_error as exc:
                raise locate(
                    k,
                    f"expected an {_PACKAGE}.Record protobuf message ({CONTENT_TYPE}), "
                    f"found bytes protobuf cannot parse ({exc})",
                ) from None
            rows.append(self._row(record.features, self.feature_key, "features", k, locate))
            if self.label_key in record.label:
                if len(labels) != k:
                    raise locate(
                        k, f"has a label {self.label_key!r}, but the records before it in its batch have none"
                    )
                label = self._row(record.label, self.label_key, "label", k, locate)
                if label.keys is not None:
                    raise locate(k, "has a sparse label (with keys); labels are read as dense values")
                labels.append(label)
            elif labels:
                raise locate(
                    k, f"has no label {self.label_key!r}, but the records before it in its batch have one"
                )
        features = self._assemble(rows, locate)
        if not labels:
            return features, None
        first = labels[0]
        for k, label in enumerate(labels):
            if label.dtype != first.dtype:
                raise locate(k, f"has a {label.kind} label; the first record of its batch has {first.kind}")
            if label.values.size != first.values.size:
                raise locate(
                    k,
                    f"has {label.values.size} label values; the first record of its batch has "
                    f"{first.values.size}",
                )
        stacked = np.stack([label.values for label in labels])
        return features, stacked.reshape(len(labels)) if stacked.shape[1] == 1 else stacked

    def _row(self, entries: Any, key: str, what: str, k: int, locate: Locate) -> _Row:
        np = self.np
        if key not in entries:
            present = ", ".join(repr(name) for name in sorted(entries)) or "none"
            raise locate(k, f"has no {what} entry {key!r} (its {what} entries: {present})")
        value = entries[key]
        kind = value.WhichOneof("value")
        if kind is None or kind == "bytes":
            found = "no tensor" if kind is None else "raw bytes (a Bytes value)"
            raise locate(
                k,
                f"its {what} entry {key!r} holds {found}; expected a Float32Tensor, Float64Tensor "
                "or Int32Tensor (read_protobuf_records() gives the messages as they are)",
            )
        tensor = getattr(value, kind)
        values = np.array(tensor.values, _DTYPES[kind])
        shape = tuple(int(n) for n in tensor.shape)
        keys = np.array(tensor.keys, np.uint64) if len(tensor.keys) else None
        if keys is None and shape and math.prod(shape) != values.size:
            keys = np.zeros(0, np.uint64)  # values and keys both empty: an empty sparse row
            if values.size:
                raise locate(
                    k, f"has {values.size} dense values, but its shape {list(shape)} holds {math.prod(shape)}"
                )
        if keys is not None:
            if len(keys) != values.size:
                raise locate(k, f"is sparse with {len(keys)} keys but {values.size} values")
            if not shape:
                raise locate(k, "is sparse (has keys) but has no shape; expected shape [columns]")
        return _Row(kind, values, keys, shape)

    def _assemble(self, rows: list[_Row], locate: Locate) -> Any:
        np = self.np
        first = rows[0]
        for k, row in enumerate(rows):
            if row.kind != first.kind:
                raise locate(k, f"has {row.kind} features; the first record of its batch has {first.kind}")
        sparse = self.sparse
        if sparse is None:
            sparse = any(row.keys is not None for row in rows)
        if sparse:
            return self._csr(rows, locate)
        width = first.size
        for k, row in enumerate(rows):
            if row.size != width or row.dense_shape != first.dense_shape:
                raise locate(
                    k,
                    f"has features of shape {list(row.dense_shape)}; the first record of its batch has "
                    f"{list(first.dense_shape)} (the dense rows of a batch must match; sparse=True reads "
                    "them as CSR)",
                )
        dense = np.zeros((len(rows), width), first.dtype)
        for k, row in enumerate(rows):
            if row.keys is None:
                dense[k] = row.values
            else:
                self._check_keys(row, width, k, locate)
                dense[k, row.keys.astype(np.int64)] = row.values
        return dense.reshape(len(rows), *first.dense_shape)

    def _csr(self, rows: list[_Row], locate: Locate) -> Any:
        np = self.np
        columns = rows[0].size
        for k, row in enumerate(rows):
            if row.size != columns:
                raise locate(k, f"has {row.size} columns; the first record of its batch has {columns}")
            if row.keys is not None:
                self._check_keys(row, columns, k, locate)
        data = np.concatenate([row.values for row in rows])
        indices = np.concatenate(
            [row.keys.astype(np.int64) if row.keys is not None else np.arange(row.size) for row in rows]
        )
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([row.values.size for row in rows], out=indptr[1:])
        shape = (len(rows), columns)
        try:
            from scipy.sparse import csr_matrix
        except ImportError:
            return SparseRows(data, indices, indptr, shape)
        return csr_matrix((data, indices, indptr), shape=shape)

    @staticmethod
    def _check_keys(row: _Row, size: int, k: int, locate: Locate) -> None:
        if row.keys is not None and row.keys.size and int(row.keys.max()) >= size:
            raise locate(
                k, f"has key {int(row.keys.max())}, outside its shape {list(row.shape)} ({size} values)"
            )


@dataclass
class _Row:
    """One record's tensor: values, keys (``None``: dense) and shape."""

    kind: str
    values: Any
    keys: Any
    shape: tuple[int, ...]

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    @property
    def size(self) -> int:
        """Values of the dense row (the product of the shape, else the values' count)."""
        return math.prod(self.shape) if self.shape else int(self.values.size)

    @property
    def dense_shape(self) -> tuple[int, ...]:
        return self.shape if self.shape else (int(self.values.size),)


# --- writing ------------------------------------------------------------------------------


def write_protobuf(sink: IO[bytes], array: Any, labels: Any = None) -> int:
    """Write ``array`` (2-D numpy, or a scipy sparse matrix) with optional ``labels`` (one per
    row) as RecordIO-protobuf, one record per row; returns the bytes written."""
    if hasattr(array, "tocsr"):
        return write_sparse(sink, array, labels)
    return write_dense(sink, array, labels)


def encode_protobuf(array: Any, labels: Any = None) -> bytes:
    """The RecordIO-protobuf bytes of ``array`` (a 1-D array is one row), as the reference's
    ``encoders.array_to_recordio_protobuf`` gives them."""
    if len(array.shape) == 1:
        array = array.reshape(1, array.shape[0])
    sink = io.BytesIO()
    write_protobuf(sink, array, labels)
    return sink.getvalue()


def write_dense(sink: IO[bytes], array: Any, labels: Any = None) -> int:
    """One record per row of the 2-D ``array``: what ``write_numpy_to_dense_tensor`` writes.

    dtypes: float32 -> Float32Tensor, float64 -> Float64Tensor, integers -> Int32Tensor
    (their values must fit in int32), for the features and the labels alike.
    """
    np = _numpy()
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"write_dense writes a 2-D array (one record per row), got shape {array.shape}")
    kind, array = _tensor_kind(np, array, "features")
    rows = array.shape[0]
    label_kind, label_values = _labels(np, labels, rows)
    return write_records(sink, _records(kind, array, label_kind, label_values, None), "recordio")


def write_sparse(sink: IO[bytes], matrix: Any, labels: Any = None) -> int:
    """One sparse record (values, keys, shape ``[columns]``) per row of the scipy sparse
    ``matrix``: what ``write_spmatrix_to_sparse_tensor`` writes."""
    np = _numpy()
    if not hasattr(matrix, "tocsr"):
        raise TypeError(f"write_sparse writes a scipy sparse matrix, got {type(matrix).__name__}")
    if len(matrix.shape) != 2:
        raise ValueError(f"write_sparse writes a 2-D matrix, got shape {matrix.shape}")
    csr = matrix.tocsr()
    kind, data = _tensor_kind(np, csr.data, "features")
    rows = csr.shape[0]
    label_kind, label_values = _labels(np, labels, rows)
    sparse = (np.asarray(csr.indices).astype(np.uint64), np.asarray(csr.indptr), int(csr.shape[1]))
    return write_records(sink, _records(kind, data, label_kind, label_values, sparse), "recordio")


def _tensor_kind(np: Any, array: Any, what: str) -> tuple[str, Any]:
    """The tensor field for ``array``'s dtype, and the array in the byte order written."""
    dtype = array.dtype
    if dtype == np.float32:
        return "float32_tensor", np.ascontiguousarray(array, "<f4")
    if dtype == np.float64:
        return "float64_tensor", np.ascontiguousarray(array, "<f8")
    if dtype.kind in "iu":
        info = np.iinfo(np.int32)
        if array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
            raise ValueError(
                f"{what}: an Int32Tensor holds values in [{info.min}, {info.max}], "
                f"found {int(array.min())}..{int(array.max())} ({dtype})"
            )
        return "int32_tensor", array
    raise ValueError(
        f"{what}: RecordIO-protobuf holds float32, float64 or int32 values, found dtype {dtype} "
        "(convert with .astype(numpy.float32))"
    )


def _labels(np: Any, labels: Any, rows: int) -> tuple[str | None, Any]:
    if labels is None:
        return None, None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise ValueError(f"labels must be a vector of one label per row ({rows}), got shape {labels.shape}")
    return _tensor_kind(np, labels, "labels")


def _records(
    kind: str, values: Any, label_kind: str | None, labels: Any, sparse: tuple[Any, Any, int] | None
) -> Iterator[bytes]:
    """The serialized records, built with the writer's view (float values as their bytes)."""
    message = _classes().write_record()
    integer = kind == "int32_tensor"
    label_integer = label_kind == "int32_tensor"
    width = values.itemsize * (values.shape[1] if values.ndim == 2 else 1)
    raw = b"" if integer else values.tobytes()
    label_raw = b"" if label_kind is None or label_integer else labels.tobytes()
    label_width = 0 if label_kind is None else labels.itemsize
    rows = len(labels) if labels is not None else None
    if sparse is not None:
        indices, indptr, columns = sparse
        rows = len(indptr) - 1
    elif rows is None:
        rows = values.shape[0]
    for row in range(rows):
        message.Clear()
        entry = message.features.add()
        entry.key = "values"
        tensor = getattr(entry.value, kind)
        # Present even when empty, as the SDK's ``values.extend([])`` leaves it.
        tensor.SetInParent()
        if sparse is None:
            if integer:
                tensor.values.extend(values[row].tolist())
            elif width:
                tensor.values.append(raw[row * width : (row + 1) * width])
        else:
            start, end = int(indptr[row]), int(indptr[row + 1])
            if end > start:
                if integer:
                    tensor.values.extend(values[start:end].tolist())
                else:
                    tensor.values.append(raw[start * values.itemsize : end * values.itemsize])
                tensor.keys.extend(indices[start:end].tolist())
            tensor.shape.append(columns)
        if label_kind is not None:
            label = message.label.add()
            label.key = "values"
            label_tensor = getattr(label.value, label_kind)
            if label_integer:
                label_tensor.values.append(int(labels[row]))
            else:
                label_tensor.values.append(label_raw[row * label_width : (row + 1) * label_width])
        yield message.SerializeToString()


def csr_parts(features: Any) -> SparseRows | None:
    """A batch's sparse features as :class:`SparseRows` (also a scipy matrix); ``None`` for dense."""
    if isinstance(features, SparseRows):
        return features
    if hasattr(features, "tocsr"):
        csr = features.tocsr()
        return SparseRows(csr.data, csr.indices, csr.indptr, (int(csr.shape[0]), int(csr.shape[1])))
    return None
