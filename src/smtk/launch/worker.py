"""MPI hosts other than the master: keep sshd up, wait for the master, exit as it did.

mpirun on the master starts this host's ranks over ssh, so the worker's own ``train``
has nothing to spawn; it must stay alive (on the platform the container ends with it)
until the master's run is over, then report the master's outcome. Everything goes over
the job's status channel (:mod:`smtk.cluster.session`), which ``train`` joined at its start::

    worker train                                   master train
    ────────────                                   ────────────
    connected to master:SMTK_STATUS_PORT ────────  (accepted, remembered)
    snapshot env -> <base>/.smtk/host-env.json
    sshd up? else start it (SMTK_SSHD)
    ready ──────────────────────────────────────>  every worker ready + its sshd reachable
    wait on the channel (no polling)               mpirun ... -> report
    <──────── done {"exit_status": 1, "failure": {host, rank, cause}}
    exit with the master's status and root cause

If the master's ``train`` dies the connection closes and the worker fails at once; if
the master host vanishes, TCP keepalive notices within about 15 s. If the master fails
before the worker connects, it keeps its outcome for ``SMTK_OUTCOME_LINGER`` seconds;
a master that never comes up fails the worker after ``SMTK_READY_TIMEOUT`` (exit 4).

::

    outcome = run_worker(env, plan)          # on a worker (plan.kind == "mpi-worker")
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

from smtk.cluster import probe
from smtk.environment import Environment
from smtk.errors import ClusterError
from smtk.failure import Failure
from smtk.launch import rank
from smtk.launch.plan import LaunchPlan
from smtk.stop import Stop

if TYPE_CHECKING:
    from smtk.cluster.session import Session

logger = logging.getLogger("smtk")

#: Seconds to wait for an sshd we started to accept connections.
SSHD_START_TIMEOUT = 15.0
#: sshd's privilege-separation directory; missing when /run is a fresh tmpfs.
SSHD_RUN_DIR = "/run/sshd"


def run_worker(env: Environment, plan: LaunchPlan, session: Session | None, stop: Stop) -> Failure | None:
    """Serve mpirun's ranks on this host until the master's run ends; never spawns user code.

    ``None`` when the master reported success, else the job's failure as the master
    reported it (its root cause, host and rank).
    """
    master = env.master_hostname
    if session is None:
        raise ClusterError(f"{env.current_host}: an MPI worker needs the job's status channel to the master")
    rank.write_snapshot(env.paths.root, {**env.environ, **plan.env})
    rank.clear_failures(env.paths.root)
    sshd = ensure_sshd(env, stop)
    try:
        session.mark_ready()
        logger.info("%s: MPI worker; waiting for the master %s to run the job", env.current_host, master)
        status, failure = session.wait_master_outcome(env.settings.ready_timeout)
    finally:
        if sshd is not None:
            _stop(sshd)
    if status == 0:
        logger.info("%s: the master %s reported success", env.current_host, master)
        return None
    reported = failure or Failure(cause=f"the MPI job failed (exit status {status})", host=master)
    return reported.evolve(exit_status=status, extra={**reported.extra, "mpi_master_outcome": True})


def sshd_command(env: Environment) -> list[str]:
    """``SMTK_SSHD`` (a command line) or ``sshd`` from PATH or ``/usr/sbin/sshd``; run with ``-D -e``."""
    if env.settings.sshd:
        command = list(env.settings.sshd)
    else:
        found = shutil.which("sshd", path=env.environ.get("PATH")) or "/usr/sbin/sshd"
        command = [found]
    port = env.settings.ssh_port
    if port != probe.DEFAULT_SSH_PORT:
        command += ["-p", str(port)]
    return [*command, "-D", "-e"]


def _local_address(env: Environment) -> str:
    address = probe.bind_address(env)
    return "127.0.0.1" if address == "0.0.0.0" else address


def ensure_sshd(env: Environment, stop: Stop) -> subprocess.Popen[bytes] | None:
    """Check that sshd accepts connections here; start it when it does not.

    Returns the sshd we started (stopped when the worker ends), or ``None``.
    """
    port = env.settings.ssh_port
    local = probe.Peer(_local_address(env), port, "sshd")
    if probe.probe(local, env.settings) is None:
        logger.info("%s: sshd is already listening on port %d", env.current_host, port)
        return None
    command = sshd_command(env)
    if not os.path.exists(command[0]) and shutil.which(command[0]) is None:
        raise ClusterError(
            f"{env.current_host}: MPI needs an ssh server on every worker, but {command[0]!r} does not exist",
            hint="install openssh-server in the image, or set SMTK_SSHD to the sshd command",
        )
    if not os.path.isdir(SSHD_RUN_DIR):
        try:
            os.makedirs(SSHD_RUN_DIR, mode=0o755, exist_ok=True)
            os.chmod(SSHD_RUN_DIR, 0o755)  # makedirs' mode is masked by the umask
        except OSError as exc:
            logger.warning("%s: cannot create %s for sshd: %s", env.current_host, SSHD_RUN_DIR, exc.strerror)
    logger.info("%s: starting %s", env.current_host, shlex.join(command))
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + SSHD_START_TIMEOUT
    delay = 0.02
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            message = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
            raise ClusterError(
                f"{env.current_host}: sshd exited with status {proc.returncode} at start: "
                f"{message.splitlines()[-1] if message else 'no message'}",
                hint="sshd needs host keys (ssh-keygen -A) and /run/sshd",
            )
        if probe.probe(local, env.settings) is None:
            return proc
        if stop.wait(delay):
            _stop(proc)
            stop.check("starting sshd for the MPI master")
        delay = min(delay * 2, 0.5)
    _stop(proc)
    raise ClusterError(
        f"{env.current_host}: sshd did not accept connections on port {port} within {SSHD_START_TIMEOUT:g} s"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()
