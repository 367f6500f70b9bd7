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

TensorFlow (:mod:`smtk.launch.tensorflow`), in the TensorFlow toolkit's order:
``sagemaker_parameter_server_enabled`` with more than one distribution host comes
first and ignores every flag above (the training script as a plain process, a parameter
server beside it); otherwise ``sagemaker_multi_worker_mirrored_strategy_enabled`` adds
``TF_CONFIG`` to whichever launcher the table chose.
"""

from __future__ import annotations

from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.launch import mpi, plain, tensorflow, torchrun
from smtk.launch.distributed import flag
from smtk.launch.plan import LaunchPlan

TORCHRUN_FLAGS = (
    "sagemaker_torch_distributed_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_distributed_dataparallel_enabled",
)


def launcher_for(env: Environment) -> str:
    """``"mpi"``, ``"mpi-worker"``, ``"torchrun"`` or ``"process"`` for this host."""
    if not env.distribution_enabled or tensorflow.mode(env) == "ps":
        return "process"
    if flag(env, "sagemaker_mpi_enabled"):
        return "mpi" if env.is_master else "mpi-worker"
    if any(flag(env, key) for key in TORCHRUN_FLAGS):
        return "torchrun"
    return "process"


def build_plan(env: Environment, entry: EntryPoint) -> LaunchPlan:
    """The plan for this host."""
    tf_mode = tensorflow.mode(env)
    if tf_mode == "ps":
        return tensorflow.build_ps_plan(env, entry)
    plan = _build(env, entry, launcher_for(env))
    return tensorflow.with_tf_config(plan, env) if tf_mode == "mwms" else plan


def _build(env: Environment, entry: EntryPoint, launcher: str) -> LaunchPlan:
    if launcher in ("mpi", "mpi-worker"):
        return mpi.build_master_plan(env, entry) if launcher == "mpi" else mpi.build_worker_plan(env)
    if launcher == "torchrun":
        return torchrun.build_plan(env, entry)
    return plain.build_plan(env, entry)
