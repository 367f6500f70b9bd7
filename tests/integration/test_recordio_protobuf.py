"""RecordIO-protobuf against the real packages: the SageMaker SDK and the reference toolkit.

Both live in ``.venv-ref`` (or ``$SMTK_REFERENCE_PYTHON``); one oracle process per module
runs there and answers requests line by line (JSON in, JSON out), so that hypothesis can
try many arrays without paying the SDK's import (~3 s) each time. Both ways:

* the SDK's ``write_numpy_to_dense_tensor`` / ``write_spmatrix_to_sparse_tensor`` and the
  reference's ``encoders.array_to_recordio_protobuf`` write; smtk reads (File, Pipe, torch);
  smtk's writer must produce the same bytes;
* smtk writes; the SDK's ``read_records`` and the reference's ``_read_recordio`` +
  ``record_pb2.Record`` read, and say what they found.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

np = pytest.importorskip("numpy")
sparse_module = pytest.importorskip("scipy.sparse")
pytest.importorskip("google.protobuf")
from hypothesis.extra import numpy as hnp  # noqa: E402

from smtk.channels.recordio_protobuf import (  # noqa: E402
    CONTENT_TYPE,
    read_protobuf,
    write_dense,
    write_protobuf,
    write_sparse,
)
from smtk.environment import Environment  # noqa: E402
from tests.helpers.jobtree import make_tree  # noqa: E402
from tests.helpers.pipefeed import start_pipe_feed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REFERENCE_PYTHON = Path(os.environ.get("SMTK_REFERENCE_PYTHON", str(REPO / ".venv-ref" / "bin" / "python")))


def _sdk_importable() -> bool:
    if not REFERENCE_PYTHON.exists():
        return False
    # find_spec of a top-level name imports nothing (the SDK's import takes ~3 s).
    probe = (
        "import importlib.util, sys; "
        "sys.exit(not all(importlib.util.find_spec(m) for m in ('sagemaker', 'sagemaker_training')))"
    )
    done = subprocess.run([str(REFERENCE_PYTHON), "-c", probe], capture_output=True, check=False)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(
    not _sdk_importable(),
    reason=f"the SageMaker SDK and the reference toolkit are not importable with {REFERENCE_PYTHON} "
    "(scripts/test.sh installs both into .venv-ref; or set SMTK_REFERENCE_PYTHON)",
)

# Runs under the reference's interpreter: one JSON request a line, one JSON answer a line
# (marked, as the SDK prints its own lines to stdout).
ORACLE = r"""
import io, json, sys
import numpy as np
import scipy.sparse as sp
from sagemaker.amazon.common import read_records, write_numpy_to_dense_tensor, write_spmatrix_to_sparse_tensor
from sagemaker_training import encoders, recordio
from sagemaker_training.record_pb2 import Record

def load(path):
    return sp.load_npz(path) if path.endswith(".npz") else np.load(path)

def tensors(record):
    out = {}
    for part in ("features", "label"):
        entries = getattr(record, part)
        if "values" not in entries:
            out[part] = None
            continue
        value = entries["values"]
        kind = value.WhichOneof("value")
        tensor = getattr(value, kind)
        out[part] = {"kind": kind, "values": [float(v) for v in tensor.values],
                     "keys": list(tensor.keys), "shape": list(tensor.shape)}
    return out

for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "write":
        array = load(request["array"])
        labels = load(request["labels"]) if request["labels"] else None
        with open(request["out"], "wb") as f:
            if sp.issparse(array):
                write_spmatrix_to_sparse_tensor(f, array, labels)
            else:
                write_numpy_to_dense_tensor(f, array, labels)
        with open(request["out"] + ".ref", "wb") as f:
            f.write(encoders.array_to_recordio_protobuf(array, labels))
        answer = "written"
    elif op == "read":
        with open(request["path"], "rb") as f:
            sdk = [tensors(r) for r in read_records(f)]
        with open(request["path"], "rb") as f:
            reference = []
            for payload in recordio._read_recordio(f):
                record = Record()
                record.ParseFromString(payload)
                reference.append(tensors(record))
        answer = {"sdk": sdk, "reference": reference}
    print("ORACLE " + json.dumps(answer), flush=True)
