"""Installing the user's dependencies before launch: ``requirements.txt`` and packages.

What runs (argv lists, cwd = the code dir, stdin closed, the job's interpreter):

- ``package`` entry point: ``<py> -m pip install . [-r requirements.txt]``;
- any other entry point with a ``requirements.txt``: ``<py> -m pip install -r requirements.txt``
  (CONTRACT.md section 4; the reference skipped shell scripts and function entry points).

``SMTK_PIP_ARGS`` adds options to every install (split like a shell would, e.g.
``--no-index --find-links /wheels``); pip reads ``PIP_INDEX_URL`` and its other
``PIP_*`` variables from the job's environment as usual. ``SMTK_SKIP_REQUIREMENTS=1``
skips installs (dependencies baked into the image).

pip's output is streamed to the log line by line. pip runs in a process group of its
own: when ``train`` is told to stop (``stopped`` returns the signal), the group (pip
and the builds it started) gets SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds,
and :class:`InstallInterrupted` is raised, so a long install never eats the platform's
stop window. On failure the
:class:`~smtk.errors.InstallError` starts with pip's own ``ERROR:`` lines (or its last
lines), then the exit status and the command. Credentials (in index URLs anywhere: the
environment, ``SMTK_PIP_ARGS``, ``requirements.txt`` options, and secret-named
variables) are masked in every log line and message.

::

    from smtk.install import install_requirements
    report = install_requirements(env, entry)    # None when nothing was installed
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from smtk.entry_point import EntryPoint, ensure_executable
from smtk.errors import ConfigError, InstallError
from smtk.launch.process import signal_group
from smtk.log import logger
from smtk.redact import redact_text, secret_values
from smtk.report import signal_name

if TYPE_CHECKING:
    from smtk.environment import Environment

SKIP_ENV = "SMTK_SKIP_REQUIREMENTS"
PIP_ARGS_ENV = "SMTK_PIP_ARGS"
REQUIREMENTS = "requirements.txt"
#: pip output lines kept for the failure message.
TAIL_LINES = 200
#: At most this many of pip's error lines go into the message.
ERROR_LINES = 20
_TRUE = {"1", "true", "yes", "on"}
#: Seconds pip's process group has after SIGTERM before it is killed.
STOP_GRACE = 5.0
#: How often a running install checks whether a stop was asked for.
_STOP_POLL = 0.1
_URL_USERINFO = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://(?P<user>[^/@\s:]+)(?::(?P<password>[^/@\s]*))?@")


class InstallInterrupted(Exception):
    """A stop signal arrived during an install; pip and its children were stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"install stopped by signal {signum}")
        self.signum = signum


def _never() -> int | None:
    return None


@dataclass(frozen=True)
class InstallReport:
    """One successful install."""

    kind: Literal["package", "requirements"]
    #: The command as run, with credentials masked.
    command: tuple[str, ...]
    seconds: float


def install_requirements(
    env: Environment,
    entry: EntryPoint,
    python: str = sys.executable,
    *,
    stopped: Callable[[], int | None] = _never,
) -> InstallReport | None:
    """Prepare ``entry`` to run: make it executable if needed, install its dependencies.

    ``None`` when there was nothing to install or installs are switched off.
    ``stopped``: returns the stop signal once one was received (see :func:`run_pip`).
    """
    ensure_executable(entry)
    environ = env.environ
    code_dir = entry.code_dir
    if environ.get(SKIP_ENV, "").strip().lower() in _TRUE:
        logger.info("install: %s is set; not installing anything", SKIP_ENV)
        return None
    has_requirements = os.path.isfile(os.path.join(code_dir, REQUIREMENTS))
    if entry.kind == "package":
        kind: Literal["package", "requirements"] = "package"
        target = ["."] + (["-r", REQUIREMENTS] if has_requirements else [])
    elif has_requirements:
        # CONTRACT.md section 4: requirements.txt is installed for every kind of entry point
        # (the reference skipped it for shell scripts and function entry points).
        kind = "requirements"
        target = ["-r", REQUIREMENTS]
    else:
        return None
    if environ.get("CA_REPOSITORY_ARN"):
        logger.warning(
            "install: CA_REPOSITORY_ARN is set but smtk does not fetch CodeArtifact tokens; "
            "set PIP_INDEX_URL (or --index-url in SMTK_PIP_ARGS) to the repository's pip URL instead"
        )
    argv = [python, "-m", "pip", "install", *pip_args(environ), *target]
    return run_pip(
        argv,
        code_dir,
        environ,
        kind,
        secrets=_secrets(environ, env.raw_hyperparameters, code_dir),
        stopped=stopped,
    )


def pip_args(environ: Mapping[str, str]) -> list[str]:
    """``SMTK_PIP_ARGS`` split like a shell would."""
    raw = environ.get(PIP_ARGS_ENV, "")
    try:
        return shlex.split(raw)
    except ValueError as exc:
        raise ConfigError(PIP_ARGS_ENV, None, "pip options quoted as in a shell", f"<{exc}>") from exc


def run_pip(
    argv: list[str],
    cwd: str,
    environ: Mapping[str, str],
    kind: Literal["package", "requirements"],
    *,
    secrets: Iterable[str] = (),
    stopped: Callable[[], int | None] = _never,
) -> InstallReport:
    """Run one pip command, streaming its output; :class:`InstallError` if it fails.

    ``stopped`` is polled while pip runs; once it returns a signal number, pip's process
    group is stopped (SIGTERM, SIGKILL after ``STOP_GRACE``) and
    :class:`InstallInterrupted` is raised.
    """
    secret_list = sorted({s for s in secrets if s}, key=len, reverse=True)
    shown = tuple(redact_text(arg, secret_list) for arg in argv)
    signum = stopped()
    if signum is not None:
        raise InstallInterrupted(signum)
    child_env = dict(environ)
    # No prompts (stdin is closed anyway), no self-update nagging, no root warning noise.
    child_env.setdefault("PIP_NO_INPUT", "1")
    child_env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    child_env.setdefault("PIP_ROOT_USER_ACTION", "ignore")
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    logger.info("install: %s (in %s)", shlex.join(shown), cwd)
    started = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            # A group of its own: a stop reaches the builds pip starts, and a terminal's
            # Ctrl-C reaches train (which stops pip) rather than pip alone.
            start_new_session=True,
        )
    except OSError as exc:
        raise InstallError(
            f"cannot run {shown[0]}: {exc.strerror or exc}; command: {shlex.join(shown)}"
        ) from exc
    assert proc.stdout is not None
    # The output is read on a thread so that the wait below can notice a stop at once,
    # even while pip prints nothing (a long build).
    pump = threading.Thread(
        target=_pump, args=(proc.stdout, tail, secret_list), name="smtk-pip-output", daemon=True
    )
    pump.start()
    try:
        status = _wait(proc, stopped)
    finally:
        if proc.poll() is None:  # interrupted (a stop, or an exception): stop pip too
            _stop_group(proc)
        # The pipe ends when pip and every child it started have closed it.
        pump.join(timeout=STOP_GRACE)
        if not pump.is_alive():
            proc.stdout.close()
    seconds = time.monotonic() - started
    if status != 0:
        reason = pip_error(tail)
        what = "package install" if kind == "package" else f"{REQUIREMENTS} install"
        raise InstallError(
            f"{reason}\n({what} failed: pip exited with status {status} after {seconds:.1f}s; "
            f"command: {shlex.join(shown)})"
        )
    logger.info("install: done in %.1fs", seconds)
    return InstallReport(kind, shown, seconds)


def _pump(lines: Iterator[str], tail: collections.deque[str], secrets: list[str]) -> None:
    for raw in lines:
        line = redact_text(raw.rstrip("\r\n"), secrets)
        tail.append(line)
        logger.info("pip: %s", line)


def _wait(proc: subprocess.Popen[str], stopped: Callable[[], int | None]) -> int:
    """pip's exit status; stops its group and raises :class:`InstallInterrupted` on a stop."""
    while True:
        try:
            return proc.wait(timeout=_STOP_POLL)
        except subprocess.TimeoutExpired:
            signum = stopped()
            if signum is not None:
                logger.warning(
                    "install: %s received; stopping pip (SIGTERM, SIGKILL after %.0fs)",
                    signal_name(signum),
                    STOP_GRACE,
                )
                _stop_group(proc)
                raise InstallInterrupted(signum) from None


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to pip's process group, SIGKILL to what is left after ``STOP_GRACE``."""
    signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE)
    # Also children of pip's that outlived it (a build ignoring SIGTERM).
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def pip_error(lines: Iterable[str]) -> str:
    """pip's own error text: its ``ERROR:`` lines (with their continuation), else from its
    first ``error:`` line on, else its last lines."""
    kept = [line for line in lines if line.strip()]
    picked: list[str] = []
    in_error = False
    for line in kept:
        if line.startswith("ERROR:"):
            in_error = True
            picked.append(line)
        elif in_error and line.startswith((" ", "\t")):
            picked.append(line)
        else:
            in_error = False
    if not picked:
        # pip's rich errors ("error: subprocess-exited-with-error", then the build's own
        # output) are lower case and indented: start there, else take the last lines.
        starts = [i for i, line in enumerate(kept) if line.lstrip().lower().startswith("error:")]
        picked = kept[starts[0] :] if starts else kept[-15:]
    if not picked:
        picked = ["pip printed nothing"]
    return "\n".join(picked[:ERROR_LINES])


def _secrets(environ: Mapping[str, str], hyperparameters: Mapping[str, object], code_dir: str) -> list[str]:
    """Values to mask: secret-named variables and hyperparameters, and URL credentials."""
    found = set(secret_values(environ, hyperparameters))
    texts = [v for k, v in environ.items() if k.startswith("PIP_") or k == PIP_ARGS_ENV]
    try:
        with open(os.path.join(code_dir, REQUIREMENTS), encoding="utf-8", errors="replace") as handle:
            texts.append(handle.read(1 << 20))
    except OSError:
        pass
    for text in texts:
        found.update(url_credentials(text))
    return sorted(found, key=len, reverse=True)


def url_credentials(text: str) -> set[str]:
    """The secret parts of ``scheme://user:password@`` in ``text``.

    The password, or the user when there is none (``https://TOKEN@host``), because pip
    and its libraries sometimes print a netloc without the scheme.
    """
    found: set[str] = set()
    for match in _URL_USERINFO.finditer(text):
        password = match.group("password")
        secret = password if password else match.group("user")
        if secret and len(secret) >= 3:
            found.add(secret)
    return found
