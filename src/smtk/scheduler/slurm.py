"""Slurm's variables -> :class:`~smtk.scheduler.placement.Placement`.

``srun --nodes N --ntasks-per-node 1 train`` starts one ``train`` per node; each task
sees (Slurm's ``srun`` and ``sbatch`` manual pages, "OUTPUT ENVIRONMENT VARIABLES")::

    SLURM_STEP_NODELIST=algo-[1-2]   the step's nodes (SLURM_JOB_NODELIST, SLURM_NODELIST: the job's)
    SLURM_NODEID=1                   this node's index in that list
    SLURMD_NODENAME=algo-2           this node's name
    SLURM_GPUS_ON_NODE=8             GPUs allocated on this node (SLURM_STEP_GPUS / SLURM_JOB_GPUS: their ids)
    SLURM_JOB_ID, SLURM_JOB_NAME     the job
    SLURM_STEP_ID, SLURM_LOCALID,    srun's task (the batch script of a multi-node job has no step id)
    SLURM_STEP_NUM_TASKS, SLURM_NTASKS

The node list is expanded by ``scontrol show hostnames`` where it is installed and
configured, else by :mod:`smtk.scheduler.hostlist` (same result). The hosts are the
node names in node-id order, so ``SM_HOSTS`` is Slurm's node list and the master is
its first node; every node name must resolve on every node (or be mapped with
``SMTK_HOST_ADDRESSES``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping

from smtk.errors import ConfigError
from smtk.scheduler.hostlist import HostlistError
from smtk.scheduler.hostlist import expand as expand_locally
from smtk.scheduler.placement import Placement

logger = logging.getLogger("smtk")

#: The variables naming the nodes, most specific first (a step may use part of the job's nodes).
NODELIST_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
SCONTROL_TIMEOUT = 10.0
_JOB_NAME_CHARS = re.compile(r"[^A-Za-z0-9]+")


def detected(environ: Mapping[str, str]) -> bool:
    """Whether Slurm started this process (a job id and a node list in its environment)."""
    return bool(environ.get("SLURM_JOB_ID")) and any(environ.get(name) for name in NODELIST_VARIABLES)


def expand(expression: str, environ: Mapping[str, str]) -> list[str]:
    """The node names of ``expression``: ``scontrol show hostnames`` if it can, else our parser."""
    if "[" not in expression:
        return [name for name in re.split(r"[,\s]+", expression) if name]
    expanded = _scontrol_hostnames(expression, environ)
    if expanded is not None:
        return expanded
    try:
        return expand_locally(expression)
    except HostlistError as exc:
        raise ConfigError("Slurm's node list", None, "a host list Slurm writes", f"<{exc}>") from None


def _scontrol_hostnames(expression: str, environ: Mapping[str, str]) -> list[str] | None:
    """``scontrol show hostnames``'s answer, or ``None`` when it is absent or cannot answer
    (no ``slurm.conf`` inside a container, for one)."""
    scontrol = shutil.which("scontrol", path=environ.get("PATH", os.defpath))
    if scontrol is None:
        return None
    try:
        proc = subprocess.run(
            [scontrol, "show", "hostnames", expression],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SCONTROL_TIMEOUT,
            env=dict(environ),
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("scontrol show hostnames: %s; expanding the node list ourselves", exc)
        return None
    names = proc.stdout.split()
    if proc.returncode != 0 or not names:
        logger.debug(
            "scontrol show hostnames failed (%s); expanding the node list ourselves", proc.stderr.strip()
        )
        return None
    return names


def placement(environ: Mapping[str, str], hostname: str) -> Placement:
    """This task's place in the Slurm job; :class:`ConfigError` naming the variable when it
    cannot be known (or when Slurm started more than one ``train`` on a node)."""
    name, expression = next(((n, environ[n]) for n in NODELIST_VARIABLES if environ.get(n)), ("", ""))
    if not expression:
        raise ConfigError(NODELIST_VARIABLES[1], None, "Slurm's node list", "<unset>")
    hosts = tuple(expand(expression, environ))
    if len(set(hosts)) != len(hosts):
        raise ConfigError(name, None, "each node once", expression)
    _one_task_per_node(environ, len(hosts))
    current = _current_host(environ, hosts, hostname, name)
    return Placement(
        scheduler="slurm",
        hosts=hosts,
        current_host=current,
        gpus=gpus_on_node(environ),
        job_name=job_name(environ),
    )


def _one_task_per_node(environ: Mapping[str, str], nodes: int) -> None:
    """``train`` runs once per node: it starts the node's processes itself (torchrun, MPI)."""
    hint = "start train once per node: srun --nodes N --ntasks-per-node 1 train"
    step = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID")
    if not step and nodes > 1:
        # The batch script runs on the first node only: the other hosts would never come.
        raise ConfigError(
            "SLURM_STEP_ID",
            None,
            f"a job step on each of the {nodes} nodes",
            "<unset: the batch script>",
            hint=hint,
        )
    local = environ.get("SLURM_LOCALID", "0").strip() or "0"
    if local != "0":
        raise ConfigError("SLURM_LOCALID", None, "0 (one train per node)", local, hint=hint)
    tasks = (environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "").strip()
    if tasks and tasks != str(nodes):
        raise ConfigError("SLURM_NTASKS", None, f"{nodes} (one task per node)", tasks, hint=hint)


