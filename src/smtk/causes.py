"""Why a process ended badly: from its error file, its output or the signal, to a :class:`Failure`.

The sources, in order of trust:

1. **torchrun's error file.** ``TORCHELASTIC_ERROR_FILE`` names a JSON file that
   ``torch.distributed.elastic.multiprocessing.errors.record`` (``@record`` on the
   user's ``main``) writes when an exception escapes: its message, its traceback and
   a timestamp. torchrun sets it for every rank; smtk sets it for plain processes and
   MPI ranks too, so a script decorated with ``@record`` is understood everywhere.
2. **A Python traceback in stderr** (then stdout): the last exception printed, with the
   innermost frame inside the code dir (``ValueError: bad shape at train.py:42``).
3. **The signal** that killed it, with what it usually means (SIGKILL: the OOM killer).
4. **The exit status** and the last non-empty line of stderr.

Everything here runs in time linear in the output it reads: the tail kept by the
supervisor is bounded, and no pattern backtracks over a long line.

::

    failure = causes.process_failure(returncode=1, signum=None, stderr_tail=lines,
                                     code_dir="/opt/ml/code", host="algo-1")
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from smtk.failure import Failure
from smtk.files import read_regular
from smtk.stop import signal_name

#: An error file larger than this is not read (torch writes a few KiB).
MAX_ERROR_FILE = 4 * 1024 * 1024
#: Only this much of a line is looked at for an exception (a traceback line is short).
_LINE_LOOK = 4096

_TRACEBACK_HEADER = "Traceback (most recent call last):"
# "  File "x.py", line 3, in main" (tracebacks) and "  File "x.py", line 3 in main" (faulthandler)
_FRAME = re.compile(r'\s*File "(?P<file>[^"\n]{1,4096})", line (?P<line>\d{1,9}),? in (?P<func>.+)')
# The type is one dotted identifier at the start of the line, then ":" or the end.
_EXCEPTION_LINE = re.compile(r"(?P<type>[A-Za-z_][\w.]{0,255})(?::\s?(?P<msg>.*))?")
_EXCEPTION_WORDS = ("Error", "Exception", "Interrupt", "Exit", "Failure", "Warning", "Fault", "Timeout")
_TAG = re.compile(r"(?:\[[^\]]{1,64}\]:?\s?|[\w.-]{1,64}:\d{1,5}\s)")

_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: "likely out of memory: the kernel's OOM killer sends SIGKILL "
    "(check the instance's memory, batch size and data-loader workers)",
    signal.SIGSEGV: "a native crash (segmentation fault) in the process or one of its extensions",
    signal.SIGBUS: "a bus error: often /dev/shm too small for data-loader workers",
    signal.SIGABRT: "the process aborted (C/C++ abort(), failed assertion or uncaught C++ exception)",
}
_GLOO_EXIT_ABORT = "terminate called without an active exception"
_NCCL_WATCHDOG = "Watchdog caught collective operation timeout"


@dataclass(frozen=True)
class PythonError:
    """The last Python exception found in some output."""

    exception: str
    location: str | None
    traceback: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.exception} at {self.location}" if self.location else self.exception


def _untag(line: str) -> str:
    """A line without a leading rank tag (``[rank0]:``, ``algo-1:0 ``)."""
    match = _TAG.match(line)
    return line[match.end() :] if match else line


def _exception_in(line: str) -> str | None:
    """``line`` when it reads like ``SomeError: message``, else ``None``."""
    match = _EXCEPTION_LINE.fullmatch(line[:_LINE_LOOK]) if len(line) <= _LINE_LOOK else None
    if match is None and len(line) > _LINE_LOOK:
        # A long message: decide on the type alone.
        head, sep, _ = line.partition(":")
        match = _EXCEPTION_LINE.fullmatch(head) if sep else None
    if match is None:
        return None
    name = match.group("type").rsplit(".", 1)[-1]
    return line if any(word in name for word in _EXCEPTION_WORDS) else None


def find_python_error(lines: Sequence[str], code_dir: str | None = None) -> PythonError | None:
    """The last exception printed in ``lines``, with its innermost user frame.

    A user frame is one inside ``code_dir``; without one, the innermost frame is used.
    """
    clean = [_untag(line.rstrip()) for line in lines]
    start = None
    for index in range(len(clean) - 1, -1, -1):
        stripped = clean[index].strip()
        if stripped == _TRACEBACK_HEADER or stripped.startswith("Current thread"):
            start = index
            break
    frames: list[tuple[str, int]] = []
    exception: str | None = None
    block: list[str] = []
    if start is not None:
        for line in clean[start:]:
            block.append(line)
            match = _FRAME.match(line[:_LINE_LOOK])
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
            exception = _exception_in(line.strip())
            if exception is not None:
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


# -- torchrun's error file ----------------------------------------------------------------------


def read_error_file(path: str | None, code_dir: str | None = None) -> PythonError | None:
    """The exception recorded in a ``TORCHELASTIC_ERROR_FILE``, or ``None``.

    Only a regular file is read (never a FIFO the user put there), at most
    :data:`MAX_ERROR_FILE` bytes; anything unreadable or malformed counts as absent.
    """
    if not path:
        return None
    data = read_regular(path, MAX_ERROR_FILE)
    if data is None:
        return None
    try:
        document = json.loads(data)
        message = document["message"]
        if isinstance(message, str):
            text, stack = message, ""
        else:
            text = str(message["message"])
            stack = str((message.get("extraInfo") or {}).get("py_callstack") or "")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    lines = stack.splitlines()
    found = find_python_error(lines, code_dir) if lines else None
    location = found.location if found is not None else None
    return PythonError(text.strip().splitlines()[0] if text.strip() else text, location, tuple(lines[-60:]))


# -- a process's end ------------------------------------------------------------------------------


def process_failure(
    *,
    returncode: int | None,
    signum: int | None,
    stderr_tail: Sequence[str],
    stdout_tail: Sequence[str] = (),
    code_dir: str | None = None,
    what: str = "the training script",
    error_file: str | None = None,
    host: str | None = None,
    rank: int | None = None,
    command: str = "",
    seconds: float | None = None,
    time: float | None = None,
) -> Failure:
    """The :class:`Failure` of a process that exited with ``returncode`` or was killed by ``signum``."""
    error = (
        read_error_file(error_file, code_dir)
        or find_python_error(stderr_tail, code_dir)
        or find_python_error(stdout_tail, code_dir)
    )
    detail = "\n".join(error.traceback) if error else ""
    status = 128 + signum if signum is not None else (returncode if returncode else 1)
    cause, category, retryable = _cause(returncode, signum, stderr_tail, what, error)
    failure = Failure(
        cause=cause,
        category=category,
        exit_status=status,
        host=host,
        rank=rank,
        signal=signum,
        stderr_tail=tuple(stderr_tail[-40:]),
        retryable=retryable,
        detail=detail,
        command=command,
        seconds=seconds,
    )
    return failure if time is None else failure.evolve(time=time)


def _cause(
    returncode: int | None,
    signum: int | None,
    stderr_tail: Sequence[str],
    what: str,
    error: PythonError | None,
) -> tuple[str, str, bool]:
    if signum is not None:
        name = signal_name(signum)
        cause = f"{what} was killed by {name} (signal {signum})"
        hint = _SIGNAL_HINTS.get(signum)
        if signum == signal.SIGABRT and any(_GLOO_EXIT_ABORT in line for line in stderr_tail):
            hint = (
                "C++ runtime abort at exit ('terminate called without an active exception'): with "
                "torch.distributed this usually means a rank exited without dist.destroy_process_group()"
            )
        if hint:
            cause += f": {hint}"
        if error:
            cause = f"{cause}; last Python error: {error.describe()}"
        return cause, "out-of-memory" if signum == signal.SIGKILL else "signal", False
    watchdog = next((_untag(x).strip() for x in reversed(stderr_tail) if _NCCL_WATCHDOG in x), None)
    if watchdog is not None:
        return f"collective operation timed out (NCCL watchdog): {watchdog}", "collective-timeout", True
    if error:
        return error.describe(), "exception", False
    last = _last_meaningful(stderr_tail)
    cause = f"{what} exited with status {returncode}"
    if last:
        cause += f": {last}"
    return cause, "exit", False
