"""Fixtures shared by the whole suite."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.s3server import S3Server

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3-protocol server on loopback for the session (moto's server mode)."""
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 in this process (and in children given this env) at the test server."""
    env = s3_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def bin_path() -> str:
    """PATH with this interpreter's venv first, so `train`/`smtk`/`mpirun` resolve."""
    return f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


@pytest.fixture
def quiet_server_log() -> Iterator[None]:
    """Silence the S3 server's per-request log: capturing thousands of records only slows tests."""
    logger = logging.getLogger("werkzeug")
    old = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(old)


@pytest.fixture
def smtk_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the smtk logger even when smtk.log.configure() stopped its propagation."""
    logger = logging.getLogger("smtk")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="smtk")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture
def smtk_written() -> Iterator[io.StringIO]:
    """What smtk's own log handler writes: every line after masking (what a user would see)."""
    from smtk import log

    stream = io.StringIO()
    handler = log.MaskingHandler(stream)
    handler.setFormatter(logging.Formatter("smtk %(levelname)s %(message)s"))
    logger = logging.getLogger("smtk")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