"""


class Oracle:
    """The SDK and the reference in one long-lived ``.venv-ref`` process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [str(REFERENCE_PYTHON), "-c", ORACLE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.count = 0

    def ask(self, request: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        while True:  # the SDK logs to stdout too: answers are the lines marked ORACLE
            line = self.proc.stdout.readline()
            assert line, f"the oracle died (exit {self.proc.poll()}) on {request}"
            if line.startswith("ORACLE "):
                return json.loads(line[len("ORACLE ") :])

    def write(self, array: Any, labels: Any = None) -> tuple[bytes, bytes]:
        """(the SDK's bytes, the reference encoder's bytes) for ``array`` and ``labels``."""
        self.count += 1
        base = self.workdir / f"case{self.count}"
        array_path = str(base) + (".npz" if sparse_module.issparse(array) else ".npy")
        if sparse_module.issparse(array):
            sparse_module.save_npz(array_path, array)
        else:
            np.save(array_path, array)
        labels_path = None
        if labels is not None:
            labels_path = str(base) + ".labels.npy"
            np.save(labels_path, labels)
        out = str(base) + ".pbr"
        assert self.ask({"op": "write", "array": array_path, "labels": labels_path, "out": out}) == "written"
        return Path(out).read_bytes(), Path(out + ".ref").read_bytes()

    def read(self, data: bytes) -> dict[str, list[dict[str, Any]]]:
        self.count += 1
        path = self.workdir / f"smtk{self.count}.pbr"
        path.write_bytes(data)
        return dict(self.ask({"op": "read", "path": str(path)}))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    running = Oracle(tmp_path_factory.mktemp("rpb-oracle"))
    try:
        yield running
    finally:
        running.close()


def smtk_bytes(array: Any, labels: Any = None) -> bytes:
    import io

    sink = io.BytesIO()
    write_protobuf(sink, array, labels)
    return sink.getvalue()


def read_back(data: Any, batch_size: int = 64, **options: Any) -> tuple[Any, Any]:
    batches = list(read_protobuf(data, batch_size, **options))
    features = [b.features for b in batches]
    if sparse_module.issparse(features[0]):
        stacked = sparse_module.vstack(features).tocsr()
    else:
        stacked = np.concatenate(features)
    labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
    return stacked, labels


RNG = np.random.default_rng(15)


def sparse_matrix(rows: int, columns: int, dtype: str, density: float = 0.2) -> Any:
    mask = RNG.random((rows, columns)) < density
    mask[rows // 2] = False  # an empty row: the SDK writes its shape alone
    values = RNG.integers(-99, 99, (rows, columns)) if dtype == "int64" else RNG.normal(size=(rows, columns))
    return sparse_module.csr_matrix(np.where(mask, values, 0).astype(dtype))


CASES = {
    "float32 features, float32 labels": (
        RNG.random((300, 17), dtype="float32"),
        RNG.random(300, dtype="float32"),
    ),
    "float64 features, int labels": (RNG.normal(size=(300, 5)), RNG.integers(0, 10, 300)),
    "int features, float64 labels": (RNG.integers(-(2**31), 2**31 - 1, (300, 9)), RNG.normal(size=300)),
    "float32 features, no labels": (RNG.random((10, 1000), dtype="float32"), None),
    "one column": (RNG.random((257, 1)), RNG.integers(0, 2, 257)),
    "sparse float32, int labels": (sparse_matrix(200, 50, "float32"), RNG.integers(0, 3, 200)),
    "sparse float64, no labels": (sparse_matrix(100, 1000, "float64", 0.01), None),
    "sparse int, float32 labels": (sparse_matrix(60, 7, "int64", 0.5), RNG.random(60, dtype="float32")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sdk_and_reference_bytes_are_read_and_rewritten_identically(oracle: Oracle, name: str) -> None:
    array, labels = CASES[name]
    sdk, reference = oracle.write(array, labels)
    assert sdk == reference  # the reference's encoder and the SDK's writer agree
    # smtk's writer gives the very same bytes.
    assert smtk_bytes(array, labels) == sdk
    # smtk's reader gives back the arrays, whatever the batch size.
    for batch_size in (1, 7, 1000):
        features, got_labels = read_back(sdk, batch_size)
        if sparse_module.issparse(array):
            assert isinstance(features, sparse_module.csr_matrix)
            assert features.shape == array.shape and (features != array).nnz == 0
        else:
            np.testing.assert_array_equal(features, array.astype(features.dtype))
        if labels is None:
            assert got_labels is None
        else:
            np.testing.assert_array_equal(got_labels, labels.astype(got_labels.dtype))


def expected_tensors(array: Any, labels: Any) -> list[dict[str, Any]]:
    """What the SDK's and the reference's decoders should say about each record."""
    kinds = {"float32": "float32_tensor", "float64": "float64_tensor"}
    out = []
    csr = array.tocsr() if sparse_module.issparse(array) else None
    for row in range(array.shape[0]):
        if csr is not None:
            start, end = csr.indptr[row], csr.indptr[row + 1]
            values, keys, shape = csr.data[start:end], csr.indices[start:end].tolist(), [array.shape[1]]
        else:
            values, keys, shape = array[row], [], []
        features = {
            "kind": kinds.get(array.dtype.name, "int32_tensor"),
            "values": [float(v) for v in values],
            "keys": keys,
            "shape": shape,
        }
        label = None
        if labels is not None:
            kind = kinds.get(labels.dtype.name, "int32_tensor")
            label = {"kind": kind, "values": [float(labels[row])], "keys": [], "shape": []}
        out.append({"features": features, "label": label})
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_smtk_written_records_are_read_by_the_sdk_and_the_reference(oracle: Oracle, name: str) -> None:
    array, labels = CASES[name]
    decoded = oracle.read(smtk_bytes(array, labels))
    expected = expected_tensors(array, labels)
    assert decoded["sdk"] == expected
    assert decoded["reference"] == expected


@st.composite
def arrays_and_labels(draw: st.DrawFn) -> tuple[Any, Any]:
    dtype = draw(st.sampled_from(["float32", "float64", "int64"]))
    shape = (draw(st.integers(1, 25)), draw(st.integers(1, 20)))
    if dtype == "int64":
        elements: st.SearchStrategy[Any] = st.integers(-(2**31), 2**31 - 1)
    else:
        # No NaN: the SDK stores values through Python floats, which need not keep a NaN's payload.
        elements = st.floats(width=32 if dtype == "float32" else 64, allow_nan=False)
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.booleans()):
        array = sparse_module.csr_matrix(array)
        array.eliminate_zeros()
    labels = None
    label_dtype = draw(st.sampled_from([None, "float32", "float64", "int64"]))
    if label_dtype is not None:
        labels = draw(hnp.arrays(label_dtype, shape[:1], elements=st.integers(-5, 5)))
    return array, labels


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays_and_labels())
def test_any_shape_and_dtype_round_trips_both_ways(oracle: Oracle, case: tuple[Any, Any]) -> None:
    array, labels = case
    sdk, _ = oracle.write(array, labels)
    assert smtk_bytes(array, labels) == sdk
    features, got_labels = read_back(sdk, 8)
    dense = array.toarray() if sparse_module.issparse(array) else array
    got = features.toarray() if sparse_module.issparse(features) else features
    np.testing.assert_array_equal(got, dense.astype(got.dtype))
    assert (got_labels is None) == (labels is None)
    if labels is not None:
        np.testing.assert_array_equal(got_labels, labels.astype(got_labels.dtype))


# --- channels: File and Pipe mode, torch ---------------------------------------------------

PROTOBUF = {"ContentType": CONTENT_TYPE}


def sdk_files(oracle: Oracle, count: int, rows: int) -> tuple[list[bytes], Any, Any]:
    """``count`` files written by the SDK: features and labels of all rows, in file order."""
    arrays = [RNG.random((rows + i, 6), dtype="float32") for i in range(count)]
    labels = [RNG.integers(0, 4, rows + i) for i in range(count)]
    files = [oracle.write(a, y)[0] for a, y in zip(arrays, labels, strict=True)]
    return files, np.concatenate(arrays), np.concatenate(labels)


def test_a_file_channel_is_read_file_by_file(oracle: Oracle, tmp_path: Path) -> None:
    files, features, labels = sdk_files(oracle, 3, 40)
    raw = {f"input/data/train/part-{i}.pbr": data for i, data in enumerate(files)}
    root = make_tree(
        tmp_path, inputdataconfig={"train": {"TrainingInputMode": "File", **PROTOBUF}}, raw_files=raw
    )
    env = Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})
    batches = list(read_protobuf(env.channels["train"], 32))
    # A batch never spans two files: 40, 41 and 42 records make 32+8, 32+9, 32+10.
    assert [len(b) for b in batches] == [32, 8, 32, 9, 32, 10]
    assert [Path(b.source).name for b in batches] == ["part-0.pbr"] * 2 + ["part-1.pbr"] * 2 + [
        "part-2.pbr"
    ] * 2
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), features)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), labels)


