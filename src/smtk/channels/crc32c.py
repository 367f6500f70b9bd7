"""CRC32C (Castagnoli), as TFRecord uses it, with the TFRecord mask.

The C extension of ``google-crc32c`` (a dependency of smtk) does the work where it is
usable (GB/s). The fallback is pure Python and table-driven: the hot loop folds one
32-bit word per step through two 64 Ki-entry tables (about 20-30 MB/s on one core,
built on first use in ~10 ms). ``SMTK_CRC32C=python`` forces the pure-Python code (for
tests and comparisons).

::

    from smtk.channels.crc32c import crc32c, masked_crc32c
    crc32c(b"123456789") == 0xE3069283
    crc = crc32c(b"more", crc32c(b"some"))      # incremental
    masked_crc32c(payload)                       # what TFRecord stores
    value = crc32c_function()                    # fastest f(bytes) -> int, for hot loops
    value = crc32c_function(any_buffer=True)     # ... that also takes memoryviews
"""

from __future__ import annotations

import functools
import os
import struct
from array import array
from collections.abc import Callable

from smtk.settings import PipeSettings

POLYNOMIAL = 0x82F63B78  # CRC32C, reflected
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

Buffer = bytes | bytearray | memoryview


@functools.cache
def _tables() -> tuple[array[int], tuple[array[int], array[int]]]:
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ POLYNOMIAL if c & 1 else c >> 1
        t0.append(c)
    # t[k][b]: the CRC of byte b followed by k zero bytes; a 32-bit word then
    # costs two lookups in tables indexed by its low and high 16 bits.
    t = [t0]
    for k in range(1, 4):
        t.append([(t[k - 1][i] >> 8) ^ t0[t[k - 1][i] & 0xFF] for i in range(256)])
    t3, t2, t1 = t[3], t[2], t[1]
    low = array("I", [t3[i & 0xFF] ^ t2[i >> 8] for i in range(65536)])
    high = array("I", [t1[i & 0xFF] ^ t0[i >> 8] for i in range(65536)])
    return array("I", t0), (low, high)


def crc32c_python(data: Buffer, crc: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``crc`` (pure Python)."""
    byte_table, (low, high) = _tables()
    view = memoryview(data).cast("B")
    crc ^= _U32
    words = len(view) >> 2
    if words:
        for word in struct.unpack_from(f"<{words}I", view):
            mixed = word ^ crc
            crc = low[mixed & 0xFFFF] ^ high[mixed >> 16]
    for byte in view[words << 2 :]:
        crc = (crc >> 8) ^ byte_table[(crc ^ byte) & 0xFF]
    return crc ^ _U32


def _choose_backend() -> Callable[[Buffer, int], int]:
    if PipeSettings.from_environ(os.environ).crc32c != "python":
        try:
            import google_crc32c  # a dependency; its C code may still be missing
        except ImportError:
            pass
        else:
            if google_crc32c.implementation == "c":
                extend = google_crc32c.extend

                def accelerated(data: Buffer, crc: int = 0) -> int:
                    return int(extend(crc, bytes(data) if not isinstance(data, bytes) else data))

                return accelerated
    return crc32c_python


def backend_name() -> str:
    """``"google-crc32c"`` or ``"python"``: which implementation :func:`crc32c` uses."""
    return "python" if _get_backend() is crc32c_python else "google-crc32c"


@functools.cache
def _get_backend() -> Callable[[Buffer, int], int]:
    return _choose_backend()


def crc32c_function(*, any_buffer: bool = False) -> Callable[[bytes], int]:
    """The fastest one-argument CRC32C of ``bytes`` (``google_crc32c.value`` when usable).

    For hot loops: it skips the dispatch and the conversions :func:`crc32c` does.
    ``any_buffer``: the function must also take ``memoryview``/``bytearray`` (the C
    routine takes ``bytes`` only, so those are copied to ``bytes`` first).
    """
    if _get_backend() is crc32c_python:
        return crc32c_python
    import google_crc32c

    value: Callable[[bytes], int] = google_crc32c.value
    if not any_buffer:
        return value

    def value_of_buffer(data: Buffer) -> int:
        return value(data if type(data) is bytes else bytes(data))

    return value_of_buffer


def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC32C of ``data``; pass a previous result as ``crc`` to continue it."""
    return _get_backend()(data, crc)


def mask(crc: int) -> int:
    """TFRecord's mask: rotate right by 15 bits and add a constant (mod 2**32)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    """Inverse of :func:`mask`."""
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def masked_crc32c(data: Buffer) -> int:
    """The masked CRC32C TFRecord stores after the length and after the data."""
    return mask(_get_backend()(data, 0))
