"""Small file helpers, and fetching code (``download_and_extract``) with smtk's safe extraction.

``download_and_extract`` is :func:`smtk.codefetch.fetch`: an S3 ``tar.gz``, a local
archive, directory or file; an archive with an unsafe member is refused whole (the
reference rewrote or skipped such members). The outcome files are written through smtk's
masking, and ``write_failure_file`` never replaces a failure file that is already there
(the first failure is the root cause).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from sagemaker_training import _launch
from smtk import codefetch, log
from smtk.environment import Environment
from smtk.errors import SmtkError
from smtk.paths import Paths


def write_success_file() -> None:
    """Create ``output/success`` (empty)."""
    path = Paths.from_environ(os.environ).success_file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8"):
        pass


def write_failure_file(failure_msg: str) -> None:
    """Write ``failure_msg`` (masked) to ``output/failure``, unless a failure is already recorded."""
    path = Paths.from_environ(os.environ).failure_file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileExistsError), open(path, "x", encoding="utf-8") as handle:
        handle.write(log.masker().mask(failure_msg))


@contextlib.contextmanager
def tmpdir(suffix: str = "", prefix: str = "tmp", directory: str | None = None) -> Iterator[str]:
    """A temporary directory, removed on exit."""
    path = tempfile.mkdtemp(suffix=suffix, prefix=prefix, dir=directory)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_file(path: str, data: Any, mode: str = "w") -> None:
    """Write ``data`` to ``path``."""
    with open(path, mode) as handle:
        handle.write(data)


def read_file(path: str, mode: str = "r") -> Any:
    """The contents of ``path``."""
    with open(path, mode) as handle:
        return handle.read()


def read_json(path: str) -> Any:
    """The JSON document in ``path``."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def download_and_extract(uri: str, path: str) -> None:
    """Put ``uri`` (``s3://...tar.gz``, a local archive, directory or file) into directory ``path``."""
    env = Environment()
    try:
        codefetch.fetch(
            uri, path, env.environ, codefetch.Limits.from_settings(env.settings), s3=env.settings.s3
        )
    except SmtkError as exc:
        raise _launch.client_error(exc) from None
