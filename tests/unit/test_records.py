"""Record readers and writers: round trips over every kind of source, and bad input."""

from __future__ import annotations

import fcntl
import io
import json
import os
import queue
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtk.channels.records import (
    RECORDIO_MAGIC,
    ChannelError,
    RecordError,
    encode_recordio,
    encode_tfrecord,
    open_records,
    write_records,
)
from tests.unit.test_crc32c import bitwise_crc32c

MAGIC = struct.pack("<I", RECORDIO_MAGIC)


class Trickle(io.RawIOBase):
    """A stream that hands out at most `step` bytes per read, like a slow pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk


def sources(data: bytes, tmp_path: Path) -> list[Any]:
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return [data, io.BytesIO(data), str(path), path, Trickle(data, 3), Trickle(data, 1000)]


payloads = st.lists(st.binary(max_size=70), max_size=20)


@settings(max_examples=60, deadline=None)
@given(payloads, st.sampled_from([1, 5, 64, 1 << 20]))
def test_recordio_round_trip_any_chunking(records: list[bytes], chunk: int) -> None:
    data = b"".join(encode_recordio(r) for r in records)
    assert list(open_records(data, "recordio", chunk_size=chunk)) == records
    assert list(open_records(Trickle(data, 7), "recordio", chunk_size=chunk)) == records


@settings(max_examples=60, deadline=None)
@given(payloads, st.sampled_from([1, 13, 1 << 20]))
def test_tfrecord_round_trip_any_chunking(records: list[bytes], chunk: int) -> None:
    data = b"".join(encode_tfrecord(r) for r in records)
    assert list(open_records(data, "tfrecord", chunk_size=chunk)) == records
    assert list(open_records(Trickle(data, 5), "tfrecord", check_crc=False)) == records


def test_every_source_kind(tmp_path: Path) -> None:
    records = [os.urandom(n) for n in (0, 1, 3, 4, 5, 100, 70_000)]
    data = b"".join(encode_recordio(r) for r in records)
    for source in sources(data, tmp_path):
        assert list(open_records(source, "recordio", chunk_size=4096)) == records
    fd = os.open(tmp_path / "data.bin", os.O_RDONLY)
    try:
        assert list(open_records(fd, "recordio")) == records
    finally:
        os.close(fd)


def test_recordio_layout_matches_the_format() -> None:
    encoded = encode_recordio(b"abcde")
    assert encoded == MAGIC + struct.pack("<I", 5) + b"abcde" + b"\0\0\0"
    assert len(encode_recordio(b"abcd")) == 12


def test_tfrecord_layout_matches_an_independent_encoder() -> None:
    def masked(data: bytes) -> int:
        crc = bitwise_crc32c(data)
        return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

    payload = b"hello tfrecord"
    length = struct.pack("<Q", len(payload))
    expected = length + struct.pack("<I", masked(length)) + payload + struct.pack("<I", masked(payload))
    assert encode_tfrecord(payload) == expected


@given(st.lists(st.binary(max_size=40).map(lambda b: b + MAGIC * 2 + b), max_size=6))
def test_multipart_records_are_joined(records: list[bytes]) -> None:
    data = b"".join(encode_recordio(r, split_magic=True) for r in records)
    assert list(open_records(Trickle(data, 9), "recordio", chunk_size=16)) == records


def test_multipart_by_hand() -> None:
    def part(flag: int, body: bytes) -> bytes:
        return MAGIC + struct.pack("<I", (flag << 29) | len(body)) + body + b"\0" * (-len(body) & 3)

    data = part(1, b"abcd") + part(2, b"") + part(3, b"xy") + part(0, b"solo")
    assert list(open_records(data, "recordio")) == [b"abcd" + MAGIC + MAGIC + b"xy", b"solo"]
    with pytest.raises(RecordError, match="continuation part with no start"):
        list(open_records(part(3, b"xy"), "recordio"))
    with pytest.raises(RecordError, match=r"byte offset 12: expected a continuation part .* found 0"):
        list(open_records(part(1, b"abcd") + part(0, b"x"), "recordio"))
    with pytest.raises(RecordError, match="ended inside the multipart record that starts at 0"):
        list(open_records(part(1, b"abcd"), "recordio"))


def test_recordio_truncation_says_where() -> None:
    data = encode_recordio(b"first") + encode_recordio(b"x" * 100)
    with pytest.raises(RecordError) as info:
        list(open_records(data[:-10], "recordio"))
    assert info.value.offset == 16
    assert "byte offset 16" in str(info.value)
    assert "100 bytes of payload" in str(info.value)
    with pytest.raises(RecordError, match=r"byte offset 16: truncated RecordIO header: 5 of 8"):
        list(open_records(data[:21], "recordio"))
    # The reader hands out the good records before the error.
    reader = open_records(Trickle(data[:-1], 4), "recordio")
    seen = []
    with pytest.raises(RecordError):
        for record in reader:
            seen.append(record)
    assert seen == [b"first"]


def test_recordio_bad_magic_says_where_and_why() -> None:
    data = encode_recordio(b"ok") + b"NOTMAGIC" + b"\0" * 8
    with pytest.raises(
        RecordError, match=r"byte offset 12: expected the RecordIO magic .* found 0x4D544F4E"
    ) as info:
        list(open_records(data, "recordio"))
    assert "RecordWrapperType" in str(info.value)


def corrupt(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_tfrecord_data_crc_error_names_offset_and_can_be_skipped() -> None:
    records = [b"a" * 10, b"b" * 20, b"c" * 30]
    encoded = [encode_tfrecord(r) for r in records]
    second = len(encoded[0])
    data = b"".join(encoded)
    bad = corrupt(data, second + 12 + 3)  # inside the second record's data
    with pytest.raises(RecordError, match=rf"byte offset {second}: TFRecord data CRC mismatch") as info:
        list(open_records(bad, "tfrecord"))
    assert info.value.offset == second
    reader = open_records(Trickle(bad, 11), "tfrecord", skip_corrupt=True)
    assert list(reader) == [records[0], records[2]]
    assert reader.skipped == 1
    assert reader.count == 2
    assert list(open_records(bad, "tfrecord", check_crc=False))[1] != records[1]


def test_tfrecord_length_crc_error_is_fatal_even_when_skipping() -> None:
    data = encode_tfrecord(b"x" * 5) + encode_tfrecord(b"y" * 5)
    bad = corrupt(data, 21 + 9)  # the second record's length CRC
    with pytest.raises(RecordError, match="byte offset 21: TFRecord length CRC mismatch"):
        list(open_records(bad, "tfrecord", skip_corrupt=True))


def test_tfrecord_truncation_says_where() -> None:
    data = encode_tfrecord(b"x" * 50) + encode_tfrecord(b"y" * 50)
    with pytest.raises(RecordError, match=r"byte offset 66: truncated TFRecord: .* 50 bytes"):
        list(open_records(data[:-1], "tfrecord"))
    with pytest.raises(RecordError, match=r"byte offset 66: truncated TFRecord header: 3 of 12"):
        list(open_records(data[:69], "tfrecord"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=15), st.booleans())
def test_lines(lines: list[bytes], final_newline: bool) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert list(open_records(Trickle(data, 4), "lines", chunk_size=8)) == expected
    assert list(open_records(data, "lines")) == expected


def test_chunks_reassemble(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    for source in sources(data, tmp_path):
        reader = open_records(source, "chunks", chunk_size=65536)
        chunks = list(reader)
        assert b"".join(chunks) == data
        assert all(len(c) <= 65536 for c in chunks)
        assert reader.offset == len(data)


def test_manifest_json_lines() -> None:
    lines = [{"source-ref": "s3://b/1.jpg", "label": 1}, {"source-ref": "s3://b/2.jpg", "label": 0}]
    data = ("\n".join(json.dumps(x) for x in lines) + "\n\n").encode()
    assert list(open_records(data, "manifest")) == lines
    assert list(open_records(data, "manifest", attribute_names=["label"])) == [{"label": 1}, {"label": 0}]
    with pytest.raises(ChannelError, match="manifest line 2 lacks attribute"):
        list(open_records(data.replace(b'"label": 0', b'"other": 0'), "manifest", attribute_names=["label"]))
    with pytest.raises(ChannelError, match="manifest line 1 is not valid JSON"):
        list(open_records(b"{nope\n", "manifest"))


def test_manifest_recordio_regroups_attributes() -> None:
    names = ["source-ref", "class"]
    rows = [(os.urandom(50), b"1"), (b"", b"0"), (os.urandom(7), b"2")]
    data = b"".join(encode_recordio(value) for row in rows for value in row)
    reader = open_records(Trickle(data, 6), "manifest", attribute_names=names, record_wrapper="RecordIO")
    assert list(reader) == [dict(zip(names, row, strict=True)) for row in rows]
    assert reader.count == 3
    with pytest.raises(
        RecordError, match=r"ended after 1 of 2 attributes \(source-ref, class\) of manifest line 3"
    ):
        list(
            open_records(
                data[: -len(encode_recordio(b"2"))],
                "manifest",
                attribute_names=names,
                record_wrapper="RecordIO",
            )
        )
    with pytest.raises(ChannelError, match="needs attribute_names"):
        open_records(data, "manifest", record_wrapper="RecordIO")


def test_a_reader_is_one_pass_and_closes_what_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    with path.open("wb") as sink:
        write_records(sink, [b"a", b"b"], "recordio")
    reader = open_records(str(path), "recordio")
    assert list(reader) == [b"a", b"b"]
    with pytest.raises(ChannelError, match="already iterated"):
        iter(reader)
    before = set(os.listdir("/proc/self/fd"))
    with open_records(str(path), "recordio") as early:
        next(iter(early))
    assert set(os.listdir("/proc/self/fd")) <= before


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match="unknown record format 'parquet'"):
        open_records(b"", "parquet")
    with pytest.raises(ChannelError, match=r"cannot open .*missing"):
        open_records(str(tmp_path / "missing"), "recordio")


@pytest.mark.parametrize("fmt", ["recordio", "tfrecord"])
def test_write_records_round_trip(fmt: str) -> None:
    records = [os.urandom(n) for n in range(0, 3000, 7)]
    sink = io.BytesIO()
    size = write_records(sink, records, fmt)
    assert size == len(sink.getvalue())
    assert list(open_records(sink.getvalue(), fmt)) == records


@pytest.mark.parametrize("length", [0, 3, 8, 100])
def test_runs_of_same_length_records(length: int) -> None:
    # Long runs of equal-length records take the bulk path; payloads that contain the
    # header/padding pattern itself must still come out whole.
    header = struct.pack("<II", RECORDIO_MAGIC, length)
    tricky = (b"\0" * 3 + header) * 20
    records = [os.urandom(length) for _ in range(150)]
    if length >= len(header) + 3:
        records[40] = tricky[:length]
        records[41] = tricky[5 : 5 + length]
    data = b"".join(encode_recordio(r) for r in records) + encode_recordio(b"different length!")
    assert list(open_records(data, "recordio")) == [*records, b"different length!"]
    assert list(open_records(Trickle(data, 4096), "recordio", chunk_size=1000)) == [
        *records,
        b"different length!",
    ]


@pytest.mark.parametrize(("length", "count"), [(0, 70), (5, 70), (100, 70), (96, 1500), (97, 1500)])
@pytest.mark.parametrize("backend", ["auto", "python"])
def test_tfrecord_runs_check_every_crc(
    length: int, count: int, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run of same-length records has its data CRCs checked all at once (as 32-bit words
    # when the stride allows, else byte by byte; 1,500 records span several batches); a
    # flipped bit anywhere in any record's data or stored CRC must still be caught, at the
    # right offset.
    from smtk.channels import crc32c as crc_module

    monkeypatch.setenv("SMTK_CRC32C", backend)
    crc_module._get_backend.cache_clear()
    try:
        records = [os.urandom(length) for _ in range(count)]
        encoded = [encode_tfrecord(r) for r in records]
        data = b"".join(encoded)
        stride = len(encoded[0])
        assert list(open_records(data, "tfrecord")) == records
        last = count - 1
        for index, where in ((0, 12), (33, 12 + length // 2), (last, 12 + length), (50, stride - 1)):
            if where >= stride or (length == 0 and where < 12 + length):
                continue
            bad = corrupt(data, index * stride + where)
            with pytest.raises(RecordError, match=rf"byte offset {index * stride}: TFRecord data CRC"):
                list(open_records(bad, "tfrecord"))
            reader = open_records(bad, "tfrecord", skip_corrupt=True)
            assert list(reader) == records[:index] + records[index + 1 :]
            assert reader.skipped == 1
        # Two corrupt records in one run: both found.
        second = count - 30
        bad = corrupt(corrupt(data, 3 * stride + 13 if length else 3 * stride + 12), second * stride + 12)
        reader = open_records(bad, "tfrecord", skip_corrupt=True)
        assert list(reader) == [r for i, r in enumerate(records) if i not in (3, second)]
        assert reader.skipped == 2
    finally:
        monkeypatch.delenv("SMTK_CRC32C")
        crc_module._get_backend.cache_clear()


@pytest.mark.parametrize(("length", "count"), [(0, 16), (96, 1500), (97, 1500), (1000, 100)])
def test_tfrecord_bulk_crc_check_accepts_intact_records_only(length: int, count: int) -> None:
    # The bulk check itself (not the per-record parsing it hands the rest to): it takes
    # a whole intact run at any offset in the buffer, and never a record after one bit
    # of a record's header, data or stored CRC went wrong; what it takes is a prefix
    # in whole windows of at least 16 records.
    from smtk.channels.records import _RUN_MIN, _tfrecord_verified_run

    encoded = b"".join(encode_tfrecord(os.urandom(length)) for _ in range(count))
    stride = 16 + length
    for lead in (0, 1, 3):
        buf = os.urandom(lead) + encoded + os.urandom(lead)
        assert _tfrecord_verified_run(buf, lead, length, count) == count - count % _RUN_MIN
        for index in (0, 5, count // 2, count - 1):
            for where in {0, 8, 12, 12 + length // 2, stride - 1}:
                bad = corrupt(buf, lead + index * stride + where)
                taken = _tfrecord_verified_run(bad, lead, length, count)
                assert taken <= index
                assert taken % _RUN_MIN == 0
        # A run that ends (a record of another length follows) is taken up to its end
        # in windows: everything before the first 16-record window that holds the change.
        other = encode_tfrecord(os.urandom(length + 4))
        cut = count // 2
        mixed = buf[: lead + cut * stride] + other + buf[lead + cut * stride :]
        assert _tfrecord_verified_run(mixed, lead, length, count) == cut - cut % _RUN_MIN


@pytest.mark.parametrize("fmt", ["recordio", "tfrecord"])
@pytest.mark.parametrize("views", [False, True])
@pytest.mark.parametrize("same_length", [True, False])
def test_a_big_buffer_is_handed_over_a_pass_at_a_time(
    tmp_path: Path, fmt: str, views: bool, same_length: bool
) -> None:
    # A whole file (mapped for views) or a big bytes object is one buffer: the parser
    # must still hand records over in bounded lists, runs or not, and lose none at the
    # seams between passes.
    from smtk.channels.records import _PASS_BYTES, _PASS_RECORDS

    count = 3 * _PASS_RECORDS + 100
    records = [os.urandom(100 if same_length else 60 + i % 90) for i in range(count)]
    path = tmp_path / f"big.{fmt}"
    with path.open("wb") as sink:
        write_records(sink, records, fmt)
    for source in (path, path.read_bytes()):
        reader = open_records(source, fmt, views=views)
        sizes = []
        got: list[bytes] = []
        for batch in reader._batches():
            sizes.append(len(batch))
            got += [bytes(record) for record in batch]
        assert got == records
        assert max(sizes) <= 2 * _PASS_RECORDS
        assert sum(sizes) == count
        if not same_length:  # record by record: a pass ends after about _PASS_BYTES
            assert max(sizes) <= _PASS_BYTES // 60 + 1


def test_lines_from_a_big_buffer_come_a_chunk_at_a_time() -> None:
    lines = [b"line %d" % i for i in range(200_000)]
    reader = open_records(b"\n".join(lines) + b"\n", "lines", chunk_size=64 << 10)
    batches = list(reader._batches())
    assert [line for batch in batches for line in batch] == lines
    assert max(len(batch) for batch in batches) <= (64 << 10) // 7 + 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 4, 7, 8, 64]), min_size=1, max_size=8), st.integers(1, 60))
def test_tfrecord_mixed_runs_round_trip(lengths: list[int], repeat: int) -> None:
    # Runs of different lengths one after another, cut anywhere by the chunking.
    records = [os.urandom(n) for n in lengths for _ in range(repeat)]
    data = b"".join(encode_tfrecord(r) for r in records)
    assert list(open_records(data, "tfrecord")) == records
    assert list(open_records(Trickle(data, 997), "tfrecord", chunk_size=1500)) == records
    rio = b"".join(encode_recordio(r) for r in records)
    assert list(open_records(Trickle(rio, 997), "recordio", chunk_size=1500)) == records


@pytest.mark.parametrize("fmt", ["recordio", "tfrecord"])
def test_big_records_read_straight_from_the_source(fmt: str, tmp_path: Path) -> None:
    # Records of 64 KiB and more that are not buffered yet are read into their own bytes;
    # mixed with small ones, from a file, a slow stream and bytes, they must come out whole.
    sizes = [70_000, 3, 65_536, 200_001, 10, 10, 131_071, 0, 100_000, 100_000, 1]
    records = [os.urandom(n) for n in sizes]
    encode = encode_recordio if fmt == "recordio" else encode_tfrecord
    data = b"".join(encode(r) for r in records)
    for source in sources(data, tmp_path):
        assert list(open_records(source, fmt, chunk_size=4096)) == records
    assert list(open_records(Trickle(data, 50_000), fmt)) == records


class Recording(Trickle):
    """A stream that remembers how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data, len(data))
        self.asked: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        return super().read(size)


@pytest.mark.parametrize("fmt", ["recordio", "tfrecord"])
def test_big_records_from_the_start_never_pass_through_a_chunk(fmt: str) -> None:
    # The first read is small, so big records switch to direct mode after the first one
    # (each then read in a read of its own size: one copy), not after a whole 1 MiB chunk.
    encode = encode_recordio if fmt == "recordio" else encode_tfrecord
    records = [os.urandom(200_001) for _ in range(5)]
    source = Recording(b"".join(encode(r) for r in records))
    assert list(open_records(source, fmt)) == records
    assert max(source.asked) <= 200_001
    assert source.asked[0] == 64 << 10


@pytest.mark.parametrize("fmt", ["recordio", "tfrecord"])
@pytest.mark.parametrize("length", [100_000, 100_001])
def test_a_complete_big_record_is_handed_over_before_more_input_arrives(fmt: str, length: int) -> None:
    # A writer that pauses after whole records (a live Pipe-mode stream): each record
    # must reach the consumer at once, not when the next header happens to arrive.
    encode = encode_recordio if fmt == "recordio" else encode_tfrecord
    records = [os.urandom(length) for _ in range(3)]
    read_end, write_end = os.pipe()
    # Room for a whole record, so that its payload can arrive in one read.
    fcntl.fcntl(write_end, 1031, 1 << 20)  # F_SETPIPE_SZ
    got: queue.Queue[bytes | BaseException] = queue.Queue()

    def consume() -> None:
        try:
            with os.fdopen(read_end, "rb", buffering=0) as source:
                for record in open_records(source, fmt, chunk_size=4096):
                    got.put(record)
        except BaseException as exc:  # handed to the test thread
            got.put(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    with os.fdopen(write_end, "wb") as sink:
        for record in records:
            sink.write(encode(record))
            sink.flush()
            assert got.get(timeout=10) == record  # the writer has not sent the next one yet
    consumer.join(timeout=10)
    assert got.empty()


@pytest.mark.parametrize("fmt", ["recordio", "tfrecord"])
def test_big_record_truncation_says_where(fmt: str) -> None:
    encode = encode_recordio if fmt == "recordio" else encode_tfrecord
    first = encode(os.urandom(100_000))
    data = first + encode(os.urandom(100_001))
    header = 8 if fmt == "recordio" else 12
    for cut in (1, 2, 5, 50_000, 100_003 - header):
        reader = open_records(Trickle(data[:-cut], 30_000), fmt, chunk_size=1024)
        seen = []
        with pytest.raises(RecordError, match=rf"byte offset {len(first)}: truncated") as info:
            for record in reader:
                seen.append(record)
        assert len(seen) == 1
        assert "100001 bytes" in str(info.value)


def test_big_tfrecord_crc_error_and_skip() -> None:
    records = [os.urandom(90_000) for _ in range(4)]
    encoded = [encode_tfrecord(r) for r in records]
    data = b"".join(encoded)
    at = len(encoded[0]) * 2
    bad = corrupt(data, at + 12 + 45_000)
    with pytest.raises(RecordError, match=rf"byte offset {at}: TFRecord data CRC mismatch"):
        list(open_records(Trickle(bad, 100_000), "tfrecord", chunk_size=1024))
    reader = open_records(Trickle(bad, 100_000), "tfrecord", chunk_size=1024, skip_corrupt=True)
    assert list(reader) == records[:2] + records[3:]
    assert reader.skipped == 1


# --- views=True ---------------------------------------------------------------------------


def view_records() -> list[bytes]:
    # Small and big, runs and singles, empty, and a payload that contains the magic.
    return (
        [os.urandom(100)] * 40
        + [os.urandom(n) for n in (0, 1, 3, 70_000, 100_000, 5)]
        + [os.urandom(100_000)] * 20
        + [b"x" + MAGIC + b"y"]
    )


@pytest.mark.parametrize("fmt", ["recordio", "tfrecord"])
def test_views_match_bytes_from_every_kind_of_source(fmt: str, tmp_path: Path) -> None:
    records = view_records()
    sink = io.BytesIO()
    write_records(sink, records, fmt)
    data = sink.getvalue()
    for source in sources(data, tmp_path):
        reader = open_records(source, fmt, views=True)
        got = list(reader)
        assert all(type(r) is memoryview and r.readonly for r in got), source
        assert [bytes(r) for r in got] == records, source
        assert reader.count == len(records) and reader.offset == len(data)


def test_views_of_a_file_are_its_memory_mapping(tmp_path: Path) -> None:
    import mmap

    path = tmp_path / "data.rec"
    records = [os.urandom(1000) for _ in range(50)]
    path.write_bytes(b"".join(encode_recordio(r) for r in records))
    reader = open_records(path, "recordio", views=True)
    got = list(reader)
    # Zero copy: every record views the one mapping of the file, which outlives the reader.
    assert {type(r.obj) for r in got} == {mmap.mmap}
    assert len({id(r.obj) for r in got}) == 1
    reader.close()
    assert [bytes(r) for r in got] == records
    # Empty files are not mapped (mmap refuses them): simply no records.
    (tmp_path / "empty").write_bytes(b"")
    assert list(open_records(tmp_path / "empty", "recordio", views=True)) == []


@pytest.mark.parametrize("cut", [3, 8 + 50, 8 + 100_000 - 1])
def test_views_report_truncation_where_it_is(cut: int, tmp_path: Path) -> None:
    whole = encode_recordio(b"a" * 16)
    data = whole + encode_recordio(os.urandom(100_000))[:cut]
    for source in sources(data, tmp_path):
        with pytest.raises(RecordError) as info:
            list(open_records(source, "recordio", views=True))
        assert info.value.offset == len(whole), source


@pytest.mark.parametrize("length", [100, 100_000])
def test_views_check_tfrecord_crcs(length: int, tmp_path: Path) -> None:
    # 100 B records are checked in bulk runs, 100 KB ones one by one; both catch a flipped bit.
    records = [os.urandom(length) for _ in range(30)]
    data = b"".join(encode_tfrecord(r) for r in records)
    stride = length + 16
    bad = corrupt(data, 17 * stride + 12 + length // 3)
    for source, again in zip(sources(bad, tmp_path), sources(bad, tmp_path), strict=True):
        with pytest.raises(RecordError, match=rf"byte offset {17 * stride}: TFRecord data CRC"):
            list(open_records(source, "tfrecord", views=True))
        reader = open_records(again, "tfrecord", views=True, skip_corrupt=True)
        assert [bytes(r) for r in reader] == records[:17] + records[18:]
        assert reader.skipped == 1


def test_views_as_chunks_and_where_views_do_not_apply(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "raw"
    path.write_bytes(data)
    chunks = list(open_records(path, "chunks", views=True, chunk_size=65536))
    assert all(isinstance(c, memoryview) and 0 < len(c) <= 65536 for c in chunks)
    assert b"".join(chunks) == data
    for fmt in ("lines", "manifest"):
        with pytest.raises(ChannelError, match=rf"views=True is not available for the '{fmt}' format"):
            open_records(path, fmt, views=True)
