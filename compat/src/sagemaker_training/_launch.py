"""Running a user's entry point for ``entry_point.run`` / ``runner.get(...).run``, with smtk's parts.

Everything here is smtk's own machinery: :func:`smtk.entry_point.resolve_program` finds
and validates the entry point, :mod:`smtk.codefetch` and :mod:`smtk.install` fetch the
code and install its dependencies, the plan builders in :mod:`smtk.launch` make the
command, :mod:`smtk.supervisor` runs it (line-by-line logs, SIGTERM/SIGINT forwarded
to the whole process group with smtk's grace period), and :mod:`smtk.causes` finds
the root cause of a failure.

A failure raises :class:`~sagemaker_training.errors.ExecuteUserScriptError` (what the
toolkits catch) carrying smtk's root cause as its message and the job's exit status
(``exit_status``), and leaves that root cause in ``$TORCHELASTIC_ERROR_FILE`` (set by
smtk's ``train`` or rank wrapper for the process that called us) so the job's failure
reason names the user's error, not the toolkit's re-raise.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sagemaker_training import errors
from smtk import causes, codefetch, install, log
from smtk.entry_point import EntryPoint, resolve_program
from smtk.environment import Environment
from smtk.errors import ArchiveError, ConfigError, EntryPointError, InstallError, SmtkError
from smtk.failure import Failure
from smtk.launch import mpi, plain, torchrun
from smtk.launch import rank as rank_wrapper
from smtk.launch.plan import LaunchPlan
from smtk.stop import Stop
from smtk.supervisor import ProcessResult
from smtk.supervisor import run as supervise

#: Set by smtk's rank wrapper in every process it starts as one rank of torchrun or MPI.
RANK_MARK = "SMTK_RANK"
#: Set by smtk for every process its launchers start (``smtk.launch.childenv``).
LAUNCHED_MARK = "SMTK_LAUNCHER"
#: Variables a distributed launcher gives each rank. A toolkit running inside a rank may
#: overwrite some of them in its own ``os.environ`` (the PyTorch toolkit sets
#: ``MASTER_ADDR`` and ``MASTER_PORT=7777``, which is not torchrun's port on one host);
#: the entry point gets the launcher's values back.
LAUNCHER_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
)
_ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
_DISTRIBUTED = ("TorchDistributed", "SMDataParallel", "PyTorchXLA")


def launch(
    runner_type: str,
    user_entry_point: str,
    args: Sequence[str],
    env_vars: Mapping[str, str],
    *,
    wait: bool = True,
    capture_error: bool = False,
    uri: str | None = None,
) -> Any:
    """Run ``user_entry_point`` from the code dir; see :func:`sagemaker_training.entry_point.run`."""
    try:
        env = Environment()
        entry = prepare(env, user_entry_point, uri)
        plan = build_plan(env, entry, runner_type, args, env_vars)
    except SmtkError as exc:
        raise client_error(exc) from None
    if not wait:
        # The caller owns the process (the reference's wait=False): started, not supervised.
        return subprocess.Popen(list(plan.argv), env={**os.environ, **plan.env}, cwd=plan.cwd)
    _clear_error_file()
    result = _supervise(plan, env)
    if result.returncode == 0 and result.stopped_by is None:
        return subprocess.CompletedProcess(list(plan.argv), 0)
    failure = causes.process_failure(
        returncode=result.returncode,
        signum=result.signal,
        stderr_tail=result.stderr_tail,
        stdout_tail=result.stdout_tail,
        code_dir=entry.code_dir,
        what=f"the entry point {entry.name}",
        error_file=plan.env.get(_ERROR_FILE) or os.environ.get(_ERROR_FILE),
        host=env.current_host,
        command=_display(plan),
    )
    if result.stopped_by is not None:
        failure = failure.evolve(exit_status=128 + result.stopped_by)
    leave_root_cause(failure, result, entry.code_dir)
    if RANK_MARK in os.environ:
        _announce_in_rank(failure, result, env)
    raise errors.ExecuteUserScriptError(
        _display(plan),
        result.returncode if result.signal is None else -result.signal,
        failure.cause if capture_error else "",
        exit_status=failure.exit_status,
    )


def prepare(env: Environment, name: str, uri: str | None) -> EntryPoint:
    """The validated entry point, with its code fetched and its dependencies installed.

    Under smtk's ``train`` (which fetched the code and installed ``requirements.txt``
    before starting the toolkit) only a package entry point is still installed;
    standalone, ``uri`` is fetched into the code dir first, as the reference does.
    """
    code_dir = env.paths.code_dir
    under_train = LAUNCHED_MARK in os.environ
    if not under_train and uri and os.path.abspath(uri) != code_dir:
        codefetch.fetch(
            uri, code_dir, env.environ, codefetch.Limits.from_settings(env.settings), s3=env.settings.s3
        )
    entry = resolve_program(name, code_dir)
    if not under_train or entry.kind == "package":
        install.install_requirements(env, entry)
    return entry


def build_plan(
    env: Environment, entry: EntryPoint, runner_type: str, args: Sequence[str], env_vars: Mapping[str, str]
) -> LaunchPlan:
    """smtk's plan for ``runner_type``, with the caller's argv and variables."""
    inside_rank = RANK_MARK in os.environ
    if inside_rank or runner_type == "Process":
        plan = plain.build_plan(env, entry)
        if inside_rank and os.environ.get(LAUNCHED_MARK) == "mpi":
            # Inside an MPI rank a Python entry point runs under ``python -m mpi4py``, as
            # smtk's launcher and the reference's MPI runner run it: an uncaught exception
            # then aborts every rank, instead of leaving this one in MPI_Finalize at exit
            # while the others wait for it in a collective.
            plan = replace(plan, argv=tuple(mpi.mpi_command(env, entry, sys.executable)))
    elif runner_type in _DISTRIBUTED:
        plan = torchrun.build_plan(env, entry)
    elif runner_type == "MPI":
        if len(env.distribution_hosts) > 1:
            raise ConfigError(
                "hyperparameters.json",
                "sagemaker_mpi_enabled",
                "true for an MPI job on several hosts (smtk's train starts mpirun and the workers' sshd)",
                "absent or false while the framework toolkit asked for MPIRunnerType",
            )
        plan = mpi.build_master_plan(env, entry)
    else:
        raise ConfigError("entry_point.run", "runner_type", "one of runner.RunnerType", repr(runner_type))
    # The plan's argv ends with the job's hyperparameters; the caller's args replace them.
    own_args = tuple(env.to_cmd_args())
    argv = plan.argv[: len(plan.argv) - len(own_args)] if own_args else plan.argv
    if own_args and plan.argv[len(plan.argv) - len(own_args) :] != own_args:
        argv = plan.argv  # a builder that does not end with them: keep its argv whole
    extra = {**plan.env, **env_vars}
    if inside_rank:
        extra.update(_launcher_values(extra))
    return replace(plan, argv=(*argv, *args), env=extra)


def _launcher_values(planned: Mapping[str, str]) -> dict[str, str]:
    """Inside a rank: the launcher's own variables, and the rank's ``SMTK_*`` identity."""
    started_with = _initial_environ()
    values = {name: started_with[name] for name in LAUNCHER_VARIABLES if name in started_with}
    # smtk's plain plan says SMTK_LAUNCHER=process; the rank wrapper's values are the truth.
    values.update({k: v for k, v in os.environ.items() if k.startswith("SMTK_") and k in planned})
    return values


def _initial_environ() -> dict[str, str]:
    """The environment this process was started with, before any code changed ``os.environ``.

    Linux keeps it in ``/proc/self/environ``; elsewhere the current one is the best there is.
    """
    try:
        with open("/proc/self/environ", "rb") as handle:
            data = handle.read()
    except OSError:
        return dict(os.environ)
    values: dict[str, str] = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            values[os.fsdecode(name)] = os.fsdecode(value)
    return values


def _supervise(plan: LaunchPlan, env: Environment) -> ProcessResult:
    """Run ``plan`` under smtk's supervisor, forwarding SIGTERM/SIGINT when we can catch them."""
    stop = Stop()
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        stop.install()
    try:
        return supervise(
            plan,
            stop=stop,
            grace_period=env.settings.grace_period,
            progress_interval=env.settings.progress_interval,
        )
    except OSError as exc:
        raise errors.ExecuteUserScriptError(
            _display(plan), None, f"cannot start {plan.argv[0]}: {exc}", exit_status=2
        ) from None
    finally:
        if in_main:
            stop.restore()


