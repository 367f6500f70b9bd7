"""One failure record, from the rank that saw it to the file the platform reads.

A :class:`Failure` is what went wrong, where and when::

    Failure(cause="ValueError: bad shape at train.py:42", category="exception",
            exit_status=1, host="algo-2", rank=5, signal=None, time=1764633600.25,
            stderr_tail=(...), retryable=False)

The same record, in the same JSON form (:meth:`Failure.to_json` / :meth:`Failure.from_json`),
travels every way a failure travels: a rank wrapper writes it to
``<base>/.smtk/ranks/<rank>.json`` and reports it to its host's ``train`` over the
status port; hosts send it to each other over the status channel; ``report`` writes it
to ``output/failure.json``; ``smtk local`` reads it back from there for its summary.

When several failures are known, :func:`root_cause` picks the one to report: a root
cause beats fallout (a peer's "connection reset" is a consequence, not a cause), then
the earliest, then the lowest rank. A job that ended well is a :class:`Success`; an
:data:`Outcome` is one or the other.
"""

from __future__ import annotations

import math
import re
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from smtk.errors import SmtkError
from smtk.stop import Stopped, signal_name

#: Bounds on what :meth:`Failure.from_json` accepts from another process or host.
_MAX_TEXT = 64 * 1024
_MAX_TAIL_LINES = 200
_MAX_LINE = 16 * 1024

#: Causes that are consequences of another rank's or host's failure: its peers lose their
#: connections, NCCL aborts its communicators, MPI aborts the job.
_SECONDARY = re.compile(
    r"closed by peer|reset by peer|broken pipe|connection refused|NCCL communicator was aborted|"
    r"ncclRemoteError|DistNetworkError|Socket Timeout|MPI_ABORT|terminate called",
    re.IGNORECASE,
)


def is_secondary(cause: str) -> bool:
    """Whether ``cause`` reads like fallout of a peer's failure rather than a root cause."""
    return bool(_SECONDARY.search(cause[:_MAX_TEXT]))


@dataclass(frozen=True)
class Failure:
    """A failure of the job, a host or a rank (see the module docstring)."""

    #: The root cause in one line: ``ValueError: bad shape (1, 3) at train.py:42``.
    cause: str
    #: ``exception``, ``exit``, ``signal``, ``out-of-memory``, ``stopped``, ``config-error``, ...
    category: str = "exit"
    #: The status the job exits with because of it (never 0).
    exit_status: int = 1
    host: str | None = None
    rank: int | None = None
    #: The signal that killed the process, or that stopped the job.
    signal: int | None = None
    #: Wall-clock time (``time.time()``) it happened: the earliest failure is the root cause.
    time: float = field(default_factory=time.time)
    #: The last lines of the failing process's stderr.
    stderr_tail: tuple[str, ...] = ()
    #: Whether re-running the job unchanged may succeed.
    retryable: bool = False
    #: The whole Python traceback, when there was one.
    detail: str = ""
    #: The command that failed, secrets masked, for display.
    command: str = ""
    #: Seconds from ``train``'s start to the failure.
    seconds: float | None = None
    #: Details of some categories (a stop: ``timed_out``; a peer's failure: ``reported_by``).
    extra: Mapping[str, Any] = field(default_factory=dict)

    success: ClassVar[bool] = False

    @property
    def signal_name(self) -> str | None:
        return signal_name(self.signal) if self.signal is not None else None

    @property
    def secondary(self) -> bool:
        """Whether this reads like fallout of another failure (see :func:`root_cause`)."""
        return is_secondary(self.cause)

    def where(self) -> str:
        """``algo-2:5``, ``algo-2`` or ``this host``."""
        if self.host and self.rank is not None:
            return f"{self.host}:{self.rank}"
        return self.host or "this host"

    def describe(self) -> str:
        """One line naming where it failed and why: ``algo-2:5 failed (exit status 1): ValueError: x``."""
        how = (
            f"killed by {self.signal_name}" if self.signal is not None else f"exit status {self.exit_status}"
        )
        return f"{self.where()} failed ({how}): {self.cause or 'no cause reported'}"

    def evolve(self, **changes: Any) -> Failure:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values (the form every transport uses)."""
        return {
            "cause": self.cause,
            "category": self.category,
            "exit_status": self.exit_status,
            "host": self.host,
            "rank": self.rank,
            "signal": self.signal,
            "signal_name": self.signal_name,
            "time": self.time,
            "stderr_tail": list(self.stderr_tail),
            "retryable": self.retryable,
            "detail": self.detail,
            "command": self.command,
            "seconds": self.seconds,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: object) -> Failure | None:
        """A record read from another process or host; ``None`` when ``data`` is not one.

        Tolerant (missing fields take their defaults) but bounded: hostile or corrupt input
        never yields more than a few hundred KiB or a status of 0.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("cause"), str):
            return None
        status = _int(data.get("exit_status"), 1)
        signum = _int(data.get("signal"), None)
        rank = _int(data.get("rank"), None)
        seconds = _number(data.get("seconds"))
        tail = data.get("stderr_tail")
        extra = data.get("extra")
        return cls(
            cause=_text(data["cause"]),
            category=_text(data.get("category") or "exit", 64),
            exit_status=status if 0 < status < 256 else 1,
            host=_text(data["host"], 255) if isinstance(data.get("host"), str) else None,
            rank=rank if rank is None or rank >= 0 else None,
            signal=signum if signum is None or 0 < signum < 128 else None,
            time=_number(data.get("time")) or 0.0,
            stderr_tail=tuple(_text(str(line), _MAX_LINE) for line in tail[-_MAX_TAIL_LINES:])
            if isinstance(tail, list)
            else (),
            retryable=bool(data.get("retryable", False)),
            detail=_text(data.get("detail") if isinstance(data.get("detail"), str) else ""),
            command=_text(data.get("command") if isinstance(data.get("command"), str) else "", 4096),
            seconds=seconds,
            extra=dict(extra) if isinstance(extra, Mapping) and len(extra) <= 32 else {},
        )


