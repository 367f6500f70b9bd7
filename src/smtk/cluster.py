"""Host readiness for distributed jobs: who must be reachable before launching, and how.

Before a plan with more than one host runs, :func:`wait_for_peers` checks every peer
this host needs, each in its own thread: name resolution first, then a TCP connect
to the port that matters, retried with exponential backoff under one deadline::

    torchrun, master   ──> every other host's presence port (their `train` is up)
    torchrun, others   ──> master's rendezvous port (its torchrun store is up)
    MPI, master        ──> every other host's sshd
    MPI, others        ──> (nothing here: smtk.launch.worker waits for the master)

Each waiting host first opens its own *presence* port (``SMTK_STATUS_PORT``), which is
what the master's connect tests. Progress is logged per host (ready, not ready and
why, time left); on timeout :class:`~smtk.errors.ClusterError` (exit status 4) names
every host that never became ready and what failed (DNS or connect). There are no
fixed sleeps: a peer that is already up costs one connect.

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

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from smtk.environment import Environment
from smtk.errors import ClusterError, ConfigError
from smtk.launch.plan import LaunchPlan

logger = logging.getLogger("smtk")

#: Seconds to wait for peers unless ``SMTK_READY_TIMEOUT`` says otherwise: containers of
#: one job can start minutes apart (image pulls), so this is generous.
DEFAULT_READY_TIMEOUT = 600.0
#: Port of the torchrun rendezvous store on the master (the reference's MASTER_PORT).
DEFAULT_MASTER_PORT = 7777
#: Port each waiting ``train`` listens on so the master can tell it is up (and on which
#: MPI workers receive the master's outcome).
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
            raise ConfigError("SMTK_HOST_ADDRESSES", None, "comma-separated host=address pairs", repr(text))
        result[host.strip()] = address.strip()
    return result


def address_of(host: str, environ: Mapping[str, str]) -> str:
    """The address to use for ``host``: its mapping, else the name itself."""
    return host_addresses(environ).get(host, host)


def _number(environ: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(name, None, "a number", repr(text)) from None
    if value < minimum:
        raise ConfigError(name, None, f"a number >= {minimum:g}", repr(text))
    return value


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    value = _number(environ, name, default, minimum=1)
    if value != int(value) or value > 65535:
        raise ConfigError(name, None, "a TCP port (1-65535)", repr(environ.get(name)))
    return int(value)


def ready_timeout(environ: Mapping[str, str]) -> float:
    """``SMTK_READY_TIMEOUT``: seconds to wait for peers (default 600)."""
    return _number(environ, "SMTK_READY_TIMEOUT", DEFAULT_READY_TIMEOUT)


def master_port(environ: Mapping[str, str]) -> int:
    """``SMTK_MASTER_PORT``: torchrun's rendezvous port on the master (default 7777)."""
    return _port(environ, "SMTK_MASTER_PORT", DEFAULT_MASTER_PORT)


def status_port(environ: Mapping[str, str]) -> int:
    """``SMTK_STATUS_PORT``: each host's presence/outcome port (default 7778)."""
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
class _State:
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


def probe(peer: Peer, environ: Mapping[str, str], timeout: float = CONNECT_TIMEOUT) -> str | None:
    """One attempt: ``None`` when ``peer`` is ready, else what failed."""
    try:
        address = resolve(peer.host, environ)
    except OSError as exc:
        return f"DNS: {exc.strerror or exc}"
    if peer.port is None:
        return None
    try:
        with socket.create_connection((address, peer.port), timeout=timeout):
            return None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        what = f" ({peer.service})" if peer.service else ""
        return f"connect {address}:{peer.port}{what}: {reason}"


def wait_for(peers: list[Peer], environ: Mapping[str, str], timeout: float, *, who: str = "") -> None:
    """Wait until every peer is ready, or raise :class:`ClusterError` after ``timeout``."""
    if not peers:
        return
    deadline = time.monotonic() + timeout
    states = {peer.host: _State() for peer in peers}
    changed = threading.Condition()
    stop = threading.Event()

    def watch(peer: Peer) -> None:
        delay, factor, cap = BACKOFF
        state = states[peer.host]
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
            if stop.wait(min(delay, max(0.0, deadline - time.monotonic()))):
                return
            delay = min(delay * factor, cap)

    threads = [
        threading.Thread(target=watch, args=(p,), name=f"smtk-ready-{p.host}", daemon=True) for p in peers
    ]
    for thread in threads:
        thread.start()
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
    missing = {h: s for h, s in states.items() if not s.ready}
    details = "; ".join(f"{h} ({s.problem}, {s.attempts} attempts)" for h, s in missing.items())
    raise ClusterError(
        f"{len(missing)} of {len(peers)} peer hosts never became ready within {timeout:g} s: {details}",
        hint="check that every host of the job started; SMTK_READY_TIMEOUT sets the deadline",
    )


def _progress(states: Mapping[str, _State], left: float) -> str:
    ready = sorted(h for h, s in states.items() if s.ready)
    waiting = [f"{h} ({s.problem})" for h, s in sorted(states.items()) if not s.ready]
    return (
        f"waiting for peers, {left:.0f} s left: ready [{', '.join(ready)}]; not ready [{'; '.join(waiting)}]"
    )


