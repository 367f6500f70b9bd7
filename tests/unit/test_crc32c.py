"""CRC32C: RFC 3720 vectors, an independent bit-by-bit oracle, both backends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtk.channels import crc32c as crc_module
from smtk.channels.crc32c import crc32c, crc32c_python, mask, masked_crc32c, unmask


def bitwise_crc32c(data: bytes) -> int:
    """The definition, one bit at a time (the oracle)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# RFC 3720 (iSCSI) appendix B.4 and the usual check value.
VECTORS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0),
]


@pytest.mark.parametrize(("data", "expected"), VECTORS)
def test_known_vectors(data: bytes, expected: int) -> None:
    assert crc32c_python(data) == expected
    assert crc32c(data) == expected
    assert bitwise_crc32c(data) == expected


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_python_matches_the_bitwise_definition_and_continues(data: bytes, cut: int) -> None:
    assert crc32c_python(data) == bitwise_crc32c(data)
    cut = min(cut, len(data))
    assert crc32c_python(data[cut:], crc32c_python(data[:cut])) == crc32c_python(data)
    assert crc32c_python(memoryview(data)) == crc32c_python(data)
    assert crc32c_python(bytearray(data)) == crc32c_python(data)


@given(st.binary(max_size=2000))
def test_selected_backend_agrees_with_python(data: bytes) -> None:
    assert crc32c(data) == crc32c_python(data)
    assert crc32c(bytearray(data), 7) == crc32c_python(data, 7)


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_mask_round_trips(value: int) -> None:
    assert unmask(mask(value)) == value
    assert 0 <= mask(value) <= 0xFFFFFFFF


def test_masked_crc_is_the_tfrecord_formula() -> None:
    # TensorFlow: ((crc >> 15) | (crc << 17)) + 0xa282ead8, in uint32 arithmetic.
    crc = 0xE3069283
    expected = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"123456789") == expected


def test_python_backend_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTK_CRC32C", "python")
    crc_module._get_backend.cache_clear()
    assert crc_module.backend_name() == "python"
    assert crc32c(b"123456789") == 0xE3069283
    monkeypatch.delenv("SMTK_CRC32C")
    crc_module._get_backend.cache_clear()
    try:
        import google_crc32c  # noqa: F401
    except ImportError:
        assert crc_module.backend_name() == "python"
    else:
        assert crc_module.backend_name() == "google-crc32c"
