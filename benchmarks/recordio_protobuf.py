"""RecordIO-protobuf decoding to numpy: records/s of smtk against the reference, same files.

Each data set is written once (smtk's writer: the same bytes as the SDK's
``write_numpy_to_dense_tensor`` / ``write_spmatrix_to_sparse_tensor``, which the tests
check) and decoded from the file into batches of ``--batch`` records:

* ``reference``: the reference toolkit's own path, in ``.venv-ref`` (or
  ``$SMTK_REFERENCE_PYTHON``): ``sagemaker_training.recordio._read_recordio`` and
  ``record_pb2.Record.ParseFromString`` for each record, then the numpy conversion a
  user writes, since the reference has none: ``np.array(tensor.values, dtype)`` per
  record (with the dtype: without it numpy walks the container element by element, ~10x
  slower), ``np.stack`` per batch, and a ``scipy.sparse.csr_matrix`` per batch from the
  keys for sparse records; labels the same way.
* ``plain protobuf loop, smtk's venv``: the same loop over smtk's RecordIO reader and
  smtk's run-time ``Record`` class, in smtk's interpreter and protobuf version: what the
  library gives when used message by message.
* ``smtk read_protobuf``: smtk's batch decoder (one library parse per batch of dense
  records, packed floats taken as bytes; record by record with the same library for
  sparse ones).

Every measurement runs in a fresh process; modules are imported and the message classes
built before the clock starts, after a ``gc.collect()``; the timed loop runs inside a
function. Printed: the best of ``--repeat`` rounds, the ratio of the bests and the
median of the per-round ratios (rounds seconds apart, all readers in turn).

::

    .venv/bin/python benchmarks/recordio_protobuf.py [--records 50000] [--batch 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import REPO, reference_python

# The decoding loop the baselines share; FRAMING and RECORD are filled in per interpreter.
PLAIN_DECODE = """
import gc, json, sys, time
import numpy as np
import scipy.sparse as sp
{setup}
DTYPES = {{"float32_tensor": np.float32, "float64_tensor": np.float64, "int32_tensor": np.int32}}

def tensor_of(entries):
    value = entries["values"]
    kind = value.WhichOneof("value")
    return getattr(value, kind), DTYPES[kind]

def to_numpy(records):
    labels = None
    if "values" in records[0].label:
        labels = np.stack([np.array(t.values, d) for t, d in (tensor_of(r.label) for r in records)])
    tensors = [tensor_of(r.features) for r in records]
    first, dtype = tensors[0]
    if len(first.keys) or len(first.shape):
        data = [np.array(t.values, dtype) for t, _ in tensors]
        indices = [np.array(t.keys, np.int64) for t, _ in tensors]
        indptr = np.zeros(len(records) + 1, np.int64)
        np.cumsum([len(v) for v in data], out=indptr[1:])
        shape = (len(records), int(first.shape[0]))
        return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=shape), labels
    return np.stack([np.array(t.values, dtype) for t, _ in tensors]), labels

def consume(path, batch):
    count = 0
    pending = []
    with open(path, "rb") as f:
        for payload in {framing}:
            record = Record()
            record.ParseFromString(payload)
            pending.append(record)
            if len(pending) == batch:
                to_numpy(pending)
                count += len(pending)
                pending = []
    if pending:
        to_numpy(pending)
        count += len(pending)
    return count

gc.collect()  # the interpreter's start-up garbage: not part of any reader's work
started = time.perf_counter()
count = consume(sys.argv[1], int(sys.argv[2]))
print(json.dumps({{"records": count, "seconds": time.perf_counter() - started}}))
"""

REFERENCE_DECODE = PLAIN_DECODE.format(
    setup="from sagemaker_training.recordio import _read_recordio\n"
    "from sagemaker_training.record_pb2 import Record",
    framing="_read_recordio(f)",
)

SMTK_PLAIN_DECODE = PLAIN_DECODE.format(
    setup="from smtk.channels.records import open_records\n"
    "from smtk.channels.recordio_protobuf import record_class\nRecord = record_class()",
    framing="open_records(f, 'recordio')",
)

SMTK_DECODE = """
import gc, json, sys, time
import numpy, scipy.sparse
from smtk.channels.recordio_protobuf import read_protobuf, record_class
record_class()  # the message classes are built once per process, like an import
def consume(path, batch):
    return sum(len(b) for b in read_protobuf(path, batch))
