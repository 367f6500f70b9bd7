"""Runner types, and ``get`` for the object that runs an entry point with one of them.

A runner type is the launcher a framework toolkit asks for. smtk already chose the
launcher for the job from the same framework flags (``smtk.launch.select``), so:

- inside a process that smtk started as one rank of a torchrun or MPI launch (the
  toolkit's function runs once per rank), the entry point runs once, in that rank, with
  the launcher's variables (``RANK``, ``MASTER_ADDR``, ...): the distributed launch has
  already happened;
- otherwise ``Process`` runs one process, ``TorchDistributed``, ``SMDataParallel`` and
  ``PyTorchXLA`` run smtk's torchrun launcher, and ``MPI`` runs smtk's ``mpirun``
  launcher (one host only: across hosts smtk's ``train`` has to start MPI itself, from
  ``sagemaker_mpi_enabled``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from sagemaker_training import _launch, errors
from sagemaker_training.environment import Environment


class RunnerType(enum.Enum):
    """The launchers a framework toolkit can ask for."""

    MPI = "MPI"
    Process = "Process"
    SMDataParallel = "SMDataParallel"
    PyTorchXLA = "PyTorchXLA"
    TorchDistributed = "TorchDistributed"


ProcessRunnerType = RunnerType.Process
MPIRunnerType = RunnerType.MPI
SMDataParallelRunnerType = RunnerType.SMDataParallel
PyTorchXLARunnerType = RunnerType.PyTorchXLA
TorchDistributedRunnerType = RunnerType.TorchDistributed


class Runner:
    """Runs one entry point with one runner type through smtk (see the module docstring)."""

    def __init__(
        self,
        runner_type: RunnerType,
        user_entry_point: str,
        args: Sequence[str],
        env_vars: Mapping[str, str],
        extra_opts: Mapping[str, Any] | None = None,
    ) -> None:
        self.runner_type = runner_type
        self.user_entry_point = user_entry_point
        self.args = list(args)
        self.env_vars = dict(env_vars)
        self.extra_opts = dict(extra_opts or {})

    def run(self, wait: bool = True, capture_error: bool = False) -> Any:
        """Run the entry point; see :func:`sagemaker_training.entry_point.run` for what it returns."""
        return _launch.launch(
            self.runner_type.value,
            self.user_entry_point,
            self.args,
            self.env_vars,
            wait=wait,
            capture_error=capture_error,
        )


def get(
    identifier: RunnerType | Runner,
    user_entry_point: str | None = None,
    args: Sequence[str] | None = None,
    env_vars: Mapping[str, str] | None = None,
    extra_opts: Mapping[str, Any] | None = None,
) -> Runner:
    """The runner for ``identifier``, with the job's entry point, argv and ``SM_*`` set as defaults."""
    if isinstance(identifier, Runner):
        return identifier
    if not isinstance(identifier, RunnerType):
        raise TypeError(f"runner.get: expected a RunnerType or a Runner, got {identifier!r}")
    env = Environment()
    entry = user_entry_point or env.user_entry_point
    if not entry:
        raise errors.ClientError(
            "no entry point: pass user_entry_point, or set SAGEMAKER_PROGRAM or the "
            "sagemaker_program hyperparameter"
        )
    return Runner(
        identifier,
        entry,
        env.to_cmd_args() if args is None else args,
        env.to_env_vars() if env_vars is None else env_vars,
        extra_opts,
    )
