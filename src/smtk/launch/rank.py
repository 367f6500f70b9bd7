"""The rank wrapper: gives one rank its own host's identity, then supervises it.

torchrun and mpirun start every rank as::

    <python> -m smtk.launch.rank -- <command ...>

The wrapper

1. works out the rank from the launcher (``OMPI_COMM_WORLD_RANK``/``_LOCAL_RANK``/``_SIZE``
   under MPI, ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` under torchrun);
2. gives the rank *this* host's environment: a rank started over ssh by mpirun
   inherits only sshd's bare environment plus the launcher settings, so the wrapper
   loads the snapshot this host's ``train`` left in ``<base>/.smtk/host-env.json``
   (the container's variables and the ``SM_*`` set), and without one re-reads the
   local tree (``$SAGEMAKER_BASE_DIR``, else ``/opt/ml``) itself. ``SM_CURRENT_HOST``
   is therefore never the master's on a worker, without an ``LD_PRELOAD`` shim;
3. adds ``SMTK_RANK``, ``SMTK_LOCAL_RANK``, ``SMTK_WORLD_SIZE``, ``SMTK_HOST``, and a
   ``TORCHELASTIC_ERROR_FILE`` when the launcher did not set one, so a script whose
   ``main`` is decorated with torch's ``@record`` leaves its exception there;
4. runs the command through the :mod:`smtk.supervisor` with the line prefix
   ``host:rank `` (lines kept whole, signals forwarded), and exits as the command did;
5. when the rank fails, builds its :class:`~smtk.failure.Failure` (from the error file
   first, then the traceback), prints one ``smtk: rank failed`` line for the log,
   records it in ``<base>/.smtk/ranks/<rank>.json`` and reports it to its host's
   ``train`` over the status port (which passes it on, through the master, to every
   host), so the report names the first rank that failed. A rank that failed with its
   own exception counts even when a stop overtook it: under MPI the failing rank's
   ``MPI_Abort`` makes mpirun signal every rank, its own wrapper included
   (:func:`failed_on_its_own`). A framework toolkit that runs the script inside a rank
   (``sagemaker_training``'s ``entry_point.run``) announces the script's failure itself
   (:func:`announce`), since mpirun may kill this wrapper before the toolkit exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtk import causes, log, supervisor
from smtk.cluster import wire
from smtk.environment import Environment
from smtk.failure import Failure
from smtk.files import read_text
from smtk.launch.childenv import child_env
from smtk.launch.plan import LaunchPlan
from smtk.settings import Settings
from smtk.stop import Stop

if TYPE_CHECKING:
    from smtk.cluster.session import Session

#: The rank's own grace period is shorter than torchrun's 30 s SIGKILL, so the
#: wrapper (not the launcher) escalates and nothing is left behind.
RANK_GRACE_PERIOD = 20.0
SNAPSHOT = os.path.join(".smtk", "host-env.json")
RANKS_DIR = os.path.join(".smtk", "ranks")
ERRORS_DIR = os.path.join(".smtk", "errors")
#: Seconds the report waits for other hosts' rank reports when the local ones look like fallout.
REPORT_WAIT = 2.0
#: Variables the launcher sets for this very process: never taken from a snapshot.
_LAUNCHER_PREFIXES = ("OMPI_", "PMIX_", "PRTE_", "OPAL_", "TORCHELASTIC_")
_LAUNCHER_NAMES = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
     "MASTER_PORT", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "ROLE_NAME", "OMP_NUM_THREADS"}
)  # fmt: skip


@dataclass(frozen=True)
class RankIdentity:
    launcher: str
    rank: int
    local_rank: int
    world_size: int


def identity(environ: Mapping[str, str]) -> RankIdentity:
    """The rank as the launcher numbered it (rank 0 of 1 when started by hand)."""
    if "OMPI_COMM_WORLD_RANK" in environ:
        return RankIdentity(
            "mpi",
            int(environ["OMPI_COMM_WORLD_RANK"]),
            int(environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")),
            int(environ.get("OMPI_COMM_WORLD_SIZE", "1")),
        )
    if "RANK" in environ and "LOCAL_RANK" in environ:
        return RankIdentity(
            "torchrun",
            int(environ["RANK"]),
            int(environ["LOCAL_RANK"]),
            int(environ.get("WORLD_SIZE", "1")),
        )
    return RankIdentity(Settings.from_environ(environ).launcher or "process", 0, 0, 1)


def base_dir(environ: Mapping[str, str]) -> str:
    return environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml"


def host_environment(environ: Mapping[str, str], launcher: str) -> dict[str, str]:
    """Variables to set so the rank sees this host's job environment."""
    if "SM_CURRENT_HOST" in environ and Settings.from_environ(environ).master_host:
        return {}  # started on this host by this host's own train (torchrun, MPI master)
    text = read_text(os.path.join(base_dir(environ), SNAPSHOT), 64 * 1024 * 1024)
    snapshot: dict[str, str] = {}
    if text:
        with contextlib.suppress(ValueError):
            loaded = json.loads(text)
            if isinstance(loaded, dict):
                snapshot = {str(k): str(v) for k, v in loaded.items()}
    if snapshot:
        return {k: v for k, v in snapshot.items() if not _launcher_variable(k)}

    return child_env(Environment(environ=environ), launcher)


