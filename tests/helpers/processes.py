"""Looking at processes from tests, and a build that hangs."""

from __future__ import annotations

from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def hanging_setup_py(pid_file: Path) -> str:
    """A ``setup.py`` whose build writes its pid to ``pid_file``, ignores SIGTERM and hangs."""
    return (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(600)\n"
        "raise SystemExit(1)\n"
    )