@dataclass(frozen=True)
class Success:
    """The job, a host or a rank ended well."""

    seconds: float | None = None
    host: str | None = None

    success: ClassVar[bool] = True
    exit_status: ClassVar[int] = 0


#: How something ended.
Outcome = Success | Failure


def from_error(error: SmtkError, host: str | None = None, seconds: float | None = None) -> Failure:
    """The failure for an error smtk raised on purpose (config, entry point, install, ...)."""
    return Failure(
        cause=f"{type(error).__name__}: {error}",
        category=error.reference,
        exit_status=error.exit_status,
        host=host,
        retryable=error.retryable,
        seconds=seconds,
    )


def from_internal_error(exc: BaseException, host: str | None = None, seconds: float | None = None) -> Failure:
    """An unexpected error inside smtk (a bug): exit 1, with the traceback's last frames."""
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Failure(
        cause=f"internal error in smtk: {type(exc).__name__}: {exc}",
        category="internal-error",
        exit_status=1,
        host=host,
        stderr_tail=tuple(detail.strip().splitlines()[-12:]),
        detail=detail,
        seconds=seconds,
    )


def from_stop(stopped: Stopped, host: str | None = None, seconds: float | None = None) -> Failure:
    """A stop that interrupted ``stopped.during`` (before or after the user's code ran)."""
    during = f" while {stopped.during}" if stopped.during else ""
    return Failure(
        cause=f"Stopped: train received {signal_name(stopped.signum)}{during}",
        category="stopped",
        exit_status=stopped.exit_status,
        host=host,
        signal=stopped.signum,
        retryable=True,
        seconds=seconds,
    )


def root_cause(candidates: Iterable[Failure | None]) -> Failure | None:
    """The failure to report among ``candidates``: a root cause before fallout, then the
    earliest, then the lowest rank. ``None`` when there is none."""
    found = [f for f in candidates if f is not None]
    if not found:
        return None
    return min(found, key=lambda f: (f.secondary, f.time, f.rank if f.rank is not None else -1))


def _int(value: object, default: int | None) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return default
    try:
        number = int(value) if not isinstance(value, float) or math.isfinite(value) else default
    except (TypeError, ValueError):
        return default
    return number


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: object, limit: int = _MAX_TEXT) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
