"""RecordIO framing and RecordIO-protobuf records, by smtk's readers and writers.

The reference names these with a leading underscore but the SageMaker examples and the
XGBoost container import them, so they are kept: the framing is
:mod:`smtk.channels.records`, the ``Record`` messages :mod:`smtk.channels.recordio_protobuf`
(needs the ``protobuf`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from smtk.channels import recordio_protobuf
from smtk.channels.records import encode_recordio, open_records


def _write_recordio(f: IO[bytes], data: bytes) -> None:
    """Write ``data`` to ``f`` as one RecordIO record."""
    f.write(encode_recordio(bytes(data)))


def _read_recordio(f: IO[bytes]) -> Iterator[bytes]:
    """The payloads of the RecordIO records in ``f``, in order (a truncated record raises)."""
    yield from open_records(f, "recordio")


def _write_numpy_to_dense_tensor(file: IO[bytes], array: Any, labels: Any = None) -> None:
    """Rows of a 2-d numpy array as dense ``Record`` messages (the SDK's ``write_numpy_to_dense_tensor``)."""
    recordio_protobuf.write_dense(file, array, labels)


def _write_spmatrix_to_sparse_tensor(file: IO[bytes], array: Any, labels: Any = None) -> None:
    """Rows of a scipy.sparse matrix as sparse ``Record`` messages."""
    recordio_protobuf.write_sparse(file, array, labels)
