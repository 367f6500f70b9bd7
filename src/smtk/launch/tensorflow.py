"""TensorFlow multi-worker jobs: ``TF_CONFIG`` and parameter servers, as AWS's TensorFlow toolkit does.

AWS's TensorFlow framework toolkit (``sagemaker-tensorflow-training``, module
``sagemaker_tensorflow_container.training``) reads two hyperparameters the SageMaker SDK
writes for ``distribution={"multi_worker_mirrored_strategy": ...}`` and
``distribution={"parameter_server": ...}``. smtk produces the same ``TF_CONFIG``, byte for
byte (same key order, same ``json.dumps`` formatting), for every host of the distribution
groups:

``sagemaker_multi_worker_mirrored_strategy_enabled`` (any number of hosts)::

    {"cluster": {"worker": ["algo-1:8890", "algo-2:8890"]}, "environment": "cloud",
     "task": {"index": 1, "type": "worker"}}                               # on algo-2

``sagemaker_parameter_server_enabled`` (more than one host): the first host is the
``master``, the others ``worker`` s (port 2222), and every host also runs a parameter
server (port 2223)::

    {"cluster": {"master": ["algo-1:2222"], "ps": ["algo-1:2223", "algo-2:2223"],
     "worker": ["algo-2:2222"]}, "environment": "cloud", "task": {"index": 0, "type": "worker"}}

The parameter server is a :class:`~smtk.launch.plan.Companion` of the plan: ``python -m
smtk.launch.tfserver`` with the ``ps`` task's ``TF_CONFIG`` (``"task": {"index": i, "type":
"ps"}``), started before the training script and supervised with it
(:mod:`smtk.launch.servers`). On the master it is stopped when the training script ends; on
the other hosts once the master's worker port (2222) no longer accepts connections, as the
toolkit's ``_wait_until_master_is_down`` does.

Host names go into ``TF_CONFIG`` as the toolkit writes them, unless ``SMTK_HOST_ADDRESSES``
maps them to addresses. Everything here is a pure function of the
:class:`~smtk.environment.Environment`; nothing imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.launch.childenv import child_env
from smtk.launch.distributed import flag
from smtk.launch.plain import entry_argv
from smtk.launch.plan import Companion, LaunchPlan

MWMS_FLAG = "sagemaker_multi_worker_mirrored_strategy_enabled"
PS_FLAG = "sagemaker_parameter_server_enabled"
#: The toolkit's ports: every MultiWorkerMirroredStrategy worker; master and workers with
#: parameter servers; the parameter servers themselves.
MWMS_PORT = 8890
WORKER_PORT = 2222
PS_PORT = 2223

Address = Callable[[str], str]


def _identity(host: str) -> str:
    return host


def _addresses(hosts: Sequence[str], port: int, address: Address) -> list[str]:
    return [f"{address(host)}:{port}" for host in hosts]


def mwms_config(hosts: Sequence[str], current_host: str, address: Address = _identity) -> dict[str, Any]:
    """``TF_CONFIG`` for MultiWorkerMirroredStrategy: every host a ``worker`` on port 8890."""
    return {
        "cluster": {"worker": _addresses(hosts, MWMS_PORT, address)},
        "environment": "cloud",
        "task": {"index": list(hosts).index(current_host), "type": "worker"},
    }


def ps_config(
    hosts: Sequence[str], current_host: str, *, ps_task: bool = False, address: Address = _identity
) -> dict[str, Any]:
    """``TF_CONFIG`` with parameter servers: ``hosts[0]`` the master, the rest workers (port
    2222), a parameter server on every host (port 2223) when there is more than one host.

    ``ps_task`` gives the parameter server's own task on ``current_host``.
    """
    hosts = list(hosts)
    workers = hosts[1:]
    servers = hosts if len(hosts) > 1 else []
    cluster: dict[str, list[str]] = {"master": _addresses(hosts[:1], WORKER_PORT, address)}
    if servers:
        cluster["ps"] = _addresses(servers, PS_PORT, address)
    if workers:
        cluster["worker"] = _addresses(workers, WORKER_PORT, address)
    if ps_task:
        if not servers:
            raise ValueError("a parameter server task needs more than one host")
        task = {"index": servers.index(current_host), "type": "ps"}
    elif current_host == hosts[0]:
        task = {"index": 0, "type": "master"}
    else:
        task = {"index": workers.index(current_host), "type": "worker"}
    return {"cluster": cluster, "environment": "cloud", "task": task}


def encode(config: dict[str, Any]) -> str:
    """``TF_CONFIG``'s text, formatted as the toolkit's ``json.dumps`` formats it."""
    return json.dumps(config)


def mode(env: Environment) -> str | None:
    """``"ps"``, ``"mwms"`` or ``None``: which TensorFlow set-up this host gets.

    Parameter servers need this host in a distribution group and more than one
    distribution host (the toolkit checks ``len(env.hosts) > 1``, and fails on a host
    outside the distribution groups or with a single distribution host; smtk runs the
    plain launcher there). They take precedence over every other flag, as in the
    toolkit. MultiWorkerMirroredStrategy applies to any number of distribution hosts.
    Neither applies when a framework toolkit's training module is the entry point: it
    does both itself.
    """
    if not env.distribution_enabled or env.framework_module:
        # A framework toolkit's training module (SAGEMAKER_TRAINING_MODULE, e.g. the
        # TensorFlow toolkit's) builds TF_CONFIG and starts its parameter servers itself,
        # as on the platform: a second server of ours would take its port.
        return None
    if flag(env, PS_FLAG) and len(env.hosts) > 1 and len(env.distribution_hosts) > 1:
        return "ps"
    if flag(env, MWMS_FLAG):
        return "mwms"
    return None


def with_tf_config(plan: LaunchPlan, env: Environment) -> LaunchPlan:
    """``plan`` with the MultiWorkerMirroredStrategy ``TF_CONFIG`` of this host added.

    Whatever launcher ran (plain process, torchrun, MPI), the toolkit adds ``TF_CONFIG``
    to its environment, so every process of this host sees this host's task.
    """
    hosts = env.distribution_hosts
    config = mwms_config(hosts, env.current_host, env.settings.address_of)
    note = f"TF_CONFIG: MultiWorkerMirroredStrategy worker {config['task']['index']} of {len(hosts)}"
    return dataclasses.replace(
        plan,
        env={**plan.env, "TF_CONFIG": encode(config)},
        hosts=plan.hosts if len(plan.hosts) > 1 else tuple(hosts),
        notes=(*plan.notes, note),
    )


def build_ps_plan(env: Environment, entry: EntryPoint, python: str = sys.executable) -> LaunchPlan:
    """The training script as one process with the parameter-server ``TF_CONFIG``, and
    this host's parameter server beside it (see the module docstring)."""
    hosts = env.distribution_hosts
    address = env.settings.address_of
    host = env.current_host
    config = ps_config(hosts, host, address=address)
    values = child_env(env, "process")
    values["TF_CONFIG"] = encode(config)
    server_env = child_env(env, "process")
    server_env.pop("TORCHELASTIC_ERROR_FILE", None)  # the training script's, not the server's
    server_env["TF_CONFIG"] = encode(ps_config(hosts, host, ps_task=True, address=address))
    master = hosts[0]
    server = Companion(
        name="parameter server",
        argv=(python, "-m", "smtk.launch.tfserver"),
        env=server_env,
        log_prefix="ps: ",
        until_closed=None if host == master else (address(master), WORKER_PORT),
    )
    args = [] if entry.kind == "function" else env.to_cmd_args()
    task = config["task"]
    return LaunchPlan(
        kind="function" if entry.kind == "function" else "process",
        argv=(*entry_argv(entry, python), *args),
        env=values,
        cwd=entry.code_dir,
        hosts=tuple(hosts),
        processes_per_host=1,
        log_prefix="",
        notes=(
            f"TensorFlow parameter servers: this host is {task['type']} {task['index']}"
            f" of {len(hosts)} hosts, with a parameter server on port {PS_PORT}",
            "the parameter server stops when the training script ends"
            if host == master
            else f"the parameter server stops once the master's worker port {master}:{WORKER_PORT} closes",
        ),
        companions=(server,),
    )
