"""Is a host reachable? Name resolution, then a TCP connect, retried with backoff.

A :class:`Peer` is a host and the port that tells it is ready (``None``: its name
resolving is enough). :class:`Prober` keeps probing a set of peers until each is ready,
with exponential backoff per peer (20 ms, x1.5, up to 0.25 s), from a bounded pool of
threads (at most :data:`MAX_PROBE_THREADS`, whatever the number of hosts: a 1,000-host
job does not start 1,000 threads), and records for each one what failed last
(``DNS: ...``, ``connect 10.0.0.3:22 (sshd): Connection refused``), so that a timeout
names every host that never became ready and why.

Host names resolve through the system resolver unless ``SMTK_HOST_ADDRESSES``
(``algo-1=127.0.0.2,algo-2=127.0.0.3``) maps them; the mapping is honoured here and by the
launch plans (:meth:`~smtk.settings.Settings.address_of`), which lets ``smtk local`` run
several hosts on one machine without touching ``/etc/hosts``.

::

    prober = Prober(peers, settings, changed=condition)   # probes until each is ready
    prober.wait(timeout, stop=stop)                       # ClusterError naming the laggards
"""

from __future__ import annotations

import heapq
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from smtk.environment import Environment
from smtk.errors import ClusterError
from smtk.settings import Settings
from smtk.stop import Stop, Stopped

logger = logging.getLogger("smtk")

#: Backoff between attempts of one host: first delay, factor, cap (seconds). The cap is
#: short because the wait is on every job's critical path: hosts start together, and a
#: peer that comes up just after an attempt costs up to one cap of idle time (a cap of
#: 1 s cost 8 namespace hosts about 1 s of start-up). A refused connect costs the peer
#: one RST, so even 1,000 hosts retrying 4 times a second are no load.
BACKOFF = (0.02, 1.5, 0.25)
#: Seconds a single connect attempt may take.
CONNECT_TIMEOUT = 2.0
#: Seconds between two progress lines while waiting.
PROGRESS_INTERVAL = 10.0
#: Probes that run at the same time, at most.
MAX_PROBE_THREADS = 32
#: The port sshd listens on unless ``SMTK_SSH_PORT`` says otherwise.
DEFAULT_SSH_PORT = 22


@dataclass(frozen=True)
class Peer:
    """A host to wait for, and the port that tells it is ready (``None``: DNS only)."""

    host: str
    port: int | None
    #: What listens on ``port``, for messages (``"rendezvous"``, ``"sshd"``, ...).
    service: str = ""

    def describe(self) -> str:
        return f"{self.host}:{self.port} ({self.service})" if self.port else f"{self.host} ({self.service})"


@dataclass
class State:
    ready: bool = False
    attempts: int = 0
    #: Why the last attempt failed: ``"DNS: ..."`` or ``"connect host:port: ..."``.
    problem: str = "not tried yet"


def resolve(host: str, settings: Settings) -> str:
    """One address of ``host`` (mapped, else from the resolver); raises :class:`OSError`."""
    mapped = settings.host_addresses.get(host)
    if mapped is not None:
        return mapped
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


def connect(
    peer: Peer, settings: Settings, timeout: float = CONNECT_TIMEOUT
) -> tuple[socket.socket | None, str | None]:
    """One attempt to reach ``peer``: (the connected socket, ``None``) or (``None``, what failed)."""
    try:
        address = resolve(peer.host, settings)
    except OSError as exc:
        return None, f"DNS: {exc.strerror or exc}"
    if peer.port is None:
        return None, None
    try:
        return socket.create_connection((address, peer.port), timeout=timeout), None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        what = f" ({peer.service})" if peer.service else ""
        return None, f"connect {address}:{peer.port}{what}: {reason}"


