"""Host readiness for distributed jobs: who must be reachable before launching, and how.

Before a plan with more than one host runs, :func:`wait_for_peers` marks this host
ready on the job's status channel (:mod:`smtk.peers`: it has fetched its code,
installed its requirements and built its plan) and waits for the peers it needs::

    torchrun, master   <── every member's "ready" on the channel; their names resolve
    torchrun, members  ──> the master's "ready" (its train passed its own preparation)
    MPI, master        <── every worker's "ready" (its sshd is up); its sshd accepts
    MPI, workers       ──> (nothing here: smtk.launch.worker waits for the master)

Probes (name resolution, then a TCP connect) run each in its own thread, retried with
exponential backoff under one deadline. Progress is logged per host (ready, not ready
and why, time left); on timeout :class:`~smtk.errors.ClusterError` (exit status 4)
names every host that never became ready and what failed (DNS, connect, still
preparing). A host that failed meanwhile ends the wait at once, naming it. There are
no fixed sleeps: a peer that is already up costs one connect.

Host names resolve through the system resolver unless ``SMTK_HOST_ADDRESSES``
(``algo-1=127.0.0.2,algo-2=127.0.0.3``) maps them; the mapping is honoured here and
by the launch plans (torchrun's master address, mpirun's host list, through
:meth:`~smtk.settings.Settings.address_of`), which lets ``smtk local`` run several
hosts on one machine without touching ``/etc/hosts``. Every wait takes the job's stop.

::

    from smtk import cluster
    cluster.wait_for_peers(env, plan, session, stop)   # raises ClusterError naming the laggards
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtk.environment import Environment
from smtk.errors import ClusterError
from smtk.launch.plan import LaunchPlan
from smtk.settings import Settings
from smtk.stop import Stop, Stopped

if TYPE_CHECKING:
    from smtk.peers import Session

logger = logging.getLogger("smtk")

#: The port sshd listens on unless ``SMTK_SSH_PORT`` says otherwise.
DEFAULT_SSH_PORT = 22
#: Backoff between attempts of one host: first delay, factor, cap (seconds).
BACKOFF = (0.05, 2.0, 1.0)
#: Seconds a single connect attempt may take.
CONNECT_TIMEOUT = 2.0
#: Seconds between two progress lines while waiting.
PROGRESS_INTERVAL = 10.0


# -- probing one host -------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A host to wait for, and the port that tells it is ready (``None``: DNS only)."""

    host: str
    port: int | None
    #: What listens on ``port``, for messages (``"rendezvous"``, ``"sshd"``, ...).
    service: str = ""


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


def watch(
    peer: Peer,
    settings: Settings,
    deadline: float,
    state: State,
    changed: threading.Condition,
    stop: threading.Event,
) -> None:
    """Probe ``peer`` with backoff until it is ready, ``stop`` is set or ``deadline`` passes.

    Every attempt updates ``state`` and wakes ``changed``'s waiters.
    """
    delay, factor, cap = BACKOFF
    while not stop.is_set():
        left = deadline - time.monotonic()
        problem = probe(peer, settings, timeout=max(0.1, min(CONNECT_TIMEOUT, left)))
        with changed:
            state.attempts += 1
            if problem is None:
                state.ready = True
                changed.notify_all()
                return
            state.problem = problem
        if stop.wait(min(delay, max(0.0, deadline - time.monotonic()))) or time.monotonic() >= deadline:
            return
        delay = min(delay * factor, cap)