@pytest.mark.parametrize("wrapper", ["None", "RecordIO"])
def test_a_pipe_channel_is_read_from_a_real_fifo_for_several_epochs(
    oracle: Oracle, tmp_path: Path, feeders: list[subprocess.Popen[bytes]], wrapper: str
) -> None:
    files, features, labels = sdk_files(oracle, 2, 700)
    source = tmp_path / "source"
    source.mkdir()
    for i, data in enumerate(files):
        (source / f"part-{i}.pbr").write_bytes(data)
    config = {"TrainingInputMode": "Pipe", "RecordWrapperType": wrapper, **PROTOBUF}
    root = make_tree(tmp_path, inputdataconfig={"train": config})
    env = Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})
    feeder = start_pipe_feed(feeders, env, "train", source, "--epochs", "2", "--record-wrapper", wrapper)
    for epoch in range(2):
        batches = list(read_protobuf(env.channels["train"], 256, epoch=epoch))
        np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), features)
        np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), labels)
        assert all(f"train_{epoch}" in b.source for b in batches)
    assert feeder.wait(timeout=60) == 0


@pytest.mark.slow  # the SDK's import alone takes ~3 s
def test_a_pipe_fifo_written_by_the_sdk_itself(oracle: Oracle, tmp_path: Path) -> None:
    array = sparse_matrix(500, 30, "float64")
    labels = RNG.integers(0, 2, 500)
    fifo = tmp_path / "rpb.fifo"
    os.mkfifo(fifo)
    np.save(tmp_path / "labels.npy", labels)
    sparse_module.save_npz(tmp_path / "array.npz", array)
    script = (
        "import sys, numpy as np, scipy.sparse as sp\n"
        "from sagemaker.amazon.common import write_spmatrix_to_sparse_tensor\n"
        "with open(sys.argv[1], 'wb') as f:\n"
        "    write_spmatrix_to_sparse_tensor(f, sp.load_npz(sys.argv[2]), np.load(sys.argv[3]))\n"
    )
    writer = subprocess.Popen(
        [
            str(REFERENCE_PYTHON),
            "-c",
            script,
            str(fifo),
            str(tmp_path / "array.npz"),
            str(tmp_path / "labels.npy"),
        ],
        env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"},
        stderr=subprocess.DEVNULL,
    )
    try:
        features, got_labels = read_back(str(fifo), 100)
    finally:
        assert writer.wait(timeout=120) == 0
    assert (features != array).nnz == 0
    np.testing.assert_array_equal(got_labels, labels)


