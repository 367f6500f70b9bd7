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

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from smtk import settings
from smtk.errors import ConfigError
from smtk.launch.process import StopController

logger = logging.getLogger("smtk")

DEFAULT_PEER_GRACE = 30.0
_KILL_GRACE = 10.0


def _mode(environ: Mapping[str, str]) -> str:
    chosen = environ.get("SMTK_LOCAL_HOSTS", "auto").strip().lower() or "auto"
    if chosen not in ("auto", "netns", "loopback"):
        raise ConfigError("SMTK_LOCAL_HOSTS", None, "'auto', 'netns' or 'loopback'", chosen)
    if chosen != "auto":
        return chosen
    from smtk.local import netns

    return "netns" if netns.available() is None else "loopback"


def _uses_mpi(root: str) -> bool:
    from smtk.environment import Environment
    from smtk.launch.select import launcher_for

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
    out: IO[str] | None = None,
    train: Sequence[str] | None = None,
    stop: StopController | None = None,
    max_runtime: float | None = None,
    stop_grace: float = 120.0,
) -> dict[str, int]:
    """Run ``train`` for every host (``host -> SAGEMAKER_BASE_DIR``); returns host -> exit status.

    Signals recorded by ``stop`` (Ctrl-C, SIGTERM) are forwarded to every host's ``train``,
    as is a SIGTERM once ``max_runtime`` seconds have passed (the platform's
    MaxRuntimeInSeconds); hosts still running ``stop_grace`` seconds later are killed.
    """
    control = _Control(stop or StopController(), max_runtime, stop_grace)
    command = list(train or [sys.executable, "-m", "smtk.train"])
    stream = out or sys.stdout
    hosts = list(host_roots)
    mode = _mode(environ)
    if mode == "netns":
        from smtk.local.netns import Namespaces

        workdir = tempfile.mkdtemp(prefix="smtk-hosts-")
        try:
            with Namespaces(hosts, workdir) as spaces:
                for host in hosts:
                    spaces.bind_tree(host, host_roots[host])
                logger.info(
                    "smtk local: %d hosts in network namespaces (%s)", len(hosts), spaces.subnet + ".0/24"
                )
                envs = {host: {**environ, "SAGEMAKER_BASE_DIR": spaces.mount_point} for host in hosts}
                return _supervise(hosts, lambda h: spaces.command(h, command), envs, environ, stream, control)
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
    addresses = {host: f"127.0.0.{i + 2}" for i, host in enumerate(hosts)}
    shared = {
        "SMTK_HOST_ADDRESSES": ",".join(f"{h}={a}" for h, a in addresses.items()),
        "SMTK_MASTER_PORT": environ.get("SMTK_MASTER_PORT") or str(_free_port()),
        "SMTK_STATUS_PORT": environ.get("SMTK_STATUS_PORT") or str(_free_port()),
        "GLOO_SOCKET_IFNAME": environ.get("GLOO_SOCKET_IFNAME", "lo"),
        "NCCL_SOCKET_IFNAME": environ.get("NCCL_SOCKET_IFNAME", "lo"),
    }
    logger.info(
        "smtk local: %d hosts as processes on loopback (%s)", len(hosts), shared["SMTK_HOST_ADDRESSES"]
    )
    envs = {host: {**environ, **shared, "SAGEMAKER_BASE_DIR": host_roots[host]} for host in hosts}
    return _supervise(hosts, lambda h: command, envs, environ, stream, control)


@dataclass
class _Control:
    """How the supervisor is told to stop: signals, the maximum runtime, the kill deadline."""

    stop: StopController
    max_runtime: float | None
    stop_grace: float
    started: float = field(default_factory=time.monotonic)
    forwarded: int = 0
    timed_out: bool = False

    def new_signals(self, now: float) -> list[int]:
        if self.max_runtime is not None and not self.timed_out and now - self.started >= self.max_runtime:
            self.timed_out = True
            logger.warning(
                "smtk local: maximum runtime of %.0f s reached: stopping every host", self.max_runtime
            )
            self.stop.request(signal.SIGTERM)
        fresh = self.stop.received[self.forwarded :]
        self.forwarded = len(self.stop.received)
        return fresh


def _peer_grace(environ: Mapping[str, str]) -> float:
    return settings.number(environ, "SMTK_LOCAL_PEER_GRACE", DEFAULT_PEER_GRACE)


def _supervise(
    hosts: list[str],
    command_for: Callable[[str], list[str]],
    envs: Mapping[str, Mapping[str, str]],
    environ: Mapping[str, str],
    out: IO[str],
    control: _Control,
) -> dict[str, int]:
    lock = threading.Lock()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    pumps: list[threading.Thread] = []
    for host in hosts:
        proc = subprocess.Popen(
            command_for(host),
            env=dict(envs[host]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs[host] = proc
        thread = threading.Thread(target=_pump, args=(host, proc, out, lock), daemon=True)
        thread.start()
        pumps.append(thread)
    statuses = _wait(procs, _peer_grace(environ), control)
    for thread in pumps:
        thread.join(5.0)
    return statuses


def _pump(host: str, proc: subprocess.Popen[bytes], out: IO[str], lock: threading.Lock) -> None:
    assert proc.stdout is not None
    tagged = f"{host}:"
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        text = line if line.startswith(tagged) else f"{host} | {line}"
        with lock, contextlib.suppress(OSError, ValueError):
            out.write(text + "\n")
            out.flush()


def _wait(procs: Mapping[str, subprocess.Popen[bytes]], grace: float, control: _Control) -> dict[str, int]:
    statuses: dict[str, int] = {}
    stop_at: float | None = None
    kill_at: float | None = None
    try:
        while len(statuses) < len(procs):
            for signum in control.new_signals(time.monotonic()):
                for host, proc in procs.items():
                    if host not in statuses:
                        _signal(proc, signum)
                if kill_at is None:
                    kill_at = time.monotonic() + control.stop_grace
            for host, proc in procs.items():
                if host not in statuses and proc.poll() is not None:
                    statuses[host] = _status(proc.returncode)
                    if statuses[host] != 0 and stop_at is None:
                        stop_at = time.monotonic() + grace
                        logger.warning("smtk local: %s failed; other hosts get %.0f s to finish", host, grace)
            now = time.monotonic()
            if stop_at is not None and now >= stop_at and kill_at is None:
                kill_at = now + _KILL_GRACE
                for host, proc in procs.items():
                    if host not in statuses:
                        logger.warning("smtk local: stopping %s (SIGTERM)", host)
                        _signal(proc, signal.SIGTERM)
            if kill_at is not None and now >= kill_at:
                for host, proc in procs.items():
                    if host not in statuses:
                        _signal(proc, signal.SIGKILL)
            time.sleep(0.05)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                _signal(proc, signal.SIGKILL)
                proc.wait()
    return statuses


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode
