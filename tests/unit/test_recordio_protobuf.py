"""RecordIO-protobuf: round trips (hypothesis), the batch and record-by-record decoders, errors.

The SDK and the reference are the oracles in tests/integration/test_recordio_protobuf.py;
here smtk's writer and reader check each other, and the real-schema ``Record`` class
(decoded field by field, with no shortcut) checks the fast batch decoder.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

np = pytest.importorskip("numpy")
pytest.importorskip("google.protobuf")
sparse_module = pytest.importorskip("scipy.sparse")
from hypothesis.extra import numpy as hnp  # noqa: E402

from smtk.channels import recordio_protobuf  # noqa: E402
from smtk.channels.recordio_protobuf import (  # noqa: E402
    CONTENT_TYPE,
    RecordBatch,
    SparseRows,
    csr_parts,
    encode_protobuf,
    read_protobuf,
    read_protobuf_records,
    record_class,
    write_dense,
    write_protobuf,
    write_sparse,
)
from smtk.channels.records import RecordError, encode_recordio  # noqa: E402
from smtk.environment import Environment  # noqa: E402
from smtk.errors import ChannelError  # noqa: E402
from tests.helpers.jobtree import make_tree  # noqa: E402

INT32 = np.iinfo(np.int32)


def written(array: Any, labels: Any = None) -> bytes:
    sink = io.BytesIO()
    total = write_protobuf(sink, array, labels)
    assert total == len(sink.getvalue())
    return sink.getvalue()


def read_all(source: Any, batch_size: int = 7, **options: Any) -> tuple[Any, Any, list[RecordBatch]]:
    batches = list(read_protobuf(source, batch_size, **options))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert [b.start for b in batches] == [batch_size * i for i in range(len(batches))]
    features = [b.features for b in batches]
    stacked = (
        sparse_module.vstack(features).tocsr()
        if features and csr_parts(features[0]) is not None
        else np.concatenate(features)
    )
    labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
    return stacked, labels, batches


def by_the_real_schema(data: bytes) -> list[tuple[str, list[float], list[int], list[int], Any]]:
    """Each record decoded field by field with the real ``Record`` class (no fast path)."""
    out = []
    for record in read_protobuf_records(data):
        value = record.features["values"]
        kind = value.WhichOneof("value")
        tensor = getattr(value, kind)
        label = None
        if "values" in record.label:
            label_value = record.label["values"]
            label = list(getattr(label_value, label_value.WhichOneof("value")).values)
        out.append((kind, list(tensor.values), list(tensor.keys), list(tensor.shape), label))
    return out


def frame(*messages: Any) -> bytes:
    return b"".join(encode_recordio(m.SerializeToString()) for m in messages)


def record(values: Any = (1.0, 2.0), kind: str = "float32_tensor", label: Any = None, **tensor: Any) -> Any:
    message = record_class()()
    target = getattr(message.features["values"], kind)
    target.values.extend(values)
    for name, items in tensor.items():
        getattr(target, name).extend(items)
    if label is not None:
        message.label["values"].float64_tensor.values.extend(label)
    return message


# --- round trips --------------------------------------------------------------------------

FEATURE_DTYPES = st.sampled_from(["float32", "float64", "int32", "int64", "int16", "uint8"])
LABEL_DTYPES = st.sampled_from([None, "float32", "float64", "int64"])
READ_DTYPE = {"float32": "float32", "float64": "float64"}


def elements(dtype: str) -> st.SearchStrategy[Any]:
    if dtype.startswith("float"):
        return st.floats(width=32 if dtype == "float32" else 64, allow_nan=True, allow_infinity=True)
    info = np.iinfo(dtype)
    return st.integers(max(info.min, INT32.min), min(info.max, INT32.max))


@st.composite
def dense_cases(draw: st.DrawFn) -> tuple[Any, Any, int]:
    dtype = draw(FEATURE_DTYPES)
    rows = draw(st.integers(1, 40))
    columns = draw(st.integers(0, 12))
    array = draw(hnp.arrays(dtype, (rows, columns), elements=elements(dtype)))
    label_dtype = draw(LABEL_DTYPES)
    labels = None
    if label_dtype is not None:
        labels = draw(hnp.arrays(label_dtype, (rows,), elements=elements(label_dtype)))
    return array, labels, draw(st.integers(1, 50))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dense_cases())
def test_dense_round_trip_any_shape_and_dtype(case: tuple[Any, Any, int]) -> None:
    array, labels, batch_size = case
    data = written(array, labels)
    features, got_labels, _ = read_all(data, batch_size)
    assert features.dtype == np.dtype(READ_DTYPE.get(array.dtype.name, "int32"))
    np.testing.assert_array_equal(features, array.astype(features.dtype))
    if labels is None:
        assert got_labels is None
    else:
        np.testing.assert_array_equal(got_labels, labels.astype(got_labels.dtype))
    # The batch decoder agrees with the real schema decoded field by field.
    for row, (kind, values, keys, shape, label) in zip(features, by_the_real_schema(data), strict=True):
        assert kind == {"float32": "float32_tensor", "float64": "float64_tensor"}.get(
            features.dtype.name, "int32_tensor"
        )
        np.testing.assert_array_equal(np.array(values, features.dtype), row)
        assert (keys, shape) == ([], [])
        assert (label is None) == (labels is None)


@st.composite
def sparse_cases(draw: st.DrawFn) -> tuple[Any, Any, int]:
    dtype = draw(st.sampled_from(["float32", "float64", "int64"]))
    rows = draw(st.integers(1, 30))
    columns = draw(st.integers(1, 40))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, columns)) < density
    values = (
        rng.integers(-1000, 1000, (rows, columns)) if dtype == "int64" else rng.normal(size=(rows, columns))
    )
    matrix = sparse_module.csr_matrix(np.where(mask, values, 0).astype(dtype))
    labels = rng.integers(0, 5, rows) if draw(st.booleans()) else None
    return matrix, labels, draw(st.integers(1, 40))


@settings(max_examples=40, deadline=None)
@given(sparse_cases())
def test_sparse_round_trip_keeps_keys_and_shape(case: tuple[Any, Any, int]) -> None:
    matrix, labels, batch_size = case
    data = written(matrix, labels)
    features, got_labels, batches = read_all(data, batch_size)
    assert all(isinstance(b.features, sparse_module.csr_matrix) for b in batches)
    assert features.shape == matrix.shape
    assert (features != matrix).nnz == 0
    if labels is None:
        assert got_labels is None
    else:
        np.testing.assert_array_equal(got_labels, labels)
    dense, _, _ = read_all(data, batch_size, sparse=False)
    np.testing.assert_array_equal(dense, matrix.toarray())
    for row, (_, values, keys, shape, _) in zip(
        range(matrix.shape[0]), by_the_real_schema(data), strict=True
    ):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        assert keys == matrix.indices[start:end].tolist()
        np.testing.assert_array_equal(
            np.array(values, matrix.dtype if matrix.dtype != "int64" else "int32"), matrix.data[start:end]
        )
        assert shape == [matrix.shape[1]]


def test_sparse_true_reads_dense_records_as_csr() -> None:
    array = np.arange(12, dtype="float32").reshape(4, 3)
    features, _, _ = read_all(written(array), sparse=True)
    assert isinstance(features, sparse_module.csr_matrix)
    np.testing.assert_array_equal(features.toarray(), array)


def test_dense_records_with_a_shape_are_reshaped() -> None:
    messages = [record(list(range(6 * i, 6 * i + 6)), shape=[2, 3]) for i in range(5)]
    features, _, _ = read_all(frame(*messages))
    np.testing.assert_array_equal(features, np.arange(30, dtype="float32").reshape(5, 2, 3))


def test_other_feature_entries_are_ignored_and_a_custom_key_is_read() -> None:
    messages = []
    for i in range(10):
        message = record([i, i + 1], label=[i])
        message.features["extra"].int32_tensor.values.extend([7, 8, 9])
        messages.append(message)
    features, labels, _ = read_all(frame(*messages), 4)
    np.testing.assert_array_equal(features, [[i, i + 1] for i in range(10)])
    np.testing.assert_array_equal(labels, np.arange(10.0))
    extra, _, _ = read_all(frame(*messages), 4, feature_key="extra")
    np.testing.assert_array_equal(extra, [[7, 8, 9]] * 10)
    assert extra.dtype == np.int32


def test_vector_labels_and_empty_sparse_rows() -> None:
    messages = [record([], label=[1.0, 2.0], shape=[5])]
    messages += [record([3.0], label=[3.0, 4.0], keys=[4], shape=[5])]
    features, labels, _ = read_all(frame(*messages))
    np.testing.assert_array_equal(features.toarray(), [[0, 0, 0, 0, 0], [0, 0, 0, 0, 3]])
    np.testing.assert_array_equal(labels, [[1, 2], [3, 4]])


def test_uid_metadata_and_configuration_are_kept_in_messages() -> None:
    message = record([1.0])
    message.uid, message.metadata, message.configuration = "id-1", '{"src": "x"}', '{"k": 1}'
    (got,) = read_protobuf_records(frame(message))
    assert (got.uid, got.metadata, got.configuration) == ("id-1", '{"src": "x"}', '{"k": 1}')
    assert got.DESCRIPTOR.full_name == "aialgs.data.Record"


def test_a_1d_array_is_one_row() -> None:
    assert encode_protobuf(np.array([1.0, 2.0])) == written(np.array([[1.0, 2.0]]))


class Counting(io.RawIOBase):
    """A source that makes up records as it is read and counts the bytes handed out."""

    def __init__(self, chunk: bytes, repeats: int) -> None:
        self._chunk = chunk
        self._left = repeats
        self.handed = 0
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and self._left:
            self._pending = self._chunk
            self._left -= 1
        size = min(len(buffer), len(self._pending), 4096)
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.handed += size
        return size


def test_a_stream_is_read_as_it_goes_not_whole() -> None:
    chunk = written(np.ones((100, 50), "float32"), np.zeros(100))
    source = Counting(chunk, 2000)  # ~45 MB in all
    batches = read_protobuf(io.BufferedReader(source, 4096), 64)
    first = next(batches)
    assert len(first) == 64
    assert source.handed < 4 << 20
    assert sum(len(b) for b in batches) + 64 == 200_000


# --- errors -------------------------------------------------------------------------------


def test_a_record_protobuf_cannot_parse_names_its_index_and_offset() -> None:
    good = [encode_recordio(record([float(i)]).SerializeToString()) for i in range(6)]
    bad = encode_recordio(b"\x0a\xff\xff\xff\xff\x0f")  # a length beyond the record
    data = b"".join([*good[:3], bad, *good[3:]])
    with pytest.raises(RecordError) as caught:
        list(read_protobuf(data, 4))
    assert caught.value.offset == sum(map(len, good[:3]))
    message = str(caught.value)
    assert "record 3" in message and "aialgs.data.Record" in message and CONTENT_TYPE in message
    assert "<bytes>" in message
    with pytest.raises(RecordError, match="record 3"):
        list(read_protobuf_records(data))


def test_a_truncated_file_is_an_error_naming_the_file_and_offset(tmp_path: Path) -> None:
    data = written(np.ones((10, 8), "float32"))
    path = tmp_path / "part-0.pbr"
    path.write_bytes(data[:-5])
    with pytest.raises(RecordError, match="truncated RecordIO record") as caught:
        list(read_protobuf(str(path), 3))
    assert str(path) in str(caught.value)
    assert caught.value.offset == len(data) // 10 * 9


def test_data_that_is_not_recordio_is_an_error() -> None:
    with pytest.raises(RecordError, match="expected the RecordIO magic"):
        list(read_protobuf(b"1.0,2.0,3.0\n4.0,5.0,6.0\n"))


FIRST = "the first record of its batch"


@pytest.mark.parametrize(
    ("messages", "found"),
    [
        (
            [record([1.0]), record([1.0], kind="float64_tensor")],
            f"record 1: has float64_tensor features; {FIRST}",
        ),
        ([record([1.0, 2.0]), record([1.0])], f"record 1: has features of shape [1]; {FIRST} has [2]"),
        (
            [record([1.0], label=[1.0]), record([1.0])],
            "record 1: has no label 'values', but the records before",
        ),
        (
            [record([1.0]), record([1.0], label=[1.0])],
            "record 1: has a label 'values', but the records before",
        ),
        (
            [record([1.0], label=[1.0]), record([1.0], label=[1.0, 2.0])],
            f"record 1: has 2 label values; {FIRST}",
        ),
        (
            [record([1.0], keys=[0], shape=[3]), record([1.0], keys=[0], shape=[4])],
            f"record 1: has 4 columns; {FIRST}",
        ),
        ([record([1.0], keys=[3])], "record 0: is sparse (has keys) but has no shape"),
        ([record([1.0], keys=[9], shape=[5])], "record 0: has key 9, outside its shape [5]"),
        ([record([1.0, 2.0], keys=[1], shape=[5])], "record 0: is sparse with 1 keys but 2 values"),
        (
            [record([1.0, 2.0, 3.0], shape=[2, 2])],
            "record 0: has 3 dense values, but its shape [2, 2] holds 4",
        ),
        ([record_class()()], "record 0: has no features entry 'values' (its features entries: none)"),
    ],
)
def test_inconsistent_records_are_named(messages: list[Any], found: str) -> None:
    data = b"".join(encode_recordio(m.SerializeToString()) for m in messages)
    index = int(found.split(":", maxsplit=1)[0].split()[1])
    good = written(np.ones((3, 1), "float32"))
    with pytest.raises(RecordError) as caught:
        list(read_protobuf(good + data, 3))
    # Three good records (one batch) come first: indices and offsets count from the source's start.
    assert found.replace(f"record {index}", f"record {index + 3}", 1) in str(caught.value)
    assert caught.value.offset == len(good) + len(frame(*messages[:index]))


def test_a_bytes_value_is_refused_with_the_way_to_read_it() -> None:
    message = record_class()()
    message.features["values"].bytes.value.append(b"\xff\xd8jpeg")
    with pytest.raises(RecordError, match=r"holds raw bytes.*read_protobuf_records"):
        list(read_protobuf(frame(message)))


def test_a_bytes_value_after_tensors_is_not_read_as_an_empty_row() -> None:
    later = record_class()()
    later.features["values"].bytes.value.append(b"raw")
    with pytest.raises(RecordError, match=r"record 2: its features entry 'values' holds raw bytes"):
        list(read_protobuf(written(np.zeros((2, 0), "float32")) + frame(later)))


def sdk_shaped(kind: str) -> bytes:
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(300, 6)).astype("float32" if kind.endswith("32") else "float64")
    if kind.startswith("int"):
        dense = rng.integers(-(2**31), 2**31 - 1, (300, 6))
    if kind.startswith("sparse"):
        dense[rng.random(dense.shape) < 0.7] = 0
        dense[[0, 17, 299]] = 0  # empty rows, the first one included
        return written(sparse_module.csr_matrix(dense), rng.integers(0, 3, 300))
    return written(dense, rng.normal(size=300).astype("float32"))


@pytest.mark.parametrize(
    "kind", ["float32", "float64", "int32", "sparse float32", "sparse float64", "sparse int32"]
)
@pytest.mark.parametrize("sparse", [None, True, False])
def test_what_the_sdk_writes_is_decoded_a_batch_at_a_time(
    monkeypatch: pytest.MonkeyPatch, kind: str, sparse: bool | None
) -> None:
    """The one-parse batch path (the fast one) takes every layout the SDK writes, and agrees
    with the record-by-record path (the real schema), which is for odd or broken records."""
    data = sdk_shaped(kind)
    with monkeypatch.context() as patched:
        patched.setattr(recordio_protobuf._BatchDecoder, "_merged", lambda *_: None)
        expected, expected_labels, _ = read_all(data, 64, sparse=sparse)

    def refuse(*_: Any) -> None:
        raise AssertionError("decoded record by record")

    monkeypatch.setattr(recordio_protobuf._BatchDecoder, "_one_by_one", refuse)
    got, labels, _ = read_all(data, 64, sparse=sparse)
    assert type(got) is type(expected) and got.dtype == expected.dtype
    if csr_parts(expected) is not None:
        assert (got != expected).nnz == 0
    else:
        np.testing.assert_array_equal(got, expected)
    assert labels.dtype == expected_labels.dtype
    np.testing.assert_array_equal(labels, expected_labels)


def test_a_channel_of_another_content_type_is_refused(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        inputdataconfig={"train": {"TrainingInputMode": "File", "ContentType": "text/csv"}},
        raw_files={"input/data/train/a.csv": "1,2\n"},
    )
    env = Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})
    with pytest.raises(
        ChannelError, match=r"channel 'train': ContentType is 'text/csv'.*application/x-recordio"
    ):
        list(read_protobuf(env.channels["train"]))


@pytest.mark.parametrize(
    ("array", "labels", "found"),
    [
        (np.ones((2, 2), "float16"), None, "found dtype float16"),
        (np.array([[2**31]]), None, r"Int32Tensor holds values in \[-2147483648, 2147483647\]"),
        (np.ones((2, 2)), np.ones(3), r"one label per row \(2\), got shape \(3,\)"),
        (np.ones(3), None, r"2-D array .* got shape \(3,\)"),
        (np.ones((2, 2)), np.array(["a", "b"]), "labels: .*found dtype <U1"),
    ],
)
def test_the_writer_refuses_what_it_cannot_write(array: Any, labels: Any, found: str) -> None:
    with pytest.raises(ValueError, match=found):
        write_dense(io.BytesIO(), array, labels)


def test_write_sparse_wants_a_sparse_matrix() -> None:
    with pytest.raises(TypeError, match="scipy sparse matrix"):
        write_sparse(io.BytesIO(), np.ones((2, 2)))


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        read_protobuf(b"", 0)


def test_sparse_rows_without_scipy_are_plain_csr_arrays() -> None:
    rows = SparseRows(np.ones(1), np.zeros(1, np.int64), np.array([0, 1]), (1, 3))
    assert csr_parts(rows) is rows
    assert csr_parts(np.ones((1, 3))) is None


def test_importing_smtk_channels_imports_no_protobuf_numpy_or_scipy() -> None:
    probe = (
        "import sys, smtk.channels; "
        "print(sorted(m for m in ('google.protobuf', 'numpy', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
