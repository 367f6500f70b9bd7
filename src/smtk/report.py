"""The outcome of a job: classification, the failure files and the exit status.

This is the only module that writes ``output/success``, ``output/failure`` and
``output/failure.json`` (CONTRACT.md section 6).

The failure file is built for the platform's 1024-character FailureReason: its first
line is the root cause, then where it happened, then the last lines of stderr::

    ValueError: bad shape (1, 3) at train.py:42
    where: host algo-1, exit status 1, after 3.2 s
    command: python train.py --epochs 3
    stderr (last lines):
      ...

``failure.json`` holds the full record (cause, category, host, rank, exit status,
signal, stderr tail, retryable). A failure file the user's script wrote is kept as
it is. Exit 0 with a failure reason, or a non-zero exit without one, never happens.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from smtk import __version__
from smtk.errors import SmtkError
from smtk.paths import Paths
from smtk.redact import redact_text

logger = logging.getLogger("smtk")

FAILURE_LIMIT = 1024
_CAUSE_LIMIT = 400

_TRACEBACK_HEADER = "Traceback (most recent call last):"
# "  File "x.py", line 3, in main" (tracebacks) and "  File "x.py", line 3 in main" (faulthandler)
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+),? in (?P<func>.+)$')
_EXCEPTION = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Failure|Warning|Fault|Timeout)\w*)"
    r"(?::\s?(?P<msg>.*))?$"
)
_TAG = re.compile(r"^(?:\[[^\]]{1,64}\]:?\s?|[\w.-]{1,64}:\d{1,5}\s)")

_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: "likely out of memory: the kernel's OOM killer sends SIGKILL "
    "(check the instance's memory, batch size and data-loader workers)",
    signal.SIGSEGV: "a native crash (segmentation fault) in the process or one of its extensions",
    signal.SIGBUS: "a bus error: often /dev/shm too small for data-loader workers",
    signal.SIGABRT: "the process aborted (C/C++ abort(), failed assertion or uncaught C++ exception)",
}
_GLOO_EXIT_ABORT = "terminate called without an active exception"


@dataclass(frozen=True)
class Outcome:
    """What happened to the job, as reported to the platform."""

    success: bool
    exit_status: int
    cause: str = ""
    category: str = "success"
    host: str | None = None
    rank: int | None = None
    signal: int | None = None
    stderr_tail: tuple[str, ...] = ()
    retryable: bool = False
    detail: str = ""
    command: str = ""
    seconds: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def signal_name(self) -> str | None:
        return signal_name(self.signal) if self.signal is not None else None


def success(seconds: float | None = None, host: str | None = None) -> Outcome:
    return Outcome(success=True, exit_status=0, host=host, seconds=seconds)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal N`` for a number that names no signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# -- root causes ------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonError:
    """The last Python exception found in some output."""

    exception: str
    location: str | None
    traceback: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.exception} at {self.location}" if self.location else self.exception


def _untag(line: str) -> str:
    return _TAG.sub("", line, count=1)


def find_python_error(lines: Sequence[str], code_dir: str | None = None) -> PythonError | None:
    """The last exception printed in ``lines``, with its innermost user frame.

    A user frame is one inside ``code_dir``; without one, the innermost frame is used.
    """
    clean = [_untag(line.rstrip()) for line in lines]
    start = None
    for index in range(len(clean) - 1, -1, -1):
        if clean[index].strip() == _TRACEBACK_HEADER or clean[index].strip().startswith("Current thread"):
            start = index
            break
    frames: list[tuple[str, int]] = []
    exception: str | None = None
    block: list[str] = []
    if start is not None:
        for line in clean[start:]:
            block.append(line)
            match = _FRAME.match(line)
            if match:
                frames.append((match.group("file"), int(match.group("line"))))
                continue
            if frames and line and not line[0].isspace() and exception is None:
                if line.startswith(("During handling", "The above exception")):
                    continue
                exception = line.strip()
    if exception is None:
        # The header scrolled out of the tail (deep recursion, long traceback):
        # fall back to the last line shaped like "SomeError: message".
        for line in reversed(clean):
            stripped = line.strip()
            if _EXCEPTION.match(stripped):
                exception = stripped
                break
    if exception is None:
        return None
    return PythonError(exception, _location(frames, code_dir), tuple(block[-60:]))


def _location(frames: Sequence[tuple[str, int]], code_dir: str | None) -> str | None:
    if not frames:
        return None
    if code_dir:
        root = os.path.realpath(code_dir)
        for path, line in reversed(frames):
            if path.startswith("<"):
                continue
            full = path if os.path.isabs(path) else os.path.join(root, path)
            real = os.path.realpath(full)
            if real == root or real.startswith(root + os.sep):
                return f"{os.path.relpath(real, root)}:{line}"
    path, line = frames[-1]
    return f"{os.path.basename(path)}:{line}"


def _last_meaningful(lines: Sequence[str]) -> str | None:
    for line in reversed(lines):
        text = _untag(line).strip()
        if text:
            return text
    return None


def classify_exit(
    *,
    returncode: int | None,
    signum: int | None,
    stderr_tail: Sequence[str],
    stdout_tail: Sequence[str] = (),
    code_dir: str | None = None,
    what: str = "the training script",
) -> tuple[str, str, bool, str]:
    """``(cause, category, retryable, detail)`` for a process that ended badly."""
    error = find_python_error(stderr_tail, code_dir) or find_python_error(stdout_tail, code_dir)
    detail = "\n".join(error.traceback) if error else ""
    joined = "\n".join(stderr_tail)
    if signum is not None:
        name = signal_name(signum)
        cause = f"{what} was killed by {name} (signal {signum})"
        hint = _SIGNAL_HINTS.get(signum)
        if signum == signal.SIGABRT and _GLOO_EXIT_ABORT in joined:
            hint = (
                "C++ runtime abort at exit ('terminate called without an active exception'): with "
                "torch.distributed this usually means a rank exited without dist.destroy_process_group()"
            )
        if hint:
            cause += f": {hint}"
        if error:
            cause = f"{cause}; last Python error: {error.describe()}"
        category = "out-of-memory" if signum == signal.SIGKILL else "signal"
        return cause, category, False, detail
    if "Watchdog caught collective operation timeout" in joined:
        line = next(
            (_untag(x).strip() for x in reversed(stderr_tail) if "Watchdog caught" in x), "collective timeout"
        )
        return f"collective operation timed out (NCCL watchdog): {line}", "collective-timeout", True, detail
    if error:
        return error.describe(), "exception", False, detail
    last = _last_meaningful(stderr_tail)
    cause = f"{what} exited with status {returncode}"
    if last:
        cause += f": {last}"
    return cause, "exit", False, detail


# -- outcomes from errors ----------------------------------------------------------------


def from_error(error: SmtkError, host: str | None = None, seconds: float | None = None) -> Outcome:
    """The outcome for an error smtk raised on purpose (config, entry point, install, ...)."""
    return Outcome(
        success=False,
        exit_status=error.exit_status,
        cause=f"{type(error).__name__}: {error}",
        category=error.reference,
        host=host,
        retryable=error.retryable,
        seconds=seconds,
    )


def from_internal_error(exc: BaseException, host: str | None = None) -> Outcome:
    """An unexpected error inside smtk: exit 1, with the traceback's last frames."""
    import traceback  # only on this rare path: it is not free to import

    frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
    detail = "".join(frames)
    tail = tuple(detail.strip().splitlines()[-12:])
    return Outcome(
        success=False,
        exit_status=1,
        cause=f"internal error in smtk: {type(exc).__name__}: {exc}",
        category="internal-error",
        host=host,
        stderr_tail=tail,
        detail=detail,
    )


