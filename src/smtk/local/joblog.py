"""Every host's output in ``smtk local``: on the terminal, kept in the job directory, read for metrics.

Each line a host's ``train`` writes goes three ways, masked the same way everywhere
(:func:`smtk.log.masker`):

- to our stdout, as before (``algo-2 | ...`` when there are several hosts);
- to ``<job dir>/logs/<host>.log``, each line stamped with the UTC time it arrived
  (``2026-12-02T03:40:00.123Z stdout ...``), so the log outlives the terminal;
- to :class:`~smtk.local.metrics.Metrics`, which looks for the job's metric definitions.

::

    job_log = JobLog(job_dir, metrics)
    sink = job_log.sink("algo-1", terminal=prefixed(""))   # a supervisor LineSink
    ...
    job_log.close()
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TextIO

from smtk import log
from smtk.lines import LineSink
from smtk.local.metrics import Metrics


def _stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class JobLog:
    """Per-host log files and metrics, fed by the hosts' output sinks (thread-safe)."""

    def __init__(self, job_dir: str, metrics: Metrics) -> None:
        self.directory = os.path.join(job_dir, "logs")
        self.metrics = metrics
        self._lock = threading.Lock()
        self._files: dict[str, TextIO] = {}

    def path(self, host: str) -> str:
        return os.path.join(self.directory, f"{host}.log")

    def sink(self, host: str, terminal: LineSink | None = None) -> LineSink:
        """A sink for ``host``'s lines: to ``terminal`` (default: our stdout, masked), the
        log file and the metrics."""
        handle = self._open(host)
        lock = threading.Lock()
        masker = log.masker()

        def emit(stream: str, line: str) -> None:
            if terminal is not None:
                terminal(stream, line)
            else:
                log.write("stdout", line)
            self.metrics.feed(host, line)
            text = f"{_stamp(time.time())} {stream} {masker.mask(line)}\n"
            # A full disk or a closed log: the job goes on.
            with lock, contextlib.suppress(OSError, ValueError):
                handle.write(text)

        return emit

    def _open(self, host: str) -> TextIO:
        with self._lock:
            handle = self._files.get(host)
            if handle is None:
                os.makedirs(self.directory, exist_ok=True)
                # Line-buffered: what a host wrote is in the file even if smtk local is killed.
                handle = open(self.path(host), "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
                self._files[host] = handle
            return handle

    def close(self) -> list[str]:
        """Close the files; the paths of the logs written."""
        with self._lock:
            files, self._files = self._files, {}
        for handle in files.values():
            with contextlib.suppress(OSError):
                handle.close()
        return [self.path(host) for host in files]
