"""numpy arrays to and from NPY, JSON, CSV and RecordIO-protobuf (the reference's serving encoders).

numpy is imported when an encoder runs, never at import. RecordIO-protobuf is smtk's
:mod:`smtk.channels.recordio_protobuf` (byte for byte the SDK's writers; needs the
``protobuf`` extra).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from sagemaker_training import content_types, errors
from smtk.channels import recordio_protobuf


def array_to_npy(array_like: Any) -> bytes:
    """``array_like`` in NPY format."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array_like)
    return buffer.getvalue()


def npy_to_numpy(npy_array: bytes) -> Any:
    """An NPY payload as a numpy array. Object arrays are refused: unpickling request data runs code
    (the reference loads with ``allow_pickle=True``)."""
    import numpy as np

    try:
        return np.load(io.BytesIO(npy_array), allow_pickle=False)
    except ValueError as exc:
        raise errors.ClientError(f"Error while decoding npy: {exc}") from None


def array_to_json(array_like: Any) -> str:
    """``array_like`` as JSON (numpy arrays and scalars through ``tolist()``)."""

    def default(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        return json.JSONEncoder().default(value)

    return json.dumps(array_like, default=default)


def json_to_numpy(string_like: str | bytes, dtype: Any = None) -> Any:
    """A JSON document as a numpy array of ``dtype`` (inferred when ``None``)."""
    import numpy as np

    return np.array(json.loads(string_like), dtype=dtype)


def csv_to_numpy(string_like: str, dtype: Any = None) -> Any:
    """CSV text as a numpy array (one row per line, squeezed), cast to ``dtype`` when given."""
    import numpy as np

    try:
        rows = list(
            csv.reader(io.StringIO(string_like), delimiter=",", quotechar='"', doublequote=True, strict=True)
        )
        array = np.array(rows).squeeze()
        return array.astype(dtype) if dtype is not None else array
    except ValueError as exc:
        raise errors.ClientError(f"Error while writing numpy array: {exc}. dtype is: {dtype}") from None
    except csv.Error as exc:
        raise errors.ClientError(f"Error while decoding csv: {exc}") from None


def array_to_csv(array_like: Any) -> str:
    """``array_like`` as CSV text, one row per line (a 1-d array is one row)."""
    import numpy as np

    array = np.array(array_like)
    if array.ndim == 1:
        array = np.reshape(array, (array.shape[0], 1))
    stream = io.StringIO()
    try:
        writer = csv.writer(
            stream, lineterminator="\n", delimiter=",", quotechar='"', doublequote=True, strict=True
        )
        writer.writerows(array)
    except csv.Error as exc:
        raise errors.ClientError(f"Error while encoding csv: {exc}") from None
    return stream.getvalue()


def array_to_recordio_protobuf(array_like: Any, labels: Any = None) -> bytes:
    """Rows of ``array_like`` (numpy or scipy.sparse, 1 or 2 dimensions) as RecordIO-protobuf records."""
    if len(array_like.shape) == 1:
        array_like = array_like.reshape(1, array_like.shape[0])
    if len(array_like.shape) != 2:
        raise errors.ClientError(f"Expecting a 1 or 2 dimensional array, got shape {array_like.shape}")
    return recordio_protobuf.encode_protobuf(array_like, labels)


encoders_map: dict[str, Callable[[Any], Any]] = {
    content_types.NPY: array_to_npy,
    content_types.CSV: array_to_csv,
    content_types.JSON: array_to_json,
}
_decoders_map: dict[str, Callable[[Any], Any]] = {
    content_types.NPY: npy_to_numpy,
    content_types.CSV: csv_to_numpy,
    content_types.JSON: json_to_numpy,
}


def decode(obj: Any, content_type: str) -> Any:
    """``obj`` in ``content_type`` (NPY, CSV or JSON) as a numpy array."""
    decoder = _decoders_map.get(content_type)
    if decoder is None:
        raise errors.UnsupportedFormatError(content_type)
    return decoder(obj)


def encode(array_like: Any, content_type: str) -> Any:
    """``array_like`` in ``content_type`` (NPY, CSV or JSON)."""
    encoder = encoders_map.get(content_type)
    if encoder is None:
        raise errors.UnsupportedFormatError(content_type)
    return encoder(array_like)
