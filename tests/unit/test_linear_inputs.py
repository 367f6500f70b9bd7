"""Parsers of user-controlled text stay linear on hostile input (hang detection, no timing).

Each case feeds a few megabytes shaped to make a backtracking pattern quadratic (long runs
of what the pattern repeats, then a character that makes it fail) and only requires the
call to finish within a generous timeout. Masking itself is covered by
``test_redact_linear.py``.
"""

from __future__ import annotations

import contextlib

import pytest

from smtk import causes, hardware, hyperparameters
from smtk.errors import ConfigError
from smtk.install import pip_error, url_credentials

BIG = 2_000_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text", ["1" * BIG + "x", "1" * BIG + ".", "." + "1" * BIG + "e", "+" + "9" * BIG + "e+"]
)
def test_typed_hyperparameter_access_on_long_digit_runs(text: str) -> None:
    hps = hyperparameters.Hyperparameters({"n": text}, {"n": text})
    with contextlib.suppress(ConfigError):  # a number or not: it answers, in linear time
        hps.get_float("n")
    with contextlib.suppress(ConfigError):
        hps.get_int("n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        "a" * BIG,
        "://" + "a" * BIG,
        "a://" * (BIG // 4),
        "x://" + "a:" * (BIG // 2),
        "://a:" + "b" * BIG + "@",
    ],
)
def test_url_credentials_in_pip_settings(text: str) -> None:
    found = url_credentials(text)
    assert len(found) <= 1


def test_url_credentials_still_found() -> None:
    assert url_credentials("--index-url https://user:s3cret@host/simple") == {"s3cret"}
    assert url_credentials("https://TOKEN123@host/x") == {"TOKEN123"}


@pytest.mark.timeout(60)
def test_gpu_listing_with_a_huge_line() -> None:
    line = "GPU 0: " + "NVIDIA " * (BIG // 7) + "(UUID: GPU-abc)"
    gpus = hardware.parse_gpu_listing(line + "\n" + "MIG " + "x" * BIG)
    assert [(g.ordinal, g.uuid) for g in gpus] == [(0, "GPU-abc")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "line",
    [
        "ErrorError" * (BIG // 10),
        "ValueError: " + "x" * BIG,
        '  File "' + "a" * BIG,
        "[" + "r" * BIG + "]: x",
    ],
)
def test_root_cause_search_on_huge_lines(line: str) -> None:
    causes.find_python_error([line, "Traceback (most recent call last):", line], "/opt/ml/code")
    causes.process_failure(returncode=1, signum=None, stderr_tail=[line] * 3)


@pytest.mark.timeout(60)
def test_pip_error_on_huge_output() -> None:
    lines = ["ERROR: " + "x" * BIG, "  " + "y" * BIG] + ["line"] * 100_000
    assert pip_error(lines).startswith("ERROR: ")