gc.collect()  # the interpreter's start-up garbage: not part of any reader's work
started = time.perf_counter()
count = consume(sys.argv[1], int(sys.argv[2]))
print(json.dumps({"records": count, "seconds": time.perf_counter() - started}))
"""


def data_sets(tmp: Path, records: int) -> list[tuple[str, Path]]:
    sys.path.insert(0, str(REPO / "src"))
    import numpy as np
    import scipy.sparse as sp

    from smtk.channels.recordio_protobuf import write_protobuf

    rng = np.random.default_rng(0)
    sparse_rows = rng.random((records, 10_000)) < 0.003  # ~30 non-zeros a row
    sets = {
        "dense float32 x100, int label": (
            rng.random((records, 100), dtype="float32"),
            rng.integers(0, 10, records),
        ),
        "dense float64 x10, float64 label": (rng.normal(size=(records, 10)), rng.normal(size=records)),
        "dense int x50, int label": (rng.integers(-1000, 1000, (records, 50)), rng.integers(0, 2, records)),
        "sparse float32 10k cols ~30 nnz, int label": (
            sp.csr_matrix(np.where(sparse_rows, rng.random(sparse_rows.shape), 0).astype("float32")),
            rng.integers(0, 10, records),
        ),
    }
    out = []
    for number, (name, (array, labels)) in enumerate(sets.items()):
        path = tmp / f"set{number}.pbr"
        with path.open("wb") as sink:
            write_protobuf(sink, array, labels)
        out.append((name, path))
    return out


def run_json(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    reference = reference_python()
    if reference is None:
        print("reference toolkit not found (.venv-ref or $SMTK_REFERENCE_PYTHON): no ratios")
    print(
        f"RecordIO-protobuf decoded to numpy, {args.records} records a file, batches of {args.batch}, "
        f"{args.repeat} rounds, each run in a fresh process:"
    )
    print(f"  {'reader':<36}{'best rec/s':>12}{'best/ref':>10}{'median ratio':>14}")
    with tempfile.TemporaryDirectory(prefix="rpb-bench-") as tmp:
        for name, path in data_sets(Path(tmp), args.records):
            size = path.stat().st_size
            print(f"  {name} ({size / args.records:.0f} B a record, {size / 1e6:.1f} MB)")
            runs: dict[str, list[str]] = {}
            if reference is not None:
                runs["reference (_read_recordio + Parse)"] = [reference, "-c", REFERENCE_DECODE]
            runs["plain protobuf loop, smtk's venv"] = [sys.executable, "-c", SMTK_PLAIN_DECODE]
            runs["smtk read_protobuf"] = [sys.executable, "-c", SMTK_DECODE]
            seconds: dict[str, list[float]] = {label: [] for label in runs}
            for _ in range(args.repeat):
                for label, argv in runs.items():
                    measured = run_json([*argv, str(path), str(args.batch)])
                    assert measured["records"] == args.records, (label, measured)
                    seconds[label].append(float(measured["seconds"]))
            ref = seconds.get("reference (_read_recordio + Parse)")
            for label, values in seconds.items():
                rate = args.records / min(values)
                if ref:
                    best = f"{min(ref) / min(values):.2f}x"
                    median = f"{statistics.median(r / v for r, v in zip(ref, values, strict=True)):.2f}x"
                else:
                    best = median = "-"
                print(f"    {label:<34}{rate:>12,.0f}{best:>10}{median:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