def test_channel_dataset_batches_and_records_through_dataloader_workers(
    oracle: Oracle, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from smtk.channels.torch import ChannelDataLoader, ChannelDataset

    files, features, labels = sdk_files(oracle, 3, 50)
    sparse = sparse_matrix(30, 12, "float32")
    sparse_labels = RNG.random(30, dtype="float32")
    raw = {f"input/data/train/part-{i}.pbr": data for i, data in enumerate(files)}
    raw["input/data/sparse/part-0.pbr"] = oracle.write(sparse, sparse_labels)[0]
    channels = {name: {"TrainingInputMode": "File", **PROTOBUF} for name in ("train", "sparse")}
    root = make_tree(tmp_path, inputdataconfig=channels, raw_files=raw)
    env = Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})

    # Batches decoded in two worker processes, each decoding only its own records.
    dataset = ChannelDataset("train", "recordio-protobuf", env=env, batch_size=16)
    loader = ChannelDataLoader(dataset, batch_size=None, num_workers=2)
    for _ in range(2):
        seen_x, seen_y = [], []
        for x, y in loader:
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape[1] == 6
            assert len(x) <= 16
            seen_x.append(x.numpy())
            seen_y.append(y.numpy())
        got_x, got_y = np.concatenate(seen_x), np.concatenate(seen_y)
        order = np.lexsort(got_x.T)
        expected = np.lexsort(features.T)
        np.testing.assert_array_equal(got_x[order], features[expected])
        np.testing.assert_array_equal(got_y[order], labels[expected])

    # One item a record: the default collate makes the batches.
    per_record = ChannelDataset("train", "recordio-protobuf", env=env)
    x, y = next(iter(DataLoader(per_record, batch_size=10)))
    np.testing.assert_array_equal(x.numpy(), features[:10])
    np.testing.assert_array_equal(y.numpy(), labels[:10])

    # Sparse records: CSR tensors for batches, sparse COO vectors for single records.
    sparse_batches = list(ChannelDataset("sparse", "recordio-protobuf", env=env, batch_size=8))
    assert all(x.layout == torch.sparse_csr for x, _ in sparse_batches)
    dense = torch.cat([x.to_dense() for x, _ in sparse_batches]).numpy()
    np.testing.assert_array_equal(dense, sparse.toarray())
    rows = list(ChannelDataset("sparse", "recordio-protobuf", env=env))
    assert rows[0][0].layout == torch.sparse_coo
    np.testing.assert_array_equal(torch.stack([r.to_dense() for r, _ in rows]).numpy(), sparse.toarray())
    np.testing.assert_array_equal(np.array([float(y) for _, y in rows], "float32"), sparse_labels)