def _current_host(environ: Mapping[str, str], hosts: tuple[str, ...], hostname: str, variable: str) -> str:
    node_name = (environ.get("SLURMD_NODENAME") or "").strip()
    node_id_text = (environ.get("SLURM_NODEID") or "").strip()
    by_id: str | None = None
    if node_id_text:
        if not node_id_text.isdigit() or int(node_id_text) >= len(hosts):
            raise ConfigError("SLURM_NODEID", None, f"a node index from 0 to {len(hosts) - 1}", node_id_text)
        by_id = hosts[int(node_id_text)]
    if node_name:
        if node_name not in hosts:
            raise ConfigError("SLURMD_NODENAME", None, f"one of the nodes in {variable}", node_name)
        if by_id is not None and by_id != node_name:
            raise ConfigError(
                "SLURM_NODEID", None, f"the index of {node_name} in {variable}", f"{node_id_text} ({by_id})"
            )
        return node_name
    if by_id is not None:
        return by_id
    short = hostname.split(".", 1)[0]
    for candidate in (hostname, short):
        if candidate in hosts:
            return candidate
    raise ConfigError("SLURMD_NODENAME", None, "this node's name (or SLURM_NODEID)", "<unset>")


def gpus_on_node(environ: Mapping[str, str]) -> int | None:
    """GPUs Slurm gave this node: ``SLURM_GPUS_ON_NODE``, else the ids in ``SLURM_STEP_GPUS``
    or ``SLURM_JOB_GPUS``; ``None`` when Slurm says nothing (smtk then counts them)."""
    count = (environ.get("SLURM_GPUS_ON_NODE") or "").strip()
    if count:
        if not count.isdigit():
            raise ConfigError("SLURM_GPUS_ON_NODE", None, "a number of GPUs", count)
        return int(count)
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        ids = [i for i in (environ.get(name) or "").split(",") if i.strip()]
        if ids:
            return len(ids)
    return None


def job_name(environ: Mapping[str, str]) -> str | None:
    """``<job name>-<job id>`` (a valid SageMaker job name, unique per job), or ``None``."""
    job_id = (environ.get("SLURM_JOB_ID") or "").strip()
    name = _JOB_NAME_CHARS.sub("-", environ.get("SLURM_JOB_NAME") or "slurm").strip("-") or "slurm"
    if not job_id:
        return None
    suffix = "-" + _JOB_NAME_CHARS.sub("-", job_id).strip("-")
    return (name[: 63 - len(suffix)].rstrip("-") or "slurm") + suffix