def _announce_in_rank(failure: Failure, result: ProcessResult, env: Environment) -> None:
    """Inside a rank that smtk launched, make the script's own failure known now, as the
    rank wrapper would: under MPI the script's ``MPI_Abort`` makes mpirun kill every
    rank's wrapper, often before this toolkit process has exited to be reported on."""
    with contextlib.suppress(ValueError):
        failure = failure.evolve(rank=int(os.environ[RANK_MARK]), time=time.time())
    if rank_wrapper.failed_on_its_own(result, failure):
        rank_wrapper.announce(failure, env.current_host, env.paths.root, env.settings)


def _clear_error_file() -> None:
    """Remove an error file an earlier run of this tree left (only this run's may be read)."""
    path = os.environ.get(_ERROR_FILE)
    if path and os.path.isfile(path) and not os.path.islink(path):
        with contextlib.suppress(OSError):
            os.unlink(path)


def leave_root_cause(failure: Failure, result: ProcessResult, code_dir: str) -> None:
    """Write the root cause to ``$TORCHELASTIC_ERROR_FILE`` (torch's ``@record`` format) for
    smtk's ``train`` or rank wrapper to report, unless the user's code already wrote one."""
    path = os.environ.get(_ERROR_FILE)
    if not path or os.path.lexists(path):
        return
    error = causes.find_python_error(result.stderr_tail, code_dir) or causes.find_python_error(
        result.stdout_tail, code_dir
    )
    if failure.category == "exception" and error is not None:
        message, stack = error.exception, "\n".join(error.traceback)
    else:  # a signal or a bare exit status: the cause as it is, no stack to locate again
        message, stack = failure.cause, ""
    document = {
        "message": {
            "message": message,
            "extraInfo": {"py_callstack": stack, "timestamp": str(int(time.time()))},
        }
    }
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(log.masker().mask(json.dumps(document)))
    except OSError:
        pass  # the failure is still raised; only the report's detail is lost


def _display(plan: LaunchPlan) -> str:
    return plan.display(log.masker().mask_argv)


def client_error(exc: SmtkError) -> errors.ClientError:
    """smtk's error as the reference's type, with smtk's message and exit status."""
    if isinstance(exc, InstallError):
        error: errors.ClientError = errors.InstallRequirementsError("pip install", 3, str(exc), exit_status=3)
    else:
        error = errors.ClientError(str(exc))
        error.exit_status = 2 if isinstance(exc, (ConfigError, EntryPointError, ArchiveError)) else 1
    return error