def probe(peer: Peer, settings: Settings, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """One attempt: ``None`` when ``peer`` is ready, else what failed."""
    sock, problem = connect(peer, settings, timeout)
    if sock is not None:
        sock.close()
    return problem


def bind_address(env: Environment) -> str:
    """Where this host's listeners bind: its mapped address, else every interface."""
    return env.settings.host_addresses.get(env.current_host, "0.0.0.0")


class Prober:
    """Probes ``peers`` until each is ready (or :meth:`halt`), from a bounded thread pool.

    Every attempt updates :attr:`states` under ``changed`` and wakes its waiters, so a
    caller can wait on the probes and on other conditions at once (the status channel).
    """

    def __init__(
        self, peers: Sequence[Peer], settings: Settings, changed: threading.Condition | None = None
    ) -> None:
        self.peers = list(peers)
        self.settings = settings
        self.changed = changed or threading.Condition()
        self.states = {peer.host: State() for peer in self.peers}
        self._halted = threading.Event()
        # (when, sequence, peer, delay): the next attempt of each pending peer
        self._due: list[tuple[float, int, Peer, float]] = []
        now = time.monotonic()
        for index, peer in enumerate(self.peers):
            self._due.append((now, index, peer, BACKOFF[0]))
        heapq.heapify(self._due)
        self._due_lock = threading.Condition()
        self._sequence = len(self.peers)
        for index in range(min(MAX_PROBE_THREADS, len(self.peers))):
            threading.Thread(target=self._work, name=f"smtk-probe-{index}", daemon=True).start()

    def halt(self) -> None:
        """Stop probing (the threads end after their current attempt)."""
        self._halted.set()
        with self._due_lock:
            self._due_lock.notify_all()

    def pending(self) -> dict[str, str]:
        """Host -> why it is not ready yet (caller holds ``changed``)."""
        return {h: f"{s.problem}, {s.attempts} attempts" for h, s in self.states.items() if not s.ready}

    def _take(self) -> tuple[Peer, float] | None:
        with self._due_lock:
            while not self._halted.is_set():
                if not self._due:
                    return None
                when, _, peer, delay = self._due[0]
                wait = when - time.monotonic()
                if wait <= 0:
                    heapq.heappop(self._due)
                    return peer, delay
                self._due_lock.wait(wait)
            return None

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            peer, delay = taken
            problem = probe(peer, self.settings)
            with self.changed:
                state = self.states[peer.host]
                state.attempts += 1
                if problem is None:
                    state.ready = True
                else:
                    state.problem = problem
                self.changed.notify_all()
            if problem is not None:
                factor, cap = BACKOFF[1], BACKOFF[2]
                with self._due_lock:
                    self._sequence += 1
                    heapq.heappush(
                        self._due, (time.monotonic() + delay, self._sequence, peer, min(delay * factor, cap))
                    )
                    self._due_lock.notify()

    def wait(self, timeout: float, *, who: str = "", stop: Stop | None = None) -> None:
        """Block until every peer is ready; :class:`ClusterError` after ``timeout``,
        :class:`~smtk.stop.Stopped` at once on a stop."""
        if not self.peers:
            return
        started = time.monotonic()
        deadline = started + timeout
        next_report = started + PROGRESS_INTERVAL
        prefix = f"{who}: " if who else ""

        def wake(_signum: int) -> None:
            with self.changed:
                self.changed.notify_all()

        unhook = stop.on_stop(wake) if stop is not None else None
        try:
            with self.changed:
                while True:
                    waiting = self.pending()
                    if stop is not None and stop.requested:
                        raise Stopped(stop.received[0], f"waiting for the other hosts ({', '.join(waiting)})")
                    now = time.monotonic()
                    if not waiting:
                        logger.info(
                            "%sall %d peers ready after %.1f s", prefix, len(self.peers), now - started
                        )
                        return
                    if now >= deadline:
                        break
                    if now >= next_report:
                        next_report = now + PROGRESS_INTERVAL
                        ready = [h for h, s in self.states.items() if s.ready]
                        logger.info("%s%s", prefix, progress(ready, waiting, deadline - now))
                    self.changed.wait(min(deadline, next_report) - now)
        finally:
            self.halt()
            if unhook is not None:
                unhook()
        raise not_ready_error(waiting, len(self.peers), timeout)


def wait_for(
    peers: Sequence[Peer], settings: Settings, timeout: float, *, who: str = "", stop: Stop | None = None
) -> None:
    """Wait until every peer is ready, or raise :class:`ClusterError` after ``timeout``
    (:class:`~smtk.stop.Stopped` at once when ``stop`` is requested)."""
    Prober(peers, settings).wait(timeout, who=who, stop=stop)


def not_ready_error(missing: Mapping[str, str], total: int, timeout: float) -> ClusterError:
    """The readiness timeout: every host that never became ready and why."""
    details = "; ".join(f"{host} ({problem})" for host, problem in missing.items())
    return ClusterError(
        f"{len(missing)} of {total} peer hosts never became ready within {timeout:g} s: {details}",
        hint="check that every host of the job started; SMTK_READY_TIMEOUT sets the deadline",
    )


def progress(ready: Sequence[str], waiting: Mapping[str, str], left: float, limit: int = 20) -> str:
    """One progress line: who is ready, who is not and why, how long is left (long lists cut)."""
    pending = sorted(waiting.items())
    shown = "; ".join(f"{h} ({problem})" for h, problem in pending[:limit])
    if len(pending) > limit:
        shown += f"; ... and {len(pending) - limit} more"
    done = sorted(ready)
    ready_text = ", ".join(done[:limit]) + (f", ... ({len(done)} in all)" if len(done) > limit else "")
    return f"waiting for peers, {left:.0f} s left: ready [{ready_text}]; not ready [{shown}]"
