"""Installing the user's dependencies before launch: ``requirements.txt`` and packages.

What runs (argv lists, cwd = the code dir, stdin closed, the job's interpreter):

- ``package`` entry point: ``<py> -m pip install . [-r requirements.txt]``;
- any other entry point with a ``requirements.txt``: ``<py> -m pip install -r requirements.txt``
  (CONTRACT.md section 4; the reference skipped shell scripts and function entry points).

``SMTK_PIP_ARGS`` adds options to every install (split like a shell would, e.g.
``--no-index --find-links /wheels``); pip reads ``PIP_INDEX_URL`` and its other
``PIP_*`` variables from the job's environment as usual. ``SMTK_SKIP_REQUIREMENTS=1``
skips installs (dependencies baked into the image).

pip's output is streamed to the log line by line. pip runs under the
:mod:`smtk.supervisor`, in a process group of its own: when ``train`` is told to stop,
the group (pip and the builds it started) gets SIGTERM, then SIGKILL after
:data:`~smtk.stop.HELPER_GRACE` seconds, and :class:`~smtk.stop.Stopped` is raised, so
a long install never eats the platform's stop window. On failure the
:class:`~smtk.errors.InstallError` starts with pip's own ``ERROR:`` lines (or its last
lines), then the exit status and the command. Credentials (in index URLs anywhere: the
environment, ``SMTK_PIP_ARGS``, ``requirements.txt`` options, and secret-named
variables) are added to the job's masker, so they are masked in every log line and message.

::

    from smtk.install import install_requirements
    report = install_requirements(env, entry)    # None when nothing was installed
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from smtk import log
from smtk.entry_point import EntryPoint, ensure_executable
from smtk.errors import InstallError
from smtk.files import describe, is_regular, read_text
from smtk.log import logger
from smtk.stop import HELPER_GRACE, Stop, Stopped
from smtk.supervisor import Supervisor

if TYPE_CHECKING:
    from smtk.environment import Environment

SKIP_ENV = "SMTK_SKIP_REQUIREMENTS"
PIP_ARGS_ENV = "SMTK_PIP_ARGS"
REQUIREMENTS = "requirements.txt"
#: pip output lines kept for the failure message.
TAIL_LINES = 200
#: At most this many of pip's error lines go into the message.
ERROR_LINES = 20
# Starts with the literal "://" (the regex engine jumps from one to the next) and each run
# stops at the next "/": linear in the text, however hostile (no scheme to backtrack over).
_URL_USERINFO = re.compile(r"://(?P<user>[^/@\s:]+)(?::(?P<password>[^/@\s]*))?@")


@dataclass(frozen=True)
class InstallReport:
    """One successful install."""

    kind: Literal["package", "requirements"]
    #: The command as run, with credentials masked.
    command: tuple[str, ...]
    seconds: float


def install_requirements(
    env: Environment, entry: EntryPoint, python: str = sys.executable, *, stop: Stop | None = None
) -> InstallReport | None:
    """Prepare ``entry`` to run: make it executable if needed, install its dependencies.

    ``None`` when there was nothing to install or installs are switched off. A stop
    stops pip's process group (see :func:`run_pip`) and raises :class:`Stopped`.
    """
    ensure_executable(entry)
    environ = env.environ
    code_dir = entry.code_dir
    if env.settings.skip_requirements:
        logger.info("install: %s is set; not installing anything", SKIP_ENV)
        return None
    requirements = os.path.join(code_dir, REQUIREMENTS)
    has_requirements = os.path.lexists(requirements)
    if has_requirements and not is_regular(requirements):
        raise InstallError(
            f"{requirements} is {describe(requirements)}, not a requirements file",
            hint="requirements.txt must be a regular file in the code dir",
        )
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
    log.add_secrets(_secrets(environ, code_dir))
    argv = [python, "-m", "pip", "install", *env.settings.pip_args, *target]
    return run_pip(argv, code_dir, environ, kind, stop=stop)


def run_pip(
    argv: list[str],
    cwd: str,
    environ: Mapping[str, str],
    kind: Literal["package", "requirements"],
    *,
    stop: Stop | None = None,
) -> InstallReport:
    """Run one pip command, streaming its output; :class:`InstallError` if it fails.

    pip runs under the :class:`~smtk.supervisor.Supervisor` in a process group of its
    own; a stop sends the group SIGTERM, then SIGKILL after ``HELPER_GRACE`` seconds,
    and raises :class:`Stopped`.
    """
    masker = log.masker()
    shown = tuple(masker.mask_argv(argv))
    if stop is not None:
        stop.check()
    child_env = dict(environ)
    # No prompts (stdin is closed anyway), no self-update nagging, no root warning noise.
    child_env.setdefault("PIP_NO_INPUT", "1")
    child_env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    child_env.setdefault("PIP_ROOT_USER_ACTION", "ignore")
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    logger.info("install: %s (in %s)", shlex.join(shown), cwd)
    started = time.monotonic()
    pip = Supervisor(stop=stop, grace=HELPER_GRACE, grace_setting="pip's stop grace")
    try:
        pip.start(
            "pip",
            argv,
            env=child_env,
            cwd=cwd,
            sink=_log_line,
            merge_stderr=True,
            tail_lines=TAIL_LINES,
            progress_interval=10.0,
        )
    except OSError as exc:
        raise InstallError(
            f"cannot run {shown[0]}: {exc.strerror or exc}; command: {shlex.join(shown)}"
        ) from exc
    result = pip.wait()["pip"]
    seconds = time.monotonic() - started
    if result.stopped_by is not None:
        raise Stopped(result.stopped_by, "pip was installing the job's dependencies")
    if result.exit_status != 0:
        reason = pip_error(result.stdout_tail)
        what = "package install" if kind == "package" else f"{REQUIREMENTS} install"
        raise InstallError(
            f"{reason}\n({what} failed: pip exited with status {result.exit_status} after {seconds:.1f}s; "
            f"command: {shlex.join(shown)})"
        )
    logger.info("install: done in %.1fs", seconds)
    return InstallReport(kind, shown, seconds)


def _log_line(_stream: str, line: str) -> None:
    logger.info("pip: %s", line)


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


def _secrets(environ: Mapping[str, str], code_dir: str) -> set[str]:
    """Credentials in index URLs pip may print: in ``PIP_*``, ``SMTK_PIP_ARGS`` and requirements.txt."""
    found: set[str] = set()
    texts = [v for k, v in environ.items() if k.startswith("PIP_") or k == PIP_ARGS_ENV]
    requirements = read_text(os.path.join(code_dir, REQUIREMENTS), 1 << 20)
    if requirements is not None:
        texts.append(requirements)
    for text in texts:
        found.update(url_credentials(text))
    return found


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