def test_channel_dataset_in_pipe_mode(
    oracle: Oracle, tmp_path: Path, feeders: list[subprocess.Popen[bytes]]
) -> None:
    torch = pytest.importorskip("torch")
    from smtk.channels.torch import ChannelDataset

    files, features, labels = sdk_files(oracle, 2, 300)
    source = tmp_path / "source"
    source.mkdir()
    for i, data in enumerate(files):
        (source / f"part-{i}.pbr").write_bytes(data)
    root = make_tree(tmp_path, inputdataconfig={"train": {"TrainingInputMode": "Pipe", **PROTOBUF}})
    env = Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})
    feeder = start_pipe_feed(feeders, env, "train", source, "--epochs", "2")
    dataset = ChannelDataset("train", "recordio-protobuf", env=env, batch_size=100)
    for _ in range(2):
        batches = list(dataset)
        assert all(isinstance(x, torch.Tensor) for x, _ in batches)
        np.testing.assert_array_equal(torch.cat([x for x, _ in batches]).numpy(), features)
        np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), labels)
    assert feeder.wait(timeout=60) == 0


def test_channel_dataset_refuses_a_channel_of_another_content_type(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from smtk.channels.torch import ChannelDataset
    from smtk.errors import ChannelError

    root = make_tree(
        tmp_path, inputdataconfig={"train": {"TrainingInputMode": "File", "ContentType": "text/csv"}}
    )
    env = Environment(root, environ={"SAGEMAKER_BASE_DIR": str(root)})
    with pytest.raises(ChannelError, match="ContentType is 'text/csv'"):
        ChannelDataset("train", "recordio-protobuf", env=env)


def test_write_dense_and_write_sparse_are_the_sdk_functions_bytes(oracle: Oracle) -> None:
    import io

    array = RNG.random((20, 3))
    dense, sparse = io.BytesIO(), io.BytesIO()
    write_dense(dense, array, np.arange(20))
    write_sparse(sparse, sparse_module.csr_matrix(array), np.arange(20))
    assert dense.getvalue() == oracle.write(array, np.arange(20))[0]
    assert sparse.getvalue() == oracle.write(sparse_module.csr_matrix(array), np.arange(20))[0]
