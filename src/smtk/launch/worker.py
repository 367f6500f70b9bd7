"""MPI hosts other than the master: keep sshd up, wait for the master, exit as it did.

mpirun on the master starts this host's ranks over ssh, so the worker's own ``train``
has nothing to spawn; it must stay alive (on the platform the container ends with it)
until the master's run is over, then report the master's outcome::

    worker train                                   master train
    ────────────                                   ────────────
    snapshot env -> <base>/.smtk/host-env.json     outcome server on SMTK_STATUS_PORT
    sshd up? else start it (SMTK_SSHD)             wait for every worker's sshd
    connect to master:SMTK_STATUS_PORT  ────────>  (accepts, remembers the host)
    block on the socket (no polling)               mpirun ... -> report
    <──────── {"exit_status": 1, "failure_reason": "..."}  publish_outcome()
    exit with the master's status and reason

If the master's ``train`` dies the socket closes and the worker fails at once; if the
master host vanishes, TCP keepalive notices within about 15 s. A master that never
comes up fails the worker after ``SMTK_READY_TIMEOUT`` with exit status 4.

::

    outcome = run_worker(env, plan)          # on a worker (plan.kind == "mpi-worker")
    start_outcome_server(env, plan)          # on the master, before waiting for peers
    publish_outcome(exit_status, reason)     # on the master, after the report
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from smtk import cluster
from smtk.environment import Environment
from smtk.errors import ClusterError, ConfigError
from smtk.launch import rank
from smtk.launch.plan import LaunchPlan

logger = logging.getLogger("smtk")

#: Seconds the master keeps its outcome available for workers that have not fetched it.
DEFAULT_OUTCOME_LINGER = 30.0
#: Seconds to wait for an sshd we started to accept connections.
SSHD_START_TIMEOUT = 15.0
#: TCP keepalive: idle seconds, interval, probes -> a vanished peer is noticed in ~15 s.
KEEPALIVE = (5, 2, 5)


@dataclass(frozen=True)
class WorkerOutcome:
    """The master's outcome as this worker reports it."""

    exit_status: int
    failure_reason: str | None


# -- worker side ---------------------------------------------------------------------------


def run_worker(env: Environment, plan: LaunchPlan) -> WorkerOutcome:
    """Serve mpirun's ranks on this host until the master's run ends; never spawns user code."""
    environ = env.environ
    master = env.master_hostname
    rank.write_snapshot(env.paths.root, {**environ, **plan.env})
    rank.clear_failures(env.paths.root)
    sshd = ensure_sshd(env)
    try:
        logger.info("%s: MPI worker; waiting for the master %s to run the job", env.current_host, master)
        connection = _connect_to_master(env)
        with connection:
            return _wait_for_outcome(connection, env.current_host, master)
    finally:
        if sshd is not None:
            _stop(sshd)


def sshd_command(environ: dict[str, str]) -> list[str]:
    """``SMTK_SSHD`` (a command line) or ``sshd`` from PATH or ``/usr/sbin/sshd``; run with ``-D -e``."""
    text = environ.get("SMTK_SSHD", "").strip()
    if text:
        command = shlex.split(text)
    else:
        found = shutil.which("sshd", path=environ.get("PATH")) or "/usr/sbin/sshd"
        command = [found]
    port = cluster.ssh_port(environ)
    if port != cluster.DEFAULT_SSH_PORT:
        command += ["-p", str(port)]
    return [*command, "-D", "-e"]


def _local_address(env: Environment) -> str:
    address = cluster.bind_address(env)
    return "127.0.0.1" if address == "0.0.0.0" else address


def ensure_sshd(env: Environment) -> subprocess.Popen[bytes] | None:
    """Check that sshd accepts connections here; start it when it does not.

    Returns the sshd we started (stopped when the worker ends), or ``None``.
    """
    port = cluster.ssh_port(env.environ)
    local = cluster.Peer(_local_address(env), port, "sshd")
    if cluster.probe(local, {}) is None:
        logger.info("%s: sshd is already listening on port %d", env.current_host, port)
        return None
    command = sshd_command(env.environ)
    if not os.path.exists(command[0]) and shutil.which(command[0]) is None:
        raise ClusterError(
            f"{env.current_host}: MPI needs an ssh server on every worker, but {command[0]!r} does not exist",
            hint="install openssh-server in the image, or set SMTK_SSHD to the sshd command",
        )
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
        if cluster.probe(local, {}) is None:
            return proc
        time.sleep(delay)
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


