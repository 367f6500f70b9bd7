"""Choosing the launcher for this host and building its plan.

The rules follow the reference's hyperparameters (CONTRACT.md section 5). They apply
only when this host's instance group is a distribution group
(``env.distribution_enabled``); every other host runs the plain launcher:

========================================================  ==========================
framework flag (first match wins)                         launcher
========================================================  ==========================
``sagemaker_mpi_enabled``                                 MPI: ``mpirun`` on the
                                                          master, ``mpi-worker``
                                                          elsewhere
``sagemaker_torch_distributed_enabled``                   torchrun
``sagemaker_pytorch_ddp_enabled``                         torchrun (see below)
``sagemaker_distributed_dataparallel_enabled``            torchrun (see below)
none of them                                              plain process
========================================================  ==========================

``sagemaker_pytorch_ddp_enabled`` and ``sagemaker_distributed_dataparallel_enabled``
mean SMDDP (``smddprun`` under ``mpirun``) in the reference. smtk ships no SMDDP;
scripts written for them use ``torch.distributed`` with the environment variables
torchrun sets, so smtk runs them with torchrun.
"""

from __future__ import annotations

from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.launch import mpi, plain, torchrun
from smtk.launch.distributed import flag
from smtk.launch.plan import LaunchPlan

TORCHRUN_FLAGS = (
    "sagemaker_torch_distributed_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_distributed_dataparallel_enabled",
)


def launcher_for(env: Environment) -> str:
    """``"mpi"``, ``"mpi-worker"``, ``"torchrun"`` or ``"process"`` for this host."""
    if not env.distribution_enabled:
        return "process"
    if flag(env, "sagemaker_mpi_enabled"):
        return "mpi" if env.is_master else "mpi-worker"
    if any(flag(env, key) for key in TORCHRUN_FLAGS):
        return "torchrun"
    return "process"


def build_plan(env: Environment, entry: EntryPoint) -> LaunchPlan:
    """The plan for this host."""
    launcher = launcher_for(env)
    # The distributed builders (and the cluster code they use) are imported only when
    # needed: a plain job's start-up does not pay for them.
    if launcher in ("mpi", "mpi-worker"):
        return mpi.build_master_plan(env, entry) if launcher == "mpi" else mpi.build_worker_plan(env)
    if launcher == "torchrun":
        return torchrun.build_plan(env, entry)
    return plain.build_plan(env, entry)