def wait_for(
    peers: list[Peer], settings: Settings, timeout: float, *, who: str = "", stop: Stop | None = None
) -> None:
    """Wait until every peer is ready, or raise :class:`ClusterError` after ``timeout``
    (:class:`~smtk.stop.Stopped` at once when ``stop`` is requested)."""
    if not peers:
        return
    deadline = time.monotonic() + timeout
    states = {peer.host: State() for peer in peers}
    changed = threading.Condition()
    halt = threading.Event()

    def wake(_signum: int) -> None:
        with changed:
            changed.notify_all()

    unhook = stop.on_stop(wake) if stop is not None else None
    for peer in peers:
        threading.Thread(
            target=watch,
            args=(peer, settings, deadline, states[peer.host], changed, halt),
            name=f"smtk-ready-{peer.host}",
            daemon=True,
        ).start()
    started = time.monotonic()
    next_report = started + PROGRESS_INTERVAL
    prefix = f"{who}: " if who else ""
    try:
        with changed:
            while True:
                pending = [h for h, s in states.items() if not s.ready]
                if stop is not None and stop.requested:
                    raise Stopped(stop.received[0], f"waiting for the other hosts ({', '.join(pending)})")
                now = time.monotonic()
                if not pending:
                    logger.info("%sall %d peers ready after %.1f s", prefix, len(peers), now - started)
                    return
                if now >= deadline:
                    break
                if now >= next_report:
                    next_report = now + PROGRESS_INTERVAL
                    logger.info("%s%s", prefix, _progress(states, deadline - now))
                changed.wait(min(deadline, next_report) - now)
    finally:
        halt.set()
        if unhook is not None:
            unhook()
    missing = {h: f"{s.problem}, {s.attempts} attempts" for h, s in states.items() if not s.ready}
    raise not_ready_error(missing, len(peers), timeout)


def not_ready_error(missing: Mapping[str, str], total: int, timeout: float) -> ClusterError:
    """The readiness timeout: every host that never became ready and why."""
    details = "; ".join(f"{host} ({problem})" for host, problem in missing.items())
    return ClusterError(
        f"{len(missing)} of {total} peer hosts never became ready within {timeout:g} s: {details}",
        hint="check that every host of the job started; SMTK_READY_TIMEOUT sets the deadline",
    )


def progress(ready: list[str], waiting: Mapping[str, str], left: float) -> str:
    """One progress line: who is ready, who is not and why, how long is left."""
    pending = "; ".join(f"{h} ({problem})" for h, problem in sorted(waiting.items()))
    return f"waiting for peers, {left:.0f} s left: ready [{', '.join(sorted(ready))}]; not ready [{pending}]"


def _progress(states: Mapping[str, State], left: float) -> str:
    ready = [h for h, s in states.items() if s.ready]
    return progress(ready, {h: s.problem for h, s in states.items() if not s.ready}, left)


def bind_address(env: Environment) -> str:
    """Where this host's listeners bind: its mapped address, else every interface."""
    return env.settings.host_addresses.get(env.current_host, "0.0.0.0")


# -- what each plan needs ---------------------------------------------------------------------


def peers_for(env: Environment, plan: LaunchPlan) -> list[Peer]:
    """What this host waits for before running ``plan`` (see the module docstring).

    On the master these are probed besides every member's "ready" on the status
    channel; a torchrun member's one peer is the master's status port, where its
    :mod:`smtk.peers` connection waits for the master's "ready".
    """
    others = [h for h in plan.hosts if h != env.current_host]
    if not others or plan.kind in ("process", "function", "mpi-worker"):
        return []
    settings = env.settings
    master = env.master_hostname
    if plan.kind == "mpi":
        return [Peer(h, settings.ssh_port, "sshd") for h in others]
    if env.current_host == master:
        # Members connect to us: what we check ourselves is that their names resolve.
        return [Peer(h, None, "train ready") for h in others]
    return [Peer(master, settings.status_port, "smtk status")]


def wait_for_peers(env: Environment, plan: LaunchPlan, session: Session | None, stop: Stop) -> None:
    """Block until the peers ``plan`` needs are ready; :class:`ClusterError` on timeout
    or as soon as any host of the job has failed (naming it), :class:`Stopped` on a stop."""
    if len(plan.hosts) <= 1 or plan.kind not in ("torchrun", "mpi"):
        return
    timeout = env.settings.ready_timeout
    if session is None:  # not a multi-host distributed job after all: probes only
        wait_for(peers_for(env, plan), env.settings, timeout, who=env.current_host, stop=stop)
        return
    probes = peers_for(env, plan)
    logger.info(
        "%s: waiting up to %.0f s for %s",
        env.current_host,
        timeout,
        ", ".join(f"{p.host}:{p.port} ({p.service})" if p.port else f"{p.host} ({p.service})" for p in probes)
        or "nobody",
    )
    session.mark_ready()
    session.wait_ready(probes if session.is_master else [], timeout)
