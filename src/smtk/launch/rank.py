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
3. adds ``SMTK_RANK``, ``SMTK_LOCAL_RANK``, ``SMTK_WORLD_SIZE``, ``SMTK_HOST``;
4. runs the command through :func:`smtk.launch.process.run` with the line prefix
   ``host:rank `` (lines kept whole, signals forwarded), and exits as the command did;
5. when the rank fails, prints one ``smtk: rank failed`` line naming host, rank and
   cause, and records it in ``<base>/.smtk/ranks/<rank>.json`` for the report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from smtk.launch.plan import LaunchPlan

#: The rank's own grace period is shorter than torchrun's 30 s SIGKILL, so the
#: wrapper (not the launcher) escalates and nothing is left behind.
RANK_GRACE_PERIOD = 20.0
SNAPSHOT = os.path.join(".smtk", "host-env.json")
RANKS_DIR = os.path.join(".smtk", "ranks")
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


@dataclass(frozen=True)
class RankFailure:
    """One rank's failure, as recorded by its wrapper."""

    host: str
    rank: int
    local_rank: int
    exit_status: int
    signal: int | None
    #: The most telling stderr line (the exception line of a traceback), else the last.
    cause: str
    stderr_tail: tuple[str, ...]
    #: Wall-clock time of the failure (``time.time()``); the earliest is the root cause.
    time: float

    def describe(self) -> str:
        how = f"killed by signal {self.signal}" if self.signal else f"exit status {self.exit_status}"
        return f"{self.host}:{self.rank} failed ({how}): {self.cause or 'no output on stderr'}"


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
    return RankIdentity(environ.get("SMTK_LAUNCHER", "process"), 0, 0, 1)


def base_dir(environ: Mapping[str, str]) -> str:
    return environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml"


def host_environment(environ: Mapping[str, str], launcher: str) -> dict[str, str]:
    """Variables to set so the rank sees this host's job environment."""
    if "SM_CURRENT_HOST" in environ and "SMTK_MASTER_HOST" in environ:
        return {}  # started on this host by this host's own train (torchrun, MPI master)
    path = os.path.join(base_dir(environ), SNAPSHOT)
    try:
        with open(path, encoding="utf-8") as handle:
            snapshot: dict[str, str] = json.load(handle)
    except FileNotFoundError:
        snapshot = {}
    if snapshot:
        return {k: v for k, v in snapshot.items() if not _launcher_variable(k)}
    from smtk.environment import Environment
    from smtk.launch.childenv import child_env

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


def cause_of(lines: Sequence[str], code_dir: str | None = None) -> str:
    """The last Python exception in ``lines`` (with its user frame), else the last line."""
    from smtk.report import find_python_error

    error = find_python_error(lines, code_dir)
    if error is not None:
        return error.describe()
    text = [line.strip() for line in lines if line.strip()]
    return text[-1] if text else ""


_ANNOUNCEMENT = re.compile(
    r"smtk: rank failed: (?P<host>\S+):(?P<rank>\d+) failed \((?P<how>[^)]*)\): (?P<cause>.*)$"
)


def failure_in(lines: Sequence[str]) -> tuple[str, int, str] | None:
    """The first ``smtk: rank failed`` announcement in ``lines``: (host, rank, cause)."""
    for line in lines:
        match = _ANNOUNCEMENT.search(line)
        if match:
            return match.group("host"), int(match.group("rank")), match.group("cause")
    return None


#: Causes that are consequences of another rank's failure (its peers lose their connections).
_SECONDARY = re.compile(
    r"closed by peer|reset by peer|broken pipe|connection refused|NCCL communicator was aborted|"
    r"ncclRemoteError|DistNetworkError|Socket Timeout|MPI_ABORT|terminate called",
    re.IGNORECASE,
)


def is_secondary(cause: str) -> bool:
    """Whether ``cause`` reads like fallout of a peer's failure rather than a root cause."""
    return bool(_SECONDARY.search(cause))


