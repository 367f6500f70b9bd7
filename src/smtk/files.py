"""Opening files the user controls without ever blocking on them.

A path in the job tree or the code dir can be anything the user put there: a FIFO
(opening it for reading blocks until someone writes), a device (``/dev/zero`` never
ends), a directory, a dangling link. Every read of such a path goes through
:func:`open_regular`, which opens with ``O_NONBLOCK`` (so opening a FIFO returns at
once), checks the type of what was actually opened with ``fstat`` (no race between a
check and the open), and refuses anything but a regular file, naming what it found.

::

    data = read_regular(path, limit=1 << 20)       # bytes, or None when absent or not a file
    fd = open_regular(path)                        # NotRegularFile names what is there instead
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import stat

logger = logging.getLogger("smtk")


class NotRegularFile(OSError):
    """``path`` exists but is not a regular file (``kind`` says what it is)."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path} is {kind}, not a regular file")
        self.path = path
        self.kind = kind


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` is, for messages: ``a FIFO``, ``a directory``, ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def describe(path: str) -> str:
    """What is at ``path`` (links not followed): ``a FIFO``, ``nothing``, ..."""
    try:
        return kind_of(os.lstat(path).st_mode)
    except FileNotFoundError:
        return "nothing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def open_regular(path: str) -> int:
    """A read-only, blocking descriptor of the regular file at ``path`` (links followed).

    Raises :class:`NotRegularFile` for anything else, and :class:`OSError` (e.g.
    ``FileNotFoundError``) when it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, kind_of(mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of the regular file at ``path``; ``None`` when it is absent,
    unreadable or not a regular file."""
    try:
        fd = open_regular(path)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(limit)
        except OSError:
            return None


def read_text(path: str, limit: int) -> str | None:
    """:func:`read_regular` decoded as UTF-8 (invalid bytes replaced)."""
    data = read_regular(path, limit)
    return None if data is None else data.decode("utf-8", "replace")


def is_regular(path: str) -> bool:
    """Whether ``path`` is a regular file (links followed), without opening it."""
    with contextlib.suppress(OSError):
        return stat.S_ISREG(os.stat(path).st_mode)
    return False


def ensure_open_files(needed: int) -> int:
    """Raise this process's soft limit on open files to ``needed`` (up to the hard limit).

    Containers often start with a soft limit of 1024: the master of a 1,000-host job keeps
    one socket per host. Returns the soft limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot raise the open-files limit from %d to %d: %s", soft, wanted, exc)
        return soft
    if wanted < needed:
        logger.warning(
            "the open-files limit is %d (hard limit), below the %d this host needs: "
            "raise it (ulimit -n, or the container's nofile ulimit)",
            wanted,
            needed,
        )
    return wanted
