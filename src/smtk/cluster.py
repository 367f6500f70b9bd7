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
by the launch plans (torchrun's master address, mpirun's host list), which lets
``smtk local`` run several hosts on one machine without touching ``/etc/hosts``.

::

    from smtk import cluster
    cluster.wait_for_peers(env, plan)       # raises ClusterError naming the laggards
    cluster.address_of("algo-2", environ)   # "127.0.0.3" when mapped, else "algo-2"
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from smtk import settings
from smtk.environment import Environment
from smtk.errors import ClusterError, ConfigError
from smtk.launch.plan import LaunchPlan

logger = logging.getLogger("smtk")

#: Seconds to wait for peers unless ``SMTK_READY_TIMEOUT`` says otherwise: containers of
#: one job can start minutes apart (image pulls), so this is generous.
DEFAULT_READY_TIMEOUT = 600.0
#: Port of the torchrun rendezvous store on the master (the reference's MASTER_PORT).
DEFAULT_MASTER_PORT = 7777
#: Port of each host's ``train`` for the job's status channel (smtk.peers).
DEFAULT_STATUS_PORT = 7778
DEFAULT_SSH_PORT = 22
#: Backoff between attempts of one host: first delay, factor, cap (seconds).
BACKOFF = (0.05, 2.0, 1.0)
#: Seconds a single connect attempt may take.
CONNECT_TIMEOUT = 2.0
#: Seconds between two progress lines while waiting.
PROGRESS_INTERVAL = 10.0


# -- settings ------------------------------------------------------------------------------


def host_addresses(environ: Mapping[str, str]) -> dict[str, str]:
    """``SMTK_HOST_ADDRESSES`` as a mapping host -> address (empty when unset)."""
    text = environ.get("SMTK_HOST_ADDRESSES", "").strip()
    result: dict[str, str] = {}
    if not text:
        return result
    for item in text.split(","):
        host, sep, address = item.strip().partition("=")
        if not sep or not host.strip() or not address.strip():
            raise ConfigError("SMTK_HOST_ADDRESSES", None, "comma-separated host=address pairs", text)
        result[host.strip()] = address.strip()
    return result


def address_of(host: str, environ: Mapping[str, str]) -> str:
    """The address to use for ``host``: its mapping, else the name itself."""
    return host_addresses(environ).get(host, host)


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    value = settings.number(environ, name, default, minimum=1)
    if value != int(value) or value > 65535:
        raise ConfigError(name, None, "a TCP port (1-65535)", environ.get(name))
    return int(value)


def ready_timeout(environ: Mapping[str, str]) -> float:
    """``SMTK_READY_TIMEOUT``: seconds to wait for peers (default 600)."""
    return settings.number(environ, "SMTK_READY_TIMEOUT", DEFAULT_READY_TIMEOUT)


def master_port(environ: Mapping[str, str]) -> int:
    """``SMTK_MASTER_PORT``: torchrun's rendezvous port on the master (default 7777)."""
    return _port(environ, "SMTK_MASTER_PORT", DEFAULT_MASTER_PORT)


def status_port(environ: Mapping[str, str]) -> int:
    """``SMTK_STATUS_PORT``: each host's status channel port (default 7778)."""
    return _port(environ, "SMTK_STATUS_PORT", DEFAULT_STATUS_PORT)


def ssh_port(environ: Mapping[str, str]) -> int:
    """``SMTK_SSH_PORT``: the port sshd listens on for MPI (default 22)."""
    return _port(environ, "SMTK_SSH_PORT", DEFAULT_SSH_PORT)


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


def resolve(host: str, environ: Mapping[str, str]) -> str:
    """One address of ``host`` (mapped, else from the resolver); raises :class:`OSError`."""
    mapped = host_addresses(environ).get(host)
    if mapped is not None:
        return mapped
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


def connect(
    peer: Peer, environ: Mapping[str, str], timeout: float = CONNECT_TIMEOUT
) -> tuple[socket.socket | None, str | None]:
    """One attempt to reach ``peer``: (the connected socket, ``None``) or (``None``, what failed)."""
    try:
        address = resolve(peer.host, environ)
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


def probe(peer: Peer, environ: Mapping[str, str], timeout: float = CONNECT_TIMEOUT) -> str | None:
    """One attempt: ``None`` when ``peer`` is ready, else what failed."""
    sock, problem = connect(peer, environ, timeout)
    if sock is not None:
        sock.close()
    return problem


def watch(
    peer: Peer,
    environ: Mapping[str, str],
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
        problem = probe(peer, environ, timeout=max(0.1, min(CONNECT_TIMEOUT, left)))
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


def wait_for(peers: list[Peer], environ: Mapping[str, str], timeout: float, *, who: str = "") -> None:
    """Wait until every peer is ready, or raise :class:`ClusterError` after ``timeout``."""
    if not peers:
        return
    deadline = time.monotonic() + timeout
    states = {peer.host: State() for peer in peers}
    changed = threading.Condition()
    stop = threading.Event()
    for peer in peers:
        threading.Thread(
            target=watch,
            args=(peer, environ, deadline, states[peer.host], changed, stop),
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
        stop.set()
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
    return host_addresses(env.environ).get(env.current_host, "0.0.0.0")


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
    environ = env.environ
    master = env.master_hostname
    if plan.kind == "mpi":
        return [Peer(h, ssh_port(environ), "sshd") for h in others]
    if env.current_host == master:
        # Members connect to us: what we check ourselves is that their names resolve.
        return [Peer(h, None, "train ready") for h in others]
    return [Peer(master, status_port(environ), "smtk status")]


def wait_for_peers(env: Environment, plan: LaunchPlan) -> None:
    """Block until the peers ``plan`` needs are ready; :class:`ClusterError` on timeout
    or as soon as any host of the job has failed (naming it)."""
    if len(plan.hosts) <= 1 or plan.kind not in ("torchrun", "mpi"):
        return
    from smtk import peers

    session = peers.current() or peers.join(env, None, ())
    if session is None:  # not a multi-host distributed job after all: nothing to wait for
        wait_for(peers_for(env, plan), env.environ, ready_timeout(env.environ), who=env.current_host)
        return
    timeout = ready_timeout(env.environ)
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