def locate_failure(lines: Sequence[str], base: str) -> tuple[str, int, str] | None:
    """Which rank failed first: (host, rank, cause).

    Candidates are the failures rank wrappers reported to this host over the network
    (torchrun jobs), those announced in the launcher's output (MPI carries every
    host's lines to the master) and those recorded on this host. A root cause beats
    fallout (a peer's "connection closed"); among equals, the earliest wins.
    """
    candidates: list[tuple[bool, float, int, tuple[str, int, str]]] = []
    announced = failure_in(lines)
    if announced is not None:
        candidates.append((is_secondary(announced[2]), float("inf"), 0, announced))
    recorded = first_failure(base)
    if recorded is not None:
        candidates.append(
            (is_secondary(recorded.cause), recorded.time, 1, (recorded.host, recorded.rank, recorded.cause))
        )
    peers = sys.modules.get("smtk.peers")
    if peers is not None:
        if not candidates or all(c[0] for c in candidates):
            # Local failures look like fallout: give other hosts' reports a moment to arrive.
            reports = peers.reported_failures(
                2.0, lambda found: any(not is_secondary(str(f.get("cause", ""))) for f in found)
            )
        else:
            reports = peers.reported_failures()
        for report in reports:
            try:
                entry = (str(report["host"]), int(report["rank"]), str(report["cause"]))
                candidates.append((is_secondary(entry[2]), float(report["time"]), 2, entry))
            except (KeyError, TypeError, ValueError):
                continue
    if not candidates:
        return None
    return min(candidates)[3]


def record_failure(base: str, failure: RankFailure) -> None:
    """Write ``failure`` to ``<base>/.smtk/ranks/<rank>.json`` (best effort)."""
    directory = os.path.join(base, RANKS_DIR)
    try:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{failure.rank}.json"), "w", encoding="utf-8") as handle:
            json.dump(asdict(failure), handle)
    except OSError:
        pass  # the printed line still names the rank


def first_failure(base: str) -> RankFailure | None:
    """The earliest failure recorded by this host's rank wrappers, if any."""
    directory = os.path.join(base, RANKS_DIR)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return None
    failures: list[RankFailure] = []
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                data = json.load(handle)
            data["stderr_tail"] = tuple(data.get("stderr_tail", ()))
            failures.append(RankFailure(**data))
        except (OSError, ValueError, TypeError):
            continue
    return min(failures, key=lambda f: (f.time, f.rank)) if failures else None


def clear_failures(base: str) -> None:
    """Forget failures of an earlier run on this host (called before a launch)."""
    directory = os.path.join(base, RANKS_DIR)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m smtk.launch.rank -- <command ...>", file=sys.stderr)
        return 2
    from smtk import log
    from smtk.launch import process

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
    plan = LaunchPlan(
        kind="process", argv=tuple(args), env=values, cwd=os.getcwd(), log_prefix=f"{host}:{who.rank} "
    )
    stop = process.StopController().install()
    grace = min(process.settings_grace_period(), RANK_GRACE_PERIOD)
    try:
        result = process.run(plan, stop=stop, grace_period=grace, tail_lines=40)
    except OSError as exc:
        print(f"{host}:{who.rank} smtk: cannot start {args[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    finally:
        stop.restore()
    if result.exit_status == 0:
        return 0
    failure = RankFailure(
        host=host,
        rank=who.rank,
        local_rank=who.local_rank,
        exit_status=result.exit_status,
        signal=result.signal,
        cause=cause_of(result.stderr_tail, os.getcwd()),
        stderr_tail=result.stderr_tail[-10:],
        time=time.time(),
    )
    if result.stopped_by is None:
        # A rank stopped by its launcher is a consequence, not a cause: only real
        # failures are announced and recorded.
        print(f"{host}:{who.rank} smtk: rank failed: {failure.describe()}", file=sys.stderr, flush=True)
        record_failure(base_dir({**os.environ, **values}), failure)
        from smtk.peers import announce_failure

        announce_failure(asdict(failure), {**os.environ, **values})
    if result.signal is not None:
        signal.signal(result.signal, signal.SIG_DFL)
        os.kill(os.getpid(), result.signal)
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