# -- writing ------------------------------------------------------------------------------


def clear_stale(paths: Paths) -> None:
    """Remove outcome files left by an earlier run of the same tree (``smtk local`` reruns)."""
    for path in (paths.success_file, paths.failure_file, paths.failure_json_file):
        if os.path.lexists(path):
            logger.info("removing %s left by an earlier run", path)
            try:
                os.unlink(path)
            except OSError as exc:
                logger.warning("cannot remove %s: %s", path, exc.strerror)


def render_failure(outcome: Outcome, limit: int = FAILURE_LIMIT) -> str:
    """The failure file's text: root cause, where, stderr tail; within ``limit`` characters."""
    cause = outcome.cause.strip().replace("\n", " ") or "the job failed"
    if len(cause) > _CAUSE_LIMIT:
        cause = cause[: _CAUSE_LIMIT - 3] + "..."
    where = []
    if outcome.host:
        where.append(f"host {outcome.host}")
    if outcome.rank is not None:
        where.append(f"rank {outcome.rank}")
    where.append(f"exit status {outcome.exit_status}")
    if outcome.seconds is not None:
        where.append(f"after {outcome.seconds:.1f} s")
    head = [cause, "where: " + ", ".join(where)]
    if outcome.command:
        command = outcome.command if len(outcome.command) <= 200 else outcome.command[:197] + "..."
        head.append(f"command: {command}")
    text = "\n".join(head)
    tail = [line.rstrip() for line in outcome.stderr_tail if line.strip()]
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
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _read_user_failure(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(FAILURE_LIMIT * 4)
    except OSError:
        return None


def finish(paths: Paths, outcome: Outcome, secrets: Sequence[str] = ()) -> int:
    """Write the outcome files and return the exit status ``train`` must exit with."""
    try:
        os.makedirs(paths.output_dir, exist_ok=True)
    except OSError as exc:
        logger.error("cannot create %s: %s", paths.output_dir, exc.strerror)
    user_failure = _read_user_failure(paths.failure_file) if os.path.exists(paths.failure_file) else None
    if outcome.success and user_failure is None:
        try:
            _write_atomic(paths.success_file, "")
        except OSError as exc:
            logger.error("the job succeeded but %s cannot be written: %s", paths.success_file, exc.strerror)
            return 1
        logger.info("reporting success%s", f" after {outcome.seconds:.1f} s" if outcome.seconds else "")
        return 0
    if outcome.success:
        # The script exited 0 but wrote a failure reason: a failure, never "exit 0 with a reason".
        first = (user_failure or "").strip().splitlines()[0:1]
        outcome = Outcome(
            success=False,
            exit_status=1,
            cause=first[0] if first else "the training script wrote output/failure",
            category="user-failure-file",
            host=outcome.host,
            seconds=outcome.seconds,
        )
    exit_status = outcome.exit_status if outcome.exit_status != 0 else 1
    record = _record(outcome, exit_status, secrets, user_failure)
    text = redact_text(render_failure(outcome), secrets)
    try:
        if user_failure is None:
            _write_atomic(paths.failure_file, text)
        else:
            logger.info("keeping the failure file the training script wrote (%s)", paths.failure_file)
        _write_atomic(paths.failure_json_file, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        logger.error("cannot write the failure files in %s: %s", paths.output_dir, exc.strerror)
    first_line = (user_failure.strip().splitlines() or [""])[0] if user_failure else text.splitlines()[0]
    logger.error("reporting failure (exit status %d): %s", exit_status, redact_text(first_line, secrets))
    return exit_status


def _record(
    outcome: Outcome, exit_status: int, secrets: Sequence[str], user_failure: str | None
) -> dict[str, Any]:
    data = asdict(outcome)
    data["exit_status"] = exit_status
    data["signal_name"] = outcome.signal_name
    data["stderr_tail"] = list(outcome.stderr_tail)
    data["extra"] = dict(outcome.extra)
    data["user_failure_file"] = user_failure is not None
    if user_failure is not None:
        data["user_failure_reason"] = user_failure[:FAILURE_LIMIT]
    data["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["smtk_version"] = __version__
    redacted: dict[str, Any] = _redact_tree(data, secrets)
    return redacted


def _redact_tree(value: Any, secrets: Sequence[str]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, list):
        return [_redact_tree(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _redact_tree(v, secrets) for k, v in value.items()}
    return value
