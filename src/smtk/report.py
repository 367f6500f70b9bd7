"""The outcome of a job: the files the platform reads and the exit status.

This is the only module that writes ``output/success``, ``output/failure`` and
``output/failure.json`` (CONTRACT.md section 6). What went wrong is a
:class:`~smtk.failure.Failure` (built by :mod:`smtk.causes` from a process's end, or
from an error); this module renders it, masks it and writes it.

The failure file is built for the platform's 1024-character FailureReason: its first
line is the root cause, then where it happened, then the last lines of stderr::

    ValueError: bad shape (1, 3) at train.py:42
    where: host algo-1, exit status 1, after 3.2 s
    command: python train.py --epochs 3
    stderr (last lines):
      ...

``failure.json`` holds the full record. A failure file the user's script wrote is kept
as it is. Exit 0 with a failure reason, or a non-zero exit without one, never happens:
whatever the user left at the outcome paths (a directory, a FIFO) is moved aside, never
deleted, so the outcome can always be written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from typing import Any

from smtk import __version__
from smtk.failure import Failure, Outcome
from smtk.files import describe, read_text
from smtk.paths import Paths
from smtk.redact import Masker

logger = logging.getLogger("smtk")

FAILURE_LIMIT = 1024
_CAUSE_LIMIT = 400


def clear_stale(paths: Paths) -> None:
    """Remove outcome files left by an earlier run of the same tree (``smtk local`` reruns).

    Something at those paths that is not a regular file (a directory, a FIFO) is moved
    aside instead, so nothing of the user's is lost and the outcome can be written.
    """
    for path in (paths.success_file, paths.failure_file, paths.failure_json_file):
        if not os.path.lexists(path):
            continue
        if describe(path) not in ("a regular file", "a symbolic link"):
            _move_aside(path)
            continue
        logger.info("removing %s left by an earlier run", path)
        try:
            os.unlink(path)
        except OSError as exc:
            logger.warning("cannot remove %s: %s", path, exc.strerror)


def _move_aside(path: str) -> str | None:
    """Rename what is at ``path`` to ``<path>.moved-<n>``; the new name, or None."""
    kind = describe(path)
    for attempt in range(100):
        target = f"{path}.moved-{os.getpid()}-{attempt}"
        if os.path.lexists(target):
            continue
        try:
            os.rename(path, target)
        except OSError as exc:
            logger.error("cannot move %s (%s) out of the way: %s", path, kind, exc.strerror)
            return None
        logger.warning("%s was %s, not an outcome file: moved it to %s", path, kind, target)
        return target
    return None


def render_failure(failure: Failure, limit: int = FAILURE_LIMIT) -> str:
    """The failure file's text: root cause, where, stderr tail; within ``limit`` characters."""
    cause = " ".join(failure.cause[: _CAUSE_LIMIT * 2].split()) or "the job failed"
    if len(cause) > _CAUSE_LIMIT:
        cause = cause[: _CAUSE_LIMIT - 3] + "..."
    where = []
    if failure.host:
        where.append(f"host {failure.host}")
    if failure.rank is not None:
        where.append(f"rank {failure.rank}")
    where.append(f"exit status {failure.exit_status}")
    if failure.seconds is not None:
        where.append(f"after {failure.seconds:.1f} s")
    head = [cause, "where: " + ", ".join(where)]
    if failure.command:
        command = failure.command if len(failure.command) <= 200 else failure.command[:197] + "..."
        head.append(f"command: {command}")
    text = "\n".join(head)
    tail = [line.rstrip() for line in failure.stderr_tail if line.strip()]
    if tail and len(text) < limit - 40:
        header = "\nstderr (last lines):"
        chosen: list[str] = []
        budget = limit - len(text) - len(header)
        for line in reversed(tail):
            entry = "\n  " + (line if len(line) <= 300 else line[:297] + "...")
            if len(entry) > budget:
                break
            chosen.append(entry)
            budget -= len(entry)
        if chosen:
            text += header + "".join(reversed(chosen))
    return text[:limit]


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory."""
    if os.path.lexists(path) and describe(path) not in ("a regular file", "a symbolic link"):
        _move_aside(path)
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def finish(paths: Paths, outcome: Outcome, masker: Masker | None = None) -> int:
    """Write the outcome files and return the exit status ``train`` must exit with.

    Everything written (the files and the log line) goes through ``masker``.
    """
    masker = masker or Masker()
    try:
        os.makedirs(paths.output_dir, exist_ok=True)
    except OSError as exc:
        logger.error("cannot create %s: %s", paths.output_dir, exc.strerror)
    user_failure = read_text(paths.failure_file, FAILURE_LIMIT * 4)
    if user_failure is None and os.path.lexists(paths.failure_file):
        _move_aside(paths.failure_file)  # a directory or a FIFO: not a reason anyone can read
    if outcome.success and user_failure is None:
        try:
            _write_atomic(paths.success_file, "")
        except OSError as exc:
            outcome = Failure(
                cause=f"the job succeeded but {paths.success_file} cannot be written: {exc.strerror}",
                category="internal-error",
                host=outcome.host,
                seconds=outcome.seconds,
            )
        else:
            seconds = f" after {outcome.seconds:.1f} s" if outcome.seconds is not None else ""
            logger.info("reporting success%s", seconds)
            return 0
    if isinstance(outcome, Failure):
        failure = outcome
    else:
        # The script exited 0 but wrote a failure reason: a failure, never "exit 0 with a reason".
        first = (user_failure or "").strip().splitlines()[0:1]
        failure = Failure(
            cause=first[0] if first else "the training script wrote output/failure",
            category="user-failure-file",
            host=outcome.host,
            seconds=outcome.seconds,
        )
    exit_status = failure.exit_status if failure.exit_status != 0 else 1
    record = masker.mask_tree(_record(failure, exit_status, user_failure))
    text = masker.mask(render_failure(failure, FAILURE_LIMIT - 1))  # room for the final newline
    try:
        if user_failure is None:
            _write_atomic(paths.failure_file, text + "\n")
        else:
            logger.info("keeping the failure file the training script wrote (%s)", paths.failure_file)
        _write_atomic(paths.failure_json_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        logger.error("cannot write the failure files in %s: %s", paths.output_dir, exc.strerror)
    first_line = (user_failure.strip().splitlines() or [""])[0] if user_failure else text.splitlines()[0]
    logger.error("reporting failure (exit status %d): %s", exit_status, masker.mask(first_line))
    return exit_status


def _record(failure: Failure, exit_status: int, user_failure: str | None) -> dict[str, Any]:
    data = failure.to_json()
    data["success"] = False
    data["exit_status"] = exit_status
    data["user_failure_file"] = user_failure is not None
    if user_failure is not None:
        data["user_failure_reason"] = user_failure[:FAILURE_LIMIT]
    data["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["smtk_version"] = __version__
    return data


def read_failure(paths: Paths) -> Failure | None:
    """The failure record a finished ``train`` left in ``output/failure.json`` (``smtk local``)."""
    text = read_text(paths.failure_json_file, 4 * 1024 * 1024)
    if text is None:
        return None
    try:
        return Failure.from_json(json.loads(text))
    except (ValueError, RecursionError):
        return None
