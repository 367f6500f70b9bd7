"""Fixtures shared by the integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def feeders() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list for the feeders a test starts; those still running at its end are terminated."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=60)
