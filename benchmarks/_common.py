"""Shared helpers for the benchmarks: timing fresh processes and locating the reference."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def reference_python() -> str | None:
    """The interpreter of the reference toolkit's venv, if it is installed."""
    candidate = os.environ.get("SMTK_REFERENCE_PYTHON") or str(REPO / ".venv-ref" / "bin" / "python")
    return candidate if os.path.exists(candidate) else None


def time_runs(argv: Sequence[str], env: Mapping[str, str], runs: int, cwd: str | None = None) -> float:
    """Median wall-clock seconds of ``runs`` fresh runs of ``argv`` (one warm-up run first)."""
    samples = []
    for index in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{proc.stderr.decode()[-2000:]}")
        if index:
            samples.append(elapsed)
    return statistics.median(samples)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"
