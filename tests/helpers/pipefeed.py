"""Starting ``smtk pipe-feed`` processes from tests (the ``feeders`` fixture stops them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from smtk.environment import Environment
from tests.conftest import VENV_BIN


def start_pipe_feed(
    procs: list[subprocess.Popen[bytes]],
    env: Environment,
    channel: str,
    source: Path,
    *args: str,
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """``smtk pipe-feed`` for ``channel`` of ``env`` from ``source`` (more options in ``args``).

    Appended to ``procs`` (the ``feeders`` fixture's list); its stderr is a pipe to read.
    """
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "smtk"),
            "pipe-feed",
            "--channel",
            channel,
            "--source",
            str(source),
            "--data-dir",
            env.paths.input_data_dir,
            *args,
        ],
        stderr=stderr,
    )
    procs.append(proc)
    return proc