# -- the presence port ------------------------------------------------------------------------


class _Presence:
    """This host's listener on ``SMTK_STATUS_PORT``.

    A completed TCP handshake is the whole "this host's ``train`` is up" message that
    readiness probes look for. Rank wrappers also send one JSON line here when a rank
    fails (``{"failure": {...}}``), so every host learns which rank failed first.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.failures: list[dict[str, object]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._accept, name="smtk-presence", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5.0)
                with conn.makefile("rb") as stream:
                    line = stream.readline(1 << 16)
                message = json.loads(line) if line.strip() else {}
            except (OSError, ValueError):
                return
        failure = message.get("failure") if isinstance(message, dict) else None
        if isinstance(failure, dict):
            with self.changed:
                self.failures.append(failure)
                self.changed.notify_all()


_presence: _Presence | None = None
_presence_lock = threading.Lock()


def bind_address(env: Environment) -> str:
    """Where this host's listeners bind: its mapped address, else every interface."""
    return host_addresses(env.environ).get(env.current_host, "0.0.0.0")


def open_presence(env: Environment) -> None:
    """Listen on ``SMTK_STATUS_PORT`` for the rest of this process (idempotent)."""
    global _presence  # noqa: PLW0603 (one listener per process, by design)
    with _presence_lock:
        if _presence is not None:
            return
        port = status_port(env.environ)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_address(env), port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ClusterError(
                f"{env.current_host}: cannot listen on the status port {port}: {exc.strerror or exc}",
                hint="another process uses it; choose another with SMTK_STATUS_PORT (the same on every host)",
            ) from exc
        _presence = _Presence(sock)


def close_presence() -> None:
    """Stop listening on the presence port (tests; a new job in the same process)."""
    global _presence  # noqa: PLW0603 (one listener per process, by design)
    with _presence_lock:
        if _presence is not None:
            with contextlib.suppress(OSError):
                _presence.sock.close()
            _presence = None


def reported_failures(
    wait: float = 0.0, enough: Callable[[list[dict[str, object]]], bool] | None = None
) -> list[dict[str, object]]:
    """Rank failures other hosts' (and our) rank wrappers reported to this host.

    Waits up to ``wait`` seconds until ``enough(failures)`` holds (reports from other
    hosts may still be on their way when the local launcher has already exited).
    """
    presence = _presence
    if presence is None:
        return []
    deadline = time.monotonic() + wait
    with presence.changed:
        while enough is not None and not enough(list(presence.failures)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            presence.changed.wait(left)
        return list(presence.failures)


def announce_failure(failure: Mapping[str, object], environ: Mapping[str, str]) -> None:
    """Send a rank's failure to every host of the job (best effort, a second at most each)."""
    hosts = [h for h in environ.get("SMTK_JOB_HOSTS", "").split(",") if h]
    if not hosts:
        return
    try:
        port = status_port(environ)
        line = (json.dumps({"failure": dict(failure)}) + "\n").encode()
    except (ConfigError, TypeError, ValueError):
        return
    for host in hosts:
        with (
            contextlib.suppress(OSError, ConfigError),
            socket.create_connection((resolve(host, environ), port), timeout=1.0) as conn,
        ):
            conn.sendall(line)


# -- what each plan needs ---------------------------------------------------------------------


def peers_for(env: Environment, plan: LaunchPlan) -> list[Peer]:
    """The peers this host waits for before running ``plan`` (see the module docstring)."""
    others = [h for h in plan.hosts if h != env.current_host]
    if not others or plan.kind in ("process", "function", "mpi-worker"):
        return []
    environ = env.environ
    master = env.master_hostname
    if plan.kind == "mpi":
        return [Peer(h, ssh_port(environ), "sshd") for h in others]
    if env.current_host == master:
        return [Peer(h, status_port(environ), "smtk status") for h in others]
    # The rendezvous port opens only once the master's torchrun runs: a worker that
    # passes this check knows the store is reachable, and one whose master gave up
    # fails here, naming it, instead of inside torchrun's store client.
    return [Peer(master, master_port(environ), "torchrun rendezvous")]


def wait_for_peers(env: Environment, plan: LaunchPlan) -> None:
    """Block until the peers ``plan`` needs are ready; :class:`ClusterError` on timeout."""
    peers = peers_for(env, plan)
    if len(plan.hosts) > 1 and plan.kind == "torchrun":
        open_presence(env)
    if len(plan.hosts) > 1 and plan.kind == "mpi":
        # Listen before waiting, so workers learn even a readiness failure of ours.
        from smtk.launch.worker import start_outcome_server

        start_outcome_server(env, plan)
    if not peers:
        return
    timeout = ready_timeout(env.environ)
    logger.info(
        "%s: waiting up to %.0f s for %s",
        env.current_host,
        timeout,
        ", ".join(f"{p.host}:{p.port} ({p.service})" if p.port else p.host for p in peers),
    )
    wait_for(peers, env.environ, timeout, who=env.current_host)
