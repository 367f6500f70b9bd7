"""``smtk local`` with several hosts: every host's ``train`` on this machine.

Two ways, chosen automatically:

- **namespaces** (root, iproute2): each host gets its own network namespace, hostname,
  ``/etc/hosts`` and ``/opt/ml`` view (:mod:`smtk.local.netns`), exactly like separate
  containers. Every launcher works, MPI over real sshd included.
- **loopback** (anyone): each host is a process group on this machine; host names map
  to ``127.0.0.2``, ``127.0.0.3``, ... through ``SMTK_HOST_ADDRESSES``, which readiness
  and the launch plans honour (``/etc/hosts`` is never edited). Ports are picked free.
  MPI needs separate hosts for its ssh launch, so it is refused here.

Output comes back line by line prefixed with the host (``algo-2 | ...``, unless a
rank wrapper already wrote ``algo-2:N``). When one host fails, the others get
``SMTK_LOCAL_PEER_GRACE`` seconds (default 30) to finish on their own, then SIGTERM.

::

    statuses = run_hosts({"algo-1": "/job/algo-1", "algo-2": "/job/algo-2"}, os.environ)
    # {"algo-1": 0, "algo-2": 0}
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence

from smtk import log
from smtk.environment import Environment
from smtk.errors import ConfigError
from smtk.launch.select import launcher_for
from smtk.lines import LineSink
from smtk.local import netns
from smtk.local.netns import Namespaces
from smtk.settings import Settings, is_set
from smtk.stop import Stop
from smtk.supervisor import Child, Supervisor

logger = logging.getLogger("smtk")

#: Seconds a host's train gets between the SIGTERM another host's failure causes and SIGKILL.
_KILL_GRACE = 10.0


def _mode(settings: Settings) -> str:
    chosen = settings.local_hosts
    if chosen != "auto":
        return chosen

    return "netns" if netns.available() is None else "loopback"


def _uses_mpi(root: str) -> bool:

    env = Environment(root=root, environ={})
    return launcher_for(env).startswith("mpi")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_hosts(
    host_roots: Mapping[str, str],
    environ: Mapping[str, str],
    *,
    sink: LineSink | None = None,
    sink_for: Callable[[str], LineSink] | None = None,
    train: Sequence[str] | None = None,
    stop: Stop | None = None,
    max_runtime: float | None = None,
    stop_grace: float = 120.0,
) -> dict[str, int]:
    """Run ``train`` for every host (``host -> SAGEMAKER_BASE_DIR``); returns host -> exit status.

    Each host's lines go to ``sink_for(host)`` when given (unprefixed), else to
    ``sink`` or our stdout, prefixed with the host.

    Signals recorded by ``stop`` (Ctrl-C, SIGTERM) are forwarded to every host's ``train``,
    as is a SIGTERM once ``max_runtime`` seconds have passed (the platform's
    MaxRuntimeInSeconds); hosts still running ``stop_grace`` seconds later are killed.
    """
    settings = Settings.from_environ(environ)
    command = list(train or [sys.executable, "-c", "import smtk.cli; smtk.cli.train_console()"])
    hosts = list(host_roots)
    mode = _mode(settings)
    supervisor = Supervisor(
        stop=stop, grace=stop_grace, grace_setting="smtk local's stop grace", max_runtime=max_runtime
    )
    if mode == "netns":
        workdir = tempfile.mkdtemp(prefix="smtk-hosts-")
        try:
            with Namespaces(hosts, workdir) as spaces:
                for host in hosts:
                    spaces.bind_tree(host, host_roots[host])
                logger.info(
                    "smtk local: %d hosts in network namespaces (%s)", len(hosts), spaces.subnet + ".0/24"
                )
                # Inside, every host sees its tree at the same temporary path (gone after the
                # job); say where each one really is, so paths in the job's output can be found.
                for host in hosts:
                    logger.info(
                        "smtk local: %s sees %s at %s (SM_MODEL_DIR=%s)",
                        host,
                        host_roots[host],
                        spaces.mount_point,
                        os.path.join(spaces.mount_point, "model"),
                    )
                envs = {host: {**environ, "SAGEMAKER_BASE_DIR": spaces.mount_point} for host in hosts}
                return _supervise(
                    supervisor, hosts, lambda h: spaces.command(h, command), envs, settings, sink, sink_for
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if _uses_mpi(host_roots[hosts[0]]):
        raise ConfigError(
            "smtk local",
            "sagemaker_mpi_enabled",
            "root (network namespaces) to run MPI on several hosts",
            "<not root, or ip netns unavailable>",
            hint="run as root with iproute2 installed, or use torchrun (sagemaker_torch_distributed_enabled)",
        )
    addresses = ",".join(f"{host}=127.0.0.{i + 2}" for i, host in enumerate(hosts))
    shared = {
        "SMTK_HOST_ADDRESSES": addresses,
        "SMTK_MASTER_PORT": str(
            settings.master_port if is_set(environ, "SMTK_MASTER_PORT") else _free_port()
        ),
        "SMTK_STATUS_PORT": str(
            settings.status_port if is_set(environ, "SMTK_STATUS_PORT") else _free_port()
        ),
        "GLOO_SOCKET_IFNAME": environ.get("GLOO_SOCKET_IFNAME", "lo"),
        "NCCL_SOCKET_IFNAME": environ.get("NCCL_SOCKET_IFNAME", "lo"),
    }
    logger.info("smtk local: %d hosts as processes on loopback (%s)", len(hosts), addresses)
    envs = {host: {**environ, **shared, "SAGEMAKER_BASE_DIR": host_roots[host]} for host in hosts}
    return _supervise(supervisor, hosts, lambda h: command, envs, settings, sink, sink_for)


def host_sink(host: str, sink: LineSink | None = None) -> LineSink:
    """Lines of one host's ``train``, prefixed ``algo-2 | `` (unless a rank wrapper already
    wrote ``algo-2:N``), to ``sink`` or our stdout (masked)."""
    tagged = f"{host}:"

    def emit(_stream: str, line: str) -> None:
        text = line if line.startswith(tagged) else f"{host} | {line}"
        if sink is not None:
            sink("stdout", text)
        else:
            log.write("stdout", text)

    return emit


def _supervise(
    supervisor: Supervisor,
    hosts: list[str],
    command_for: Callable[[str], list[str]],
    envs: Mapping[str, Mapping[str, str]],
    settings: Settings,
    sink: LineSink | None,
    sink_for: Callable[[str], LineSink] | None,
) -> dict[str, int]:
    for host in hosts:
        supervisor.start(
            host,
            command_for(host),
            env=envs[host],
            sink=sink_for(host) if sink_for is not None else host_sink(host, sink),
            merge_stderr=True,
            tail_lines=20,
        )
    grace = settings.local_peer_grace
    failed: list[str] = []

    def stop_the_others() -> None:
        supervisor.stop_children(
            signal.SIGTERM, kill_after=_KILL_GRACE, reason=f"smtk local: {failed[0]} failed {grace:.0f} s ago"
        )

    def on_exit(child: Child) -> None:
        status = child.result().exit_status
        if status != 0 and not failed:
            failed.append(child.name)
            logger.warning("smtk local: %s failed; other hosts get %.0f s to finish", child.name, grace)
            supervisor.after(grace, stop_the_others)

    results = supervisor.wait(on_exit)
    return {host: result.exit_status for host, result in results.items()}
