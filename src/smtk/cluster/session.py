"""The status channel's session: readiness, the first failure stopping every host, outcomes.

``train`` opens this host's session first thing (:func:`join`, before fetching code) and
owns it until the end. Every host listens on ``SMTK_STATUS_PORT`` (its :class:`Hub`), and
every host but the master keeps one connection to the master (its :class:`MasterLink`);
the master is the hub everything passes through::

    member train                                    master train
    ────────────                                    ────────────
    join: listen, connect (backoff) ──hello───────> join: listen, accept
    prepare (code, requirements, plan)              prepare (code, requirements, plan)
    mark_ready() ─────────────────────ready───────> every member ready (and resolvable)?
                 <────────────────────ready──────── mark_ready(): it will launch
    launch torchrun at once                         launch torchrun / mpirun
    a rank fails: its wrapper ──report──> this host's train ──report──> the master ──report──> all
    fails or stops ──done {status, failure}───────> first failure: stop own run, relay
                 <───────failure {failure}───────── (to every other member)
    settle(): done {0} ───────────────────────────> remembered (EOF after it is fine)
                 <───────done {status, failure}──── settle(); MPI workers exit with it

- The first failure anywhere (preparation, readiness, the job, a stop, a lost
  connection) reaches every host within a round trip. Each host then stops its own
  run (SIGTERM through the job's :class:`~smtk.stop.Stop`, SIGKILL after
  ``SMTK_PEER_ABORT_GRACE`` seconds) and reports the job's root cause: among every
  failure it heard of (hosts' outcomes, ranks' reports, its own), a root cause before
  fallout, then the earliest (:func:`~smtk.failure.root_cause`).
- A rank's report is a candidate for the root cause, never a reason to stop: torchrun
  may restart the rank (``smtk_max_restarts``).
- A connection that ends without a ``done`` is a failure of that peer: its ``train``
  died. TCP keepalive notices a vanished host in about 15 s.
- The master keeps its outcome for members that connect late, up to
  ``SMTK_OUTCOME_LINGER`` seconds (:meth:`Session.close`): a member whose master gave up
  before it came up learns why instead of waiting out its readiness deadline.
- Every wait here takes the job's stop: a SIGTERM ends it at once with
  :class:`~smtk.stop.Stopped`.

::

    session = join(env, stop, masker)   # None unless a multi-host torchrun/MPI job
    session.mark_ready()                # via readiness.wait_for_peers, after preparing
    session.wait_ready(probes, timeout)
    outcome = session.settle(outcome)   # after the run: tell the others, name the root cause
    session.close()                     # after the report: linger for late members
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from smtk import files
from smtk.cluster import probe, wire
from smtk.cluster.hub import Hub
from smtk.cluster.link import MasterLink
from smtk.environment import Environment
from smtk.errors import ClusterError
from smtk.failure import Failure, Outcome, root_cause
from smtk.launch import tensorflow
from smtk.launch.select import launcher_for
from smtk.redact import Masker
from smtk.stop import Stop, Stopped

logger = logging.getLogger("smtk")

#: Seconds a host whose own failure looks like fallout waits for a peer's root cause.
ROOT_CAUSE_WAIT = 2.0
#: Rank reports one host keeps (the first ones matter; a flood must not eat memory).
MAX_REPORTS = 1024
#: Rank reports the master passes on to every host, at most.
MAX_RELAYED = 16
#: Launchers whose hosts talk over the channel.
DISTRIBUTED = ("torchrun", "mpi", "mpi-worker")


def join(env: Environment, stop: Stop | None, masker: Masker | Sequence[str]) -> Session | None:
    """Open this host's end of the channel; ``None`` unless a multi-host torchrun, MPI or
    TensorFlow multi-worker job.

    TensorFlow jobs run a plain process per host, but their hosts depend on each other
    (a worker whose peer died waits in its collectives for ever), so a host's failure
    must stop the others as in any distributed job. The caller (``train``) owns the
    session: it hands it to what needs it and closes it.
    """
    hosts = list(env.distribution_hosts)
    if len(hosts) <= 1 or env.current_host not in hosts:
        return None
    if launcher_for(env) not in DISTRIBUTED and tensorflow.mode(env) is None:
        return None
    return Session(env, stop, masker, hosts)


def _failed(host: str, status: int) -> Failure:
    return Failure(cause=f"exit status {status}", exit_status=status, host=host)


class Session:
    """This host's end of the status channel (see the module docstring)."""

    def __init__(
        self, env: Environment, stop: Stop | None, masker: Masker | Sequence[str], hosts: Sequence[str]
    ) -> None:
        self.settings = env.settings
        self.host = env.current_host
        self.master = env.master_hostname
        self.is_master = self.host == self.master
        self.members = [h for h in hosts if h != self.master]
        self.port = env.settings.status_port
        self.grace = env.settings.peer_abort_grace
        self.linger = env.settings.outcome_linger
        self._stop = stop
        self._masker = masker if isinstance(masker, Masker) else Masker(masker)
        self.cond = threading.Condition()
        self.settled = threading.Event()
        self.closed = threading.Event()
        #: Every failure heard of (hosts' outcomes, lost peers, ranks' reports, our own).
        self.failures: list[Failure] = []
        #: The first host failure heard of: it stopped this host (ranks' reports never do).
        self.first: Failure | None = None
        #: Whether this host's run was stopped because of ``first`` (not by its own signal).
        self.stopped_us = False
        #: Whether :meth:`wait_ready` gave up because of ``first``.
        self.raised = False
        #: Failures rank wrappers reported (on this host, or relayed by the master).
        self.reports: list[Failure] = []
        #: Reports the master passed on to every host (see :data:`MAX_RELAYED`).
        self.relayed = 0
        self.ready_sent = False
        # master side
        self.ready_members: set[str] = set()
        self.done_members: set[str] = set()
        self.told: set[str] = set()
        #: Members whose connection ended: nobody left there to tell.
        self.gone: set[str] = set()
        self.final: dict[str, object] | None = None
        # member side
        self.master_ready = False
        self.master_outcome: tuple[int, Failure | None] | None = None
        served = self.members if self.is_master else []
        if served:
            files.ensure_open_files(len(served) + 64)  # one socket per member, and the rest
        self.hub = Hub(self.host, probe.bind_address(env), self.port, served, self)
        self.link = None if self.is_master else MasterLink(self.host, self.master, self.settings, self)
        self._unhook = stop.on_stop(self._wake) if stop is not None else None

    def _wake(self, _signum: int = 0) -> None:
        with self.cond:
            self.cond.notify_all()

    def _redact(self, text: str) -> str:
        return self._masker.mask(text)

    # -- the hub's events (master: members; every host: rank reports) ------------------------------

    def on_member(self, member: str) -> None:
        with self.cond:
            greeting: list[dict[str, object]] = []
            if self.ready_sent:
                greeting.append(wire.ready(self.host))
            if self.first is not None and self.first.host != member:
                greeting.append(wire.failure(self.first))
            final = self.final
            if final is not None:
                greeting.append(wire.done(final))
            self.cond.notify_all()
        delivered = all(self.hub.send(member, message) for message in greeting)
        if final is not None and delivered:
            with self.cond:
                self.told.add(member)
                self.cond.notify_all()

    def on_message(self, member: str, message: dict[str, Any]) -> None:
        if "ready" in message:
            with self.cond:
                self.ready_members.add(member)
                self.cond.notify_all()
        elif "report" in message:
            record = Failure.from_json(message["report"])
            if record is not None:
                self._add_report(record, relay=True)
        else:
            outcome = wire.done_of(message)
            if outcome is not None:
                status, record = outcome
                with self.cond:
                    self.done_members.add(member)
                    self.cond.notify_all()
                if status != 0:
                    self._on_failure(record or _failed(member, status))

    def on_member_lost(self, member: str, reason: str) -> None:
        with self.cond:
            self.gone.add(member)
            finished = member in self.done_members or self.closed.is_set()
            self.cond.notify_all()
        if not finished:
            self._on_failure(
                Failure(
                    cause=f"the train of {member} ended without reporting an outcome ({reason}): "
                    "it died or its host went away",
                    category="peer-lost",
                    host=member,
                    retryable=True,
                )
            )

    def on_report(self, record: Failure) -> None:
        """A rank wrapper on this host reported a failed rank."""
        self._add_report(record, relay=True)

    def _add_report(self, record: Failure, *, relay: bool) -> None:
        with self.cond:
            if len(self.reports) >= MAX_REPORTS:
                return
            self.reports.append(record)
            # The master passes on the first report, then only root-cause candidates, and at
            # most MAX_RELAYED of them: when every rank of a large job fails at once (an NCCL
            # abort), fanning every report out to every host would be quadratic.
            relay_to_all = self.is_master and (
                self.relayed == 0 or (not record.secondary and self.relayed < MAX_RELAYED)
            )
            if relay_to_all:
                self.relayed += 1
            self.cond.notify_all()
        if not relay:
            return
        if relay_to_all:
            self.hub.broadcast(wire.report(record), exclude={record.host} if record.host else ())
        elif not self.is_master and self.link is not None:
            self.link.send(wire.report(record))

    # -- the link's events (members) -----------------------------------------------------------------

    def on_link_changed(self) -> None:
        self._wake()

    def on_master_message(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            with self.cond:
                self.master_ready = True
                self.cond.notify_all()
            return
        if "report" in message:
            record = Failure.from_json(message["report"])
            if record is not None:
                self._add_report(record, relay=False)
            return
        record = Failure.from_json(message.get("failure"))
        if record is not None:
            self._on_failure(record)
            return
        outcome = wire.done_of(message)
        if outcome is not None:
            status, failure = outcome
            with self.cond:
                self.master_outcome = (status, failure)
                self.cond.notify_all()
            if status != 0:
                self._on_failure(failure or _failed(self.master, status))

    def on_master_lost(self, reason: str) -> None:
        with self.cond:
            finished = self.master_outcome is not None or self.closed.is_set()
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

    # -- failures ------------------------------------------------------------------------------------

    def _on_failure(self, failure: Failure) -> None:
        """A host failed: the first one stops this host's run (unless settled); the master relays."""
        stop = self._stop
        with self.cond:
            self.failures.append(failure)
            if self.first is not None:
                self.cond.notify_all()
                return
            self.first = failure
            # A host already stopping (its own stop: the platform's, scancel, a time limit)
            # keeps its grace period: another request would read as "again: kill now".
            stopping = stop is not None and stop.signum is None and not self.settled.is_set()
            if stop is not None and stopping:
                logger.error(
                    "peer %s; stopping this host's run (SIGTERM, SIGKILL after %g s: SMTK_PEER_ABORT_GRACE)",
                    self._redact(failure.describe()),
                    self.grace,
                )
                self.stopped_us = True
                # Requested before anyone sees ``first``: whoever reacts to it finds the stop.
                stop.request(signal.SIGTERM, kill_after=(self.grace, "SMTK_PEER_ABORT_GRACE"))
            self.cond.notify_all()
        if stop is not None and stopping:
            threading.Thread(target=self._escalate, args=(stop,), name="smtk-peer-abort", daemon=True).start()
        if self.is_master:
            self.hub.broadcast(wire.failure(failure), exclude={failure.host} if failure.host else ())

    def _escalate(self, stop: Stop) -> None:
        if self.settled.wait(self.grace):
            return
        logger.error(
            "this host's run has not ended %.0f s after its peer failed (SMTK_PEER_ABORT_GRACE): killing it",
            self.grace,
        )
        stop.request(signal.SIGTERM)  # the second one: the supervisor kills the job at once

    # -- readiness -----------------------------------------------------------------------------------

    def mark_ready(self) -> None:
        """This host has prepared (code, requirements, plan) and will launch."""
        with self.cond:
            self.ready_sent = True
        if self.is_master:
            self.hub.broadcast(wire.ready(self.host))
        elif self.link is not None:
            self.link.send(wire.ready(self.host))

    def wait_ready(self, probes: Sequence[probe.Peer], timeout: float) -> None:
        """Wait until the peers are ready (members: the master; master: every member and
        ``probes``); :class:`ClusterError` on timeout or at once when a host failed,
        :class:`Stopped` at once on a stop."""
        started = time.monotonic()
        deadline = started + timeout
        prober = probe.Prober(probes, self.settings, self.cond)
        expected = self.members if self.is_master else [self.master]
        next_report = started + probe.PROGRESS_INTERVAL
        try:
            with self.cond:
                while True:
                    if self.first is not None:
                        self.raised = True
                        raise ClusterError(
                            f"peer {self._redact(self.first.describe())}",
                            hint="the failure of that host stopped this one; see its log",
                        )
                    waiting = self._not_ready(prober)
                    if self._stop is not None and self._stop.requested:
                        pending = ", ".join(sorted(waiting)[:20]) or "nobody"
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
                        next_report = now + probe.PROGRESS_INTERVAL
                        ready = [h for h in expected if h not in waiting]
                        logger.info("%s: %s", self.host, probe.progress(ready, waiting, deadline - now))
                    self.cond.wait(min(deadline, next_report) - now)
        finally:
            prober.halt()
        raise probe.not_ready_error(waiting, len(expected), timeout)

    def _not_ready(self, prober: probe.Prober) -> dict[str, str]:
        """Host -> why it is not ready yet (caller holds ``cond``)."""
        waiting: dict[str, str] = {}
        link = self.link
        if link is not None:
            if not link.connected:
                waiting[self.master] = f"{link.problem}, {link.attempts} attempts"
            elif not self.master_ready:
                waiting[self.master] = "connected; its train is still preparing"
            return waiting
        probing = prober.pending()
        connected = self.hub.connected()
        for member in self.members:
            if member in probing:
                waiting[member] = probing[member]
            elif member not in connected:
                waiting[member] = f"its train has not connected to this host's status port {self.port}"
            elif member not in self.ready_members:
                waiting[member] = "connected; its train is still preparing"
        return waiting

    def wait_master_outcome(self, timeout: float) -> tuple[int, Failure | None]:
        """MPI workers: block until the master's outcome (or the job's first failure) is known.

        :class:`ClusterError` when the master was not reachable within ``timeout``;
        :class:`Stopped` at once on a stop.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.master_outcome is not None:
                    return self.master_outcome
                if self.first is not None:
                    return self.first.exit_status, self.first
                if self._stop is not None and self._stop.requested:
                    raise Stopped(self._stop.received[0], f"waiting for the MPI master {self.master}")
                now = time.monotonic()
                link = self.link
                connected = link is not None and link.connected
                if not connected and now >= deadline:
                    problem = f"{link.problem}, {link.attempts} attempts" if link else "no link"
                    raise probe.not_ready_error({self.master: problem}, 1, timeout)
                # A stop and every message wake this wait; the timeout only re-checks the deadline.
                self.cond.wait(max(0.05, deadline - now) if not connected else None)

    # -- the end -------------------------------------------------------------------------------------

    def settle(self, outcome: Outcome) -> Outcome:
        """This host's final outcome, after telling the other hosts how it ended.

        When this host failed because another failed first (its run was stopped by the
        channel, it gave up waiting, or its failure reads like fallout), the outcome is
        the job's root cause: its cause, host and rank.
        """
        with self.cond:
            if isinstance(outcome, Failure) and self.first is None and self._fallout(outcome):
                # Our failure looks like a consequence: give the root cause a moment to arrive.
                self.cond.wait_for(lambda: self.first is not None, ROOT_CAUSE_WAIT)
            final: Outcome = outcome
            if isinstance(outcome, Failure) and self.first is not None:
                root = root_cause([*self.failures, *self.reports])
                if root is not None and self._fallout(outcome, root):
                    final = self._peer_outcome(root, outcome)
            own = self._failure_of(final) if isinstance(final, Failure) else None
            if own is not None and self.first is None:
                self.first = own
            payload = wire.outcome(self.host, final.exit_status, own)
            done = wire.done(payload)
            if self.is_master:
                self.final = payload
        self.settled.set()
        if self.is_master:
            told = self.hub.broadcast(done)
            with self.cond:
                self.told.update(told)
                self.cond.notify_all()
        elif self.link is not None:
            self.link.send(done)
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
                        ", ".join(untold[:20])
                        + (f" and {len(untold) - 20} more" if len(untold) > 20 else ""),
                    )
                if not self.cond.wait_for(lambda: not self._untold() or stopped(), self.linger):
                    missing = self._untold()
                    logger.warning(
                        "hosts never connected to learn this host's outcome: %s", ", ".join(missing[:50])
                    )
            elif self.link is not None and self.settled.is_set():
                # A member that failed before it reached the master keeps trying to deliver
                # its outcome; once the link was up, everything queued has been sent (the
                # master may well have hung up since: that is no reason to wait).
                link = self.link
                left = max(0.0, deadline - time.monotonic())
                self.cond.wait_for(lambda: link.ever_connected or stopped(), left)
            self.closed.set()
            self.cond.notify_all()
        if self.link is not None:
            self.link.close()
        self.hub.close()
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
            while enough is not None and not enough(list(self.reports)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.reports)
