"""The torchrun plan: ``python -m torch.distributed.run`` on every distribution host.

Each host runs its own torchrun agent; they meet through a static rendezvous on the
master (``--master-addr``/``--master-port``, port ``SMTK_MASTER_PORT``, default 7777)::

    <python> -m torch.distributed.run --nnodes 2 --node-rank 1 --nproc-per-node 8
        --master-addr algo-1 --master-port 7777 --max-restarts 0 --monitor-interval 0.1
        --no-python <python> -m smtk.launch.rank -- <python> train.py --epochs 3

A single host uses ``--standalone`` (a private rendezvous on a free port). Every rank
runs through the rank wrapper, so scripts, packages, shell scripts and function
entry points all work, and each output line is prefixed ``host:rank``. The master
address honours ``SMTK_HOST_ADDRESSES``. Nothing here imports torch.
"""

from __future__ import annotations

import sys

from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.errors import ConfigError
from smtk.launch import distributed
from smtk.launch.childenv import child_env
from smtk.launch.plan import LaunchPlan

MAX_RESTARTS_KEY = "smtk_max_restarts"


def max_restarts(env: Environment) -> int:
    """``smtk_max_restarts`` hyperparameter, else ``SMTK_MAX_RESTARTS``, else 0."""
    value = env.additional_framework_parameters.get(MAX_RESTARTS_KEY)
    if value is None:
        return env.settings.max_restarts
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or len(text) > 9:
        raise ConfigError("hyperparameters.json", MAX_RESTARTS_KEY, "an integer >= 0", value)
    return int(text)


def build_plan(env: Environment, entry: EntryPoint, python: str = sys.executable) -> LaunchPlan:
    """The torchrun plan for this host (one of ``env.distribution_hosts``)."""
    hosts = tuple(env.distribution_hosts)
    rank = distributed.node_rank(env, hosts)
    nproc = distributed.processes_per_host(env)
    argv = [python, "-m", "torch.distributed.run"]
    if len(hosts) == 1:
        argv += ["--standalone", "--nnodes", "1"]
    else:
        argv += [
            "--nnodes",
            str(len(hosts)),
            "--node-rank",
            str(rank),
            "--master-addr",
            env.settings.address_of(env.master_hostname),
            "--master-port",
            str(env.settings.master_port),
        ]
    argv += [
        "--nproc-per-node",
        str(nproc),
        "--max-restarts",
        str(max_restarts(env)),
        "--monitor-interval",
        "0.1",
        "--no-python",
        *distributed.rank_command(distributed.user_command(env, entry, python), python),
    ]
    values = child_env(env, "torchrun")
    # The PyTorch toolkit's network defaults, unless the image or user chose otherwise.
    if "NCCL_SOCKET_IFNAME" not in env.environ:
        values["NCCL_SOCKET_IFNAME"] = env.network_interface_name
    values["SMTK_NPROC_PER_HOST"] = str(nproc)
    return LaunchPlan(
        kind="torchrun",
        argv=tuple(argv),
        env=values,
        cwd=entry.code_dir,
        hosts=hosts,
        processes_per_host=nproc,
        log_prefix="",
        notes=(
            f"torchrun: host {rank} of {len(hosts)} ({', '.join(hosts)}), {nproc} processes per host",
            f"master {env.master_hostname} at {env.settings.address_of(env.master_hostname)}"
            f":{env.settings.master_port}"
            if len(hosts) > 1
            else "single host: --standalone",
        ),
    )