def _launcher_variable(name: str) -> bool:
    return name in _LAUNCHER_NAMES or name.startswith(_LAUNCHER_PREFIXES)


def write_snapshot(base: str, values: Mapping[str, str]) -> str:
    """Store this host's environment for ranks that mpirun starts here (owner-only file)."""
    path = os.path.join(base, SNAPSHOT)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(dict(values), handle)
    os.replace(tmp, path)
    return path


# -- recorded failures -------------------------------------------------------------------------


def record_failure(base: str, failure: Failure) -> None:
    """Write ``failure`` to ``<base>/.smtk/ranks/<rank>.json`` (best effort)."""
    directory = os.path.join(base, RANKS_DIR)
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{failure.rank}.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(failure.to_json(), handle)
        os.replace(tmp, os.path.join(directory, f"{failure.rank}.json"))
    except OSError:
        pass  # the printed line and the report over the network still name the rank


def recorded_failures(base: str) -> list[Failure]:
    """The failures this host's rank wrappers recorded."""
    directory = os.path.join(base, RANKS_DIR)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except OSError:
        return []
    found: list[Failure] = []
    for name in names[:1024]:
        text = read_text(os.path.join(directory, name), 1024 * 1024)
        if text is None:
            continue
        with contextlib.suppress(ValueError, RecursionError):
            failure = Failure.from_json(json.loads(text))
            if failure is not None:
                found.append(failure)
    return found


def reported_failures(base: str, session: Session | None) -> list[Failure]:
    """Every rank failure known here: recorded on this host, and reported by other hosts.

    When every local one reads like fallout, the other hosts' reports get
    :data:`REPORT_WAIT` seconds to bring a root cause.
    """
    local = recorded_failures(base)
    if session is None:
        return local
    if not local or all(f.secondary for f in local):
        reports = session.reported_failures(REPORT_WAIT, lambda found: any(not f.secondary for f in found))
    else:
        reports = session.reported_failures()
    return [*local, *reports]


def clear_failures(base: str) -> None:
    """Forget failures of an earlier run on this host (called before a launch)."""
    for sub in (RANKS_DIR, ERRORS_DIR):
        directory = os.path.join(base, sub)
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


# -- the wrapper --------------------------------------------------------------------------------


def _error_file(environ: Mapping[str, str], values: dict[str, str], rank: int) -> str:
    """The rank's ``TORCHELASTIC_ERROR_FILE``: torchrun's, else one of ours (created fresh)."""
    given = environ.get("TORCHELASTIC_ERROR_FILE")
    if given:
        return given
    directory = os.path.join(base_dir({**environ, **values}), ERRORS_DIR)
    path = os.path.join(directory, f"rank-{rank}.json")
    with contextlib.suppress(OSError):
        os.makedirs(directory, exist_ok=True)
        os.unlink(path)
    values["TORCHELASTIC_ERROR_FILE"] = path
    return path