def _keepalive(sock: socket.socket) -> None:
    idle, interval, count = KEEPALIVE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _connect_to_master(env: Environment) -> socket.socket:
    environ = env.environ
    master = env.master_hostname
    port = cluster.status_port(environ)
    cluster.wait_for(
        [cluster.Peer(master, port, "smtk status")],
        environ,
        cluster.ready_timeout(environ),
        who=env.current_host,
    )
    # The readiness probe proved the port open; this connect is the one we keep.
    try:
        sock = socket.create_connection(
            (cluster.resolve(master, environ), port), timeout=cluster.CONNECT_TIMEOUT
        )
    except OSError as exc:
        raise ClusterError(
            f"{env.current_host}: lost the master {master} right after it became ready: {exc.strerror or exc}"
        ) from exc
    sock.settimeout(None)
    _keepalive(sock)
    sock.sendall((json.dumps({"hello": env.current_host}) + "\n").encode())
    return sock


def _wait_for_outcome(sock: socket.socket, host: str, master: str) -> WorkerOutcome:
    line = b""
    try:
        with sock.makefile("rb") as stream:
            line = stream.readline()
    except OSError as exc:
        return WorkerOutcome(
            1, f"lost the connection to the MPI master {master} ({exc.strerror or exc}): its host went away"
        )
    if not line:
        return WorkerOutcome(
            1, f"the MPI master {master} ended without reporting an outcome (its train died or was killed)"
        )
    try:
        message = json.loads(line)
        status = int(message["exit_status"])
        reason = message.get("failure_reason")
    except (ValueError, KeyError, TypeError):
        return WorkerOutcome(1, f"the MPI master {master} sent an unreadable outcome: {line[:200]!r}")
    if status == 0:
        logger.info("%s: the master %s reported success", host, master)
        return WorkerOutcome(0, None)
    return WorkerOutcome(
        status, f"the MPI job failed on the master {master}: {reason or f'exit status {status}'}"
    )


# -- master side ---------------------------------------------------------------------------


class OutcomeServer:
    """Tells every worker the master's outcome once it is known."""

    def __init__(self, env: Environment, workers: list[str]) -> None:
        self.workers = set(workers)
        self._lock = threading.Condition()
        self._connections: dict[str, socket.socket] = {}
        self._told: set[str] = set()
        self._message: bytes | None = None
        port = cluster.status_port(env.environ)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((cluster.bind_address(env), port))
            self._sock.listen(max(16, len(workers) * 2))
        except OSError as exc:
            self._sock.close()
            raise ClusterError(
                f"{env.current_host}: cannot listen on the status port {port}: {exc.strerror or exc}",
                hint="choose another with SMTK_STATUS_PORT (the same on every host)",
            ) from exc
        self._thread = threading.Thread(target=self._accept, name="smtk-outcome", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._greet, args=(conn,), daemon=True).start()

    def _greet(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10.0)
            with conn.makefile("rb") as stream:
                hello = json.loads(stream.readline() or b"{}")
            host = str(hello["hello"])
            conn.settimeout(None)
            _keepalive(conn)
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                conn.close()
            return  # a readiness probe or a stranger: nothing to tell it
        with self._lock:
            old = self._connections.pop(host, None)
            self._connections[host] = conn
            message = self._message
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()
        if message is not None:
            self._send(host, conn, message)

    def _send(self, host: str, conn: socket.socket, message: bytes) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(message)
        with contextlib.suppress(OSError):
            conn.close()
        with self._lock:
            self._told.add(host)
            self._lock.notify_all()

    def publish(self, exit_status: int, failure_reason: str | None, linger: float) -> None:
        """Send the outcome to every worker; wait (at most ``linger`` s) for late ones."""
        message = (json.dumps({"exit_status": exit_status, "failure_reason": failure_reason}) + "\n").encode()
        with self._lock:
            self._message = message
            pending = dict(self._connections)
        for host, conn in pending.items():
            self._send(host, conn, message)
        deadline = time.monotonic() + linger
        with self._lock:
            while not self.workers <= self._told:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(self.workers - self._told)
                    logger.warning("workers never fetched the outcome: %s", ", ".join(missing))
                    break
                self._lock.wait(left)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            for conn in self._connections.values():
                with contextlib.suppress(OSError):
                    conn.close()


_server: OutcomeServer | None = None


def start_outcome_server(env: Environment, plan: LaunchPlan) -> None:
    """Listen for this MPI job's workers (master only; idempotent)."""
    global _server  # noqa: PLW0603 (one outcome server per job)
    if _server is None:
        _server = OutcomeServer(env, [h for h in plan.hosts if h != env.current_host])


def outcome_linger(environ: dict[str, str]) -> float:
    text = environ.get("SMTK_OUTCOME_LINGER", "").strip()
    if not text:
        return DEFAULT_OUTCOME_LINGER
    try:
        return max(0.0, float(text))
    except ValueError:
        raise ConfigError("SMTK_OUTCOME_LINGER", None, "a number of seconds", repr(text)) from None


def publish_outcome(exit_status: int, failure_reason: str | None) -> None:
    """Tell the workers how the master's run ended (no-op unless a server was started)."""
    global _server
    server, _server = _server, None
    if server is not None:
        server.publish(exit_status, failure_reason, outcome_linger(dict(os.environ)))
