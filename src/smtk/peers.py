"""The status channel of a multi-host job: readiness, fail-fast aborts and outcomes.

Every host's ``train`` joins the channel first thing (:func:`join`, before fetching
code). It listens on ``SMTK_STATUS_PORT``, and every host but the master keeps one TCP
connection to the master's port; the master is the hub everything passes through::

    member train                                    master train
    ────────────                                    ────────────
    join: listen, connect (backoff) ──hello───────> join: listen, accept
    prepare (code, requirements, plan)              prepare (code, requirements, plan)
    mark_ready() ─────────────────────ready───────> every member ready (and resolvable)?
                 <────────────────────ready──────── mark_ready(): it will launch
    launch torchrun at once                         launch torchrun / mpirun
    fails or stops ──done {status, failure}───────> first failure: stop own run, relay
                 <───────abort {failure}─────────── (to every other member)
    settle(): done {0} ───────────────────────────> remembered (EOF after it is fine)
                 <───────done {status, failure}──── settle(); MPI workers exit with it

- The first failure anywhere (preparation, readiness, the job, a stop, a lost
  connection) reaches every host within a round trip. Each host then stops its own
  run (SIGTERM through the job's :class:`~smtk.stop.Stop`, SIGKILL after
  ``SMTK_PEER_ABORT_GRACE`` seconds) and reports that failure: its cause, host and
  rank (:meth:`Session.settle`).
- A connection that ends without a ``done`` is a failure of that peer: its ``train``
  died. TCP keepalive notices a vanished host in about 15 s.
- The master keeps its outcome for members that connect late, up to
  ``SMTK_OUTCOME_LINGER`` seconds (:meth:`Session.close`): a member whose master gave up
  before it came up learns why instead of waiting out its readiness deadline.
- Rank wrappers send one-line ``{"failure": ...}`` reports (a
  :class:`~smtk.failure.Failure`) to every host's port (:func:`announce_failure`), so
  each host names the first failing rank.
- Every wait here takes the job's stop: a SIGTERM ends it at once with
  :class:`~smtk.stop.Stopped`.

::

    session = peers.join(env, stop, masker)   # None unless a multi-host torchrun/MPI job
    session.mark_ready()                      # via cluster.wait_for_peers, after preparing
    session.wait_ready(probes, timeout)
    outcome = session.settle(outcome)         # after the run: tell the others, name the root cause
    session.close()                           # after the report: linger for late members
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from smtk import cluster
from smtk.environment import Environment
from smtk.errors import ClusterError, ConfigError
from smtk.failure import Failure, Outcome
from smtk.redact import Masker
from smtk.settings import Settings
from smtk.stop import Stop, Stopped

logger = logging.getLogger("smtk")

#: Seconds a host whose own failure looks like fallout waits for a peer's root cause.
ROOT_CAUSE_WAIT = 2.0
#: TCP keepalive: idle seconds, interval, probes -> a vanished peer is noticed in ~15 s.
KEEPALIVE = (5, 2, 5)
#: Seconds a new connection may take to say who it is.
HELLO_TIMEOUT = 10.0
MAX_MESSAGE = 1 << 20
#: Rank failures one host keeps (the first ones matter; a flood must not eat memory).
MAX_RANK_REPORTS = 1024
#: Launchers whose hosts talk over the channel.
DISTRIBUTED = ("torchrun", "mpi", "mpi-worker")


def _encode(message: Mapping[str, object]) -> bytes:
    return (json.dumps(message) + "\n").encode()


def _decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line) if line.strip() else {}
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _keepalive(sock: socket.socket) -> None:
    idle, interval, count = KEEPALIVE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class _Connection:
    """One kept connection; sends from several threads are serialised."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, message: Mapping[str, object]) -> bool:
        with self.lock:
            try:
                self.sock.sendall(_encode(message))
            except OSError:
                return False
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class Session:
    """This host's end of the status channel (see the module docstring)."""

    def __init__(
        self,
        env: Environment,
        stop: Stop | None,
        secrets: Masker | Sequence[str],
        hosts: Sequence[str],
    ) -> None:
        self.environ = env.environ
        self.settings = env.settings
        self.host = env.current_host
        self.master = env.master_hostname
        self.is_master = self.host == self.master
        self.members = [h for h in hosts if h != self.master]
        self.port = env.settings.status_port
        self.grace = env.settings.peer_abort_grace
        self.linger = env.settings.outcome_linger
        self._stop = stop
        self._masker = secrets if isinstance(secrets, Masker) else Masker(secrets)
        self.cond = threading.Condition()
        self.closed = threading.Event()
        self.settled = threading.Event()
        #: The job's first failure as known here (ours, a peer's, or a lost peer).
        self.root: Failure | None = None
        #: Whether this host's run was stopped because of ``root`` (not by its own signal).
        self.stopped_us = False
        #: Whether :meth:`wait_ready` gave up because of ``root``.
        self.raised = False
        #: Failures rank wrappers reported to this host (candidates for the root cause).
        self.rank_failures: list[Failure] = []
        self.ready_sent = False
        # master side
        self.connections: dict[str, _Connection] = {}
        self.ready_members: set[str] = set()
        self.done_members: set[str] = set()
        self.told: set[str] = set()
        #: Members whose connection ended: nobody left there to tell.
        self.gone: set[str] = set()
        self.final: dict[str, object] | None = None
        # member side
        self.to_master: _Connection | None = None
        self.outbox: list[dict[str, object]] = []
        self.connect_problem = "not tried yet"
        self.connect_attempts = 0
        self.master_ready = False
        self.master_outcome: tuple[int, Failure | None] | None = None
        self.listener = self._listen(env)
        self._unhook = stop.on_stop(self._stopped) if stop is not None else None
        threading.Thread(target=self._accept, name="smtk-status", daemon=True).start()
        if not self.is_master:
            threading.Thread(target=self._connect, name="smtk-status-master", daemon=True).start()

    def _stopped(self, _signum: int) -> None:
        """A stop arrived: wake whoever waits on the channel (they raise Stopped)."""
        with self.cond:
            self.cond.notify_all()

    # -- listening (every host) ---------------------------------------------------------------

    def _listen(self, env: Environment) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cluster.bind_address(env), self.port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ClusterError(
                f"{self.host}: cannot listen on the status port {self.port}: {exc.strerror or exc}",
                hint="another process uses it; choose another with SMTK_STATUS_PORT (the same on every host)",
            ) from exc
        return sock

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), name="smtk-status-peer", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(HELLO_TIMEOUT)
            stream = sock.makefile("rb")
            first = _decode(stream.readline(MAX_MESSAGE))
        except OSError:
            sock.close()
            return
        reported = Failure.from_json(first.get("failure"))
        member = first.get("hello")
        if reported is not None:  # a rank wrapper's one-shot report
            with self.cond:
                if len(self.rank_failures) < MAX_RANK_REPORTS:
                    self.rank_failures.append(reported)
                self.cond.notify_all()
        if not (self.is_master and isinstance(member, str) and member in self.members):
            stream.close()
            sock.close()  # a readiness probe, a report, or a stranger
            return
        sock.settimeout(None)
        _keepalive(sock)
        conn = _Connection(sock)
        with self.cond:
            old = self.connections.get(member)
            self.connections[member] = conn
            greeting: list[dict[str, object]] = []
            if self.ready_sent:
                greeting.append({"ready": self.host})
            if self.root is not None and self.root.host != member:
                greeting.append({"abort": self.root.to_json()})
            told = self.final is not None
            if told:
                greeting.append({"done": self.final})
            self.cond.notify_all()
        if old is not None:
            old.close()
        delivered = all(conn.send(message) for message in greeting)
        if told and delivered:
            with self.cond:
                self.told.add(member)
                self.cond.notify_all()
        self._read_member(member, conn, stream)

    def _read_member(self, member: str, conn: _Connection, stream: IO[bytes]) -> None:
        reason = "its connection closed"
        try:
            while True:
                line = stream.readline(MAX_MESSAGE)
                if not line:
                    break
                message = _decode(line)
                if "ready" in message:
                    with self.cond:
                        self.ready_members.add(member)
                        self.cond.notify_all()
                elif isinstance(message.get("done"), dict):
                    self._on_done(member, message["done"])
        except OSError as exc:
            reason = f"connection error: {exc.strerror or exc}"
        with self.cond:
            current = self.connections.get(member) is conn
            finished = member in self.done_members or self.closed.is_set()
            if current:
                self.gone.add(member)
                self.cond.notify_all()
        conn.close()
        if current and not finished:
            self._on_failure(
                Failure(
                    cause=f"the train of {member} ended without reporting an outcome ({reason}): "
                    "it died or its host went away",
                    category="peer-lost",
                    host=member,
                    retryable=True,
                )
            )

    def _on_done(self, member: str, data: Mapping[str, Any]) -> None:
        try:
            status = int(data.get("exit_status", 1))
        except (TypeError, ValueError):
            status = 1
        with self.cond:
            self.done_members.add(member)
            self.cond.notify_all()
        if status != 0:
            failure = Failure.from_json(data.get("failure"))
            self._on_failure(failure or _failed(member, status))

    # -- the member's connection to the master ------------------------------------------------

    def _connect(self) -> None:
        peer = cluster.Peer(self.master, self.port, "smtk status")
        delay, factor, cap = cluster.BACKOFF
        while True:
            sock, problem = cluster.connect(peer, self.settings)
            if sock is not None:
                break
            with self.cond:
                self.connect_attempts += 1
                self.connect_problem = problem or "not reachable"
                self.cond.notify_all()
            if self.closed.wait(delay):
                return
            delay = min(delay * factor, cap)
        sock.settimeout(None)
        _keepalive(sock)
        conn = _Connection(sock)
        with conn.lock:  # the hello and anything queued go first, in order
            with self.cond:
                pending: list[dict[str, object]] = [{"hello": self.host}, *self.outbox]
                self.outbox.clear()
                self.to_master = conn
                self.cond.notify_all()
            with contextlib.suppress(OSError):
                for message in pending:
                    sock.sendall(_encode(message))
        self._read_master(conn)

    def _read_master(self, conn: _Connection) -> None:
        reason = "its connection closed"
        try:
            with conn.sock.makefile("rb") as stream:
                while True:
                    line = stream.readline(MAX_MESSAGE)
                    if not line:
                        break
                    self._on_master_message(_decode(line))
        except OSError as exc:
            reason = f"connection error: {exc.strerror or exc}"
        with self.cond:
            finished = self.master_outcome is not None or self.closed.is_set()
        conn.close()
        if not finished:
            self._on_failure(
                Failure(
                    cause=f"lost the connection to the master {self.master} before it reported an "
                    f"outcome ({reason}): its train died or its host went away",
                    category="peer-lost",
                    host=self.master,
                    retryable=True,
                )
            )

    def _on_master_message(self, message: Mapping[str, Any]) -> None:
        if "ready" in message:
            with self.cond:
                self.master_ready = True
                self.cond.notify_all()
        elif "abort" in message:
            failure = Failure.from_json(message["abort"])
            if failure is not None:
                self._on_failure(failure)
        elif isinstance(message.get("done"), dict):
            data = message["done"]
            try:
                status = int(data.get("exit_status", 1))
            except (TypeError, ValueError):
                status = 1
            failure = Failure.from_json(data.get("failure"))
            with self.cond:
                self.master_outcome = (status, failure)
                self.cond.notify_all()
            if status != 0:
                self._on_failure(failure or _failed(self.master, status))

    def _send_to_master(self, message: dict[str, object]) -> None:
        with self.cond:
            conn = self.to_master
            if conn is None:
                self.outbox.append(message)
                return
        conn.send(message)

    # -- failures ------------------------------------------------------------------------------

    def _on_failure(self, failure: Failure) -> None:
        """The first failure wins: stop this host's run (unless settled), relay it (master)."""
        stop = self._stop
        with self.cond:
            if self.root is not None:
                return
            self.root = failure
            stopping = stop is not None and not self.settled.is_set()
            if stop is not None and stopping:
                logger.error(
                    "peer %s; stopping this host's run (SIGTERM, SIGKILL after %g s: SMTK_PEER_ABORT_GRACE)",
                    self._redact(failure.describe()),
                    self.grace,
                )
                self.stopped_us = stop.stop_signal is None
                # Requested before anyone sees ``root``: whoever reacts to it finds the stop.
                stop.request(signal.SIGTERM, kill_after=(self.grace, "SMTK_PEER_ABORT_GRACE"))
            self.cond.notify_all()
        if stop is not None and stopping:
            threading.Thread(target=self._escalate, args=(stop,), name="smtk-peer-abort", daemon=True).start()
        if self.is_master:
            with self.cond:
                targets = [c for h, c in self.connections.items() if h != failure.host]
            for conn in targets:
                conn.send({"abort": failure.to_json()})

    def _escalate(self, stop: Stop) -> None:
        if self.settled.wait(self.grace):
            return
        logger.error(
            "this host's run has not ended %.0f s after its peer failed (SMTK_PEER_ABORT_GRACE): killing it",
            self.grace,
        )
        stop.request(signal.SIGTERM)  # the second one: the supervisor kills the job at once

    def _redact(self, text: str) -> str:
        return self._masker.mask(text)

    # -- readiness -----------------------------------------------------------------------------

    def mark_ready(self) -> None:
        """This host has prepared (code, requirements, plan) and will launch."""
        with self.cond:
            self.ready_sent = True
            targets = list(self.connections.values())
        if self.is_master:
            for conn in targets:
                conn.send({"ready": self.host})
        else:
            self._send_to_master({"ready": self.host})

    def wait_ready(self, probes: Sequence[cluster.Peer], timeout: float) -> None:
        """Wait until the peers are ready (members: the master; master: every member and
        ``probes``), raising :class:`ClusterError` on timeout or at once when a host failed."""
        started = time.monotonic()
        deadline = started + timeout
        states = {p.host: cluster.State() for p in probes}
        halt = threading.Event()
        for peer in probes:
            threading.Thread(
                target=cluster.watch,
                args=(peer, self.settings, deadline, states[peer.host], self.cond, halt),
                name=f"smtk-ready-{peer.host}",
                daemon=True,
            ).start()
        expected = self.members if self.is_master else [self.master]
        next_report = started + cluster.PROGRESS_INTERVAL
        try:
            with self.cond:
                while True:
                    if self.root is not None:
                        self.raised = True
                        raise ClusterError(
                            f"peer {self._redact(self.root.describe())}",
                            hint="the failure of that host stopped this one; see its log",
                        )
                    waiting = self._not_ready(states)
                    if self._stop is not None and self._stop.requested:
                        pending = ", ".join(sorted(waiting)) or "nobody"
                        raise Stopped(self._stop.received[0], f"waiting for the other hosts ({pending})")
                    now = time.monotonic()
                    if not waiting:
                        logger.info(
                            "%s: all %d peers ready after %.1f s", self.host, len(expected), now - started
                        )
                        return
                    if now >= deadline:
                        break
                    if now >= next_report:
                        next_report = now + cluster.PROGRESS_INTERVAL
                        ready = [h for h in expected if h not in waiting]
                        logger.info("%s: %s", self.host, cluster.progress(ready, waiting, deadline - now))
                    self.cond.wait(min(deadline, next_report) - now)
        finally:
            halt.set()
        raise cluster.not_ready_error(waiting, len(expected), timeout)

    def _not_ready(self, states: Mapping[str, cluster.State]) -> dict[str, str]:
        """Host -> why it is not ready yet (caller holds ``cond``)."""
        waiting: dict[str, str] = {}
        if not self.is_master:
            if self.to_master is None:
                waiting[self.master] = f"{self.connect_problem}, {self.connect_attempts} attempts"
            elif not self.master_ready:
                waiting[self.master] = "connected; its train is still preparing"
            return waiting
        for member in self.members:
            state = states.get(member)
            if state is not None and not state.ready:
                waiting[member] = f"{state.problem}, {state.attempts} attempts"
            elif member not in self.connections:
                waiting[member] = f"its train has not connected to this host's status port {self.port}"
            elif member not in self.ready_members:
                waiting[member] = "connected; its train is still preparing"
        return waiting

    def wait_master_outcome(self, timeout: float) -> tuple[int, Failure | None]:
        """MPI workers: block until the master's outcome (or the job's first failure) is known.

        Raises :class:`ClusterError` when the master was not reachable within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.master_outcome is not None:
                    return self.master_outcome
                if self.root is not None:
                    return self.root.exit_status, self.root
                if self._stop is not None and self._stop.requested:
                    raise Stopped(self._stop.received[0], f"waiting for the MPI master {self.master}")
                now = time.monotonic()
                if self.to_master is None and now >= deadline:
                    raise cluster.not_ready_error(
                        {self.master: f"{self.connect_problem}, {self.connect_attempts} attempts"}, 1, timeout
                    )
                # A stop wakes this wait (see _stopped); the timeout only re-checks the deadline.
                self.cond.wait(max(0.05, deadline - now) if self.to_master is None else None)

    # -- the end ---------------------------------------------------------------------------------

    def settle(self, outcome: Outcome) -> Outcome:
        """This host's final outcome, after telling the other hosts how it ended.

        When this host failed because another failed first (its run was stopped by the
        channel, it gave up waiting, or its failure reads like fallout), the outcome is
        that host's failure: its cause, host and rank.
        """
        targets: list[tuple[str, _Connection]] = []
        with self.cond:
            if isinstance(outcome, Failure) and self.root is None and self._fallout(outcome):
                # Our failure looks like a consequence: give the root cause a moment to arrive.
                self.cond.wait_for(lambda: self.root is not None, ROOT_CAUSE_WAIT)
            root = self.root
            final: Outcome = outcome
            if isinstance(outcome, Failure) and root is not None and self._fallout(outcome, root):
                final = self._peer_outcome(root, outcome)
            own = self._failure_of(final) if isinstance(final, Failure) else None
            if own is not None and self.root is None:
                self.root = own
            done: dict[str, object] = {
                "host": self.host,
                "exit_status": final.exit_status,
                "failure": own.to_json() if own is not None else None,
            }
            if self.is_master:
                self.final = done
                targets = list(self.connections.items())
        self.settled.set()
        if self.is_master:
            for member, conn in targets:
                if conn.send({"done": done}):
                    with self.cond:
                        self.told.add(member)
                        self.cond.notify_all()
        else:
            self._send_to_master({"done": done})
        return final

    def _fallout(self, outcome: Failure, root: Failure | None = None) -> bool:
        """Whether ``outcome`` is a consequence of another host's failure (caller holds ``cond``).

        It is when the channel stopped this host's run or readiness, for an MPI worker
        (whose outcome is the master's), and when it reads like fallout ("connection
        closed by peer") while the root cause does not.
        """
        if outcome.extra.get("mpi_master_outcome") or self.raised:
            return True
        if self.stopped_us and outcome.category == "stopped":
            return True
        return outcome.secondary and (root is None or not root.secondary)

    def _failure_of(self, outcome: Failure) -> Failure:
        """What this host tells the others: bounded, masked."""
        return outcome.evolve(
            host=outcome.host or self.host,
            cause=self._redact(outcome.cause),
            stderr_tail=tuple(self._redact(line) for line in outcome.stderr_tail[-10:]),
            detail="",
            command=self._redact(outcome.command),
            extra={},
        )

    def _peer_outcome(self, root: Failure, own: Failure) -> Failure:
        logger.error("reporting the job's first failure: %s", self._redact(root.describe()))
        return root.evolve(
            detail=f"{self.host} stopped its own run because its peer {root.describe()}",
            seconds=own.seconds,
            extra={"peer_failure": True, "reported_by": self.host, "own_outcome": own.cause},
        )

    def close(self) -> None:
        """Deliver what is still undelivered (bounded by ``SMTK_OUTCOME_LINGER``, cut short by
        a stop), then hang up."""
        deadline = time.monotonic() + self.linger
        stop = self._stop

        def stopped() -> bool:
            return stop is not None and stop.requested and not self.stopped_us

        with self.cond:
            if self.is_master and self.final is not None:
                untold = self._untold()
                if untold and self.linger > 0:
                    logger.info(
                        "waiting up to %.0f s for %s to learn this host's outcome (SMTK_OUTCOME_LINGER)",
                        self.linger,
                        ", ".join(untold),
                    )
                if not self.cond.wait_for(lambda: not self._untold() or stopped(), self.linger):
                    missing = ", ".join(self._untold())
                    logger.warning("hosts never connected to learn this host's outcome: %s", missing)
            elif not self.is_master and self.settled.is_set():
                self.cond.wait_for(
                    lambda: self.to_master is not None or stopped(), max(0.0, deadline - time.monotonic())
                )
            self.closed.set()
            connections = [*self.connections.values(), *([self.to_master] if self.to_master else [])]
            self.cond.notify_all()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.listener.close()
        for conn in connections:
            # Our messages are sent; half-close first so they are read before the EOF.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            conn.close()
        if self._unhook is not None:
            self._unhook()

    def _untold(self) -> list[str]:
        """Members that never connected, so never learnt the outcome (caller holds ``cond``)."""
        return sorted(set(self.members) - self.told - self.gone - self.done_members)

    def reported_failures(
        self, wait: float = 0.0, enough: Callable[[list[Failure]], bool] | None = None
    ) -> list[Failure]:
        """Rank failures reported to this host, waiting up to ``wait`` s for ``enough``."""
        deadline = time.monotonic() + wait
        with self.cond:
            while enough is not None and not enough(list(self.rank_failures)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.rank_failures)


# -- opening a session, reporting a rank's failure ----------------------------------------------


def _failed(host: str, status: int) -> Failure:
    return Failure(cause=f"exit status {status}", exit_status=status, host=host)


def join(env: Environment, stop: Stop | None, secrets: Masker | Sequence[str]) -> Session | None:
    """Open this host's end of the channel; ``None`` unless a multi-host torchrun/MPI job.

    The caller (``train``) owns the session: it hands it to what needs it and closes it.
    """
    from smtk.launch.select import launcher_for

    hosts = list(env.distribution_hosts)
    if len(hosts) <= 1 or env.current_host not in hosts or launcher_for(env) not in DISTRIBUTED:
        return None
    return Session(env, stop, secrets, hosts)


def announce_failure(failure: Failure, settings: Settings) -> None:
    """Send a rank's failure to every host of the job (best effort, a second at most each)."""
    line = _encode({"failure": failure.to_json()})
    for host in settings.job_hosts:
        with (
            contextlib.suppress(OSError, ConfigError),
            socket.create_connection(
                (cluster.resolve(host, settings), settings.status_port), timeout=1.0
            ) as conn,
        ):
            conn.sendall(line)