def failed_on_its_own(result: supervisor.ProcessResult, failure: Failure) -> bool:
    """Whether ``failure`` (of a rank's command, ended as ``result`` says) is a cause: the
    rank failed with no stop, or it had failed on its own before a stop arrived.

    An MPI rank whose code raises calls ``MPI_Abort`` (``python -m mpi4py``), and mpirun
    then signals every rank, this one's wrapper included, often before the rank has
    exited: the stop is the consequence of the failure. Such a rank ended by exiting,
    with the traceback of its own exception (from its stderr or its error file), where a
    rank that the stop ended was killed by the signal, or left no traceback (a framework
    toolkit's error file says only "killed by SIGTERM").
    """
    if result.stopped_by is None:
        return True
    return result.signal is None and failure.category == "exception" and bool(failure.detail)


def announce(failure: Failure, host: str, base: str, settings: Settings) -> None:
    """Make a rank's failure known: one ``smtk: rank failed`` line for the log, a record in
    ``<base>/.smtk/ranks/<rank>.json``, and a report to this host's ``train`` (which passes
    it on, through the master, to every host). Once per rank and run: a toolkit inside the
    rank may have announced it already (its record exists; ``train`` clears the records
    before each launch), and the wrapper then says nothing more."""
    if os.path.exists(os.path.join(base, RANKS_DIR, f"{failure.rank}.json")):
        return
    log.write("stderr", f"{host}:{failure.rank} smtk: rank failed: {failure.describe()}")
    record_failure(base, failure)
    wire.send_report(failure.evolve(stderr_tail=failure.stderr_tail[-10:]), host, settings)


def main(argv: Sequence[str] | None = None, stop: Stop | None = None) -> int:
    stop = stop or Stop().install()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        log.write("stderr", "usage: python -m smtk.launch.rank -- <command ...>")
        return 2

    who = identity(os.environ)
    values = host_environment(os.environ, who.launcher)
    host = values.get("SM_CURRENT_HOST") or os.environ.get("SM_CURRENT_HOST") or "?"
    for handler in log.configure(logging.WARNING).handlers:
        handler.setFormatter(logging.Formatter(f"{host}:{who.rank} smtk %(levelname)s %(message)s"))
    values.update(
        SMTK_RANK=str(who.rank),
        SMTK_LOCAL_RANK=str(who.local_rank),
        SMTK_WORLD_SIZE=str(who.world_size),
        SMTK_HOST=host,
        SMTK_LAUNCHER=who.launcher,
    )
    error_file = _error_file(os.environ, values, who.rank)
    merged = {**os.environ, **values}
    settings = Settings.from_environ(merged)
    plan = LaunchPlan(
        kind="process", argv=tuple(args), env=values, cwd=os.getcwd(), log_prefix=f"{host}:{who.rank} "
    )
    try:
        result = supervisor.run(
            plan, stop=stop, grace_period=min(settings.grace_period, RANK_GRACE_PERIOD), tail_lines=40
        )
    except OSError as exc:
        log.write("stderr", f"{host}:{who.rank} smtk: cannot start {args[0]!r}: {exc.strerror or exc}")
        return 127
    finally:
        stop.restore()
    if result.exit_status == 0:
        return 0
    failure = causes.process_failure(
        returncode=result.returncode,
        signum=result.signal,
        stderr_tail=result.stderr_tail,
        code_dir=os.getcwd(),
        what=f"rank {who.rank}",
        error_file=error_file,
        host=host,
        rank=who.rank,
        time=time.time(),
    ).evolve(extra={"local_rank": who.local_rank})
    if failed_on_its_own(result, failure):
        # A rank stopped by its launcher is a consequence, not a cause: only real
        # failures are announced and recorded.
        announce(failure, host, base_dir(merged), settings)
    if result.signal is not None:
        # End the way the rank ended. SIGKILL and SIGSTOP take no handler (EINVAL).
        with contextlib.suppress(OSError, ValueError):
            signal.signal(result.signal, signal.SIG_DFL)
        os.kill(os.getpid(), result.signal)
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
