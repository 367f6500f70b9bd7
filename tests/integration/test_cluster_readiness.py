"""Readiness and the status channel (smtk.peers) over real sockets on loopback (no namespaces needed)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtk.cluster import probe, wire
from smtk.cluster.session import Session
from smtk.environment import Environment
from smtk.errors import ClusterError
from smtk.failure import Failure, Success
from smtk.settings import Settings
from smtk.stop import Stop, Stopped
from tests.helpers.jobtree import make_tree


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_waits_until_a_late_listener_appears() -> None:
    port = _free_port()
    done = threading.Event()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            probe.wait_for(
                [probe.Peer("late", port, "test")],
                Settings.from_environ({"SMTK_HOST_ADDRESSES": "late=127.0.0.1"}),
                120,
            )
        except BaseException as exc:
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=wait)
    thread.start()
    assert not done.wait(0.5), "must still be waiting: nothing listens yet"
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen(1)
        thread.join(60)
    assert done.is_set() and not errors


def test_timeout_names_every_host_and_what_failed() -> None:
    port = _free_port()  # nothing listens there
    peers = [probe.Peer("algo-2", port, "sshd"), probe.Peer("algo-3.invalid", port, "sshd")]
    with pytest.raises(ClusterError) as caught:
        probe.wait_for(peers, Settings.from_environ({"SMTK_HOST_ADDRESSES": "algo-2=127.0.0.1"}), 1.0)
    message = str(caught.value)
    assert caught.value.exit_status == 4
    assert f"algo-2 (connect 127.0.0.1:{port} (sshd): Connection refused" in message
    assert "algo-3.invalid (DNS: " in message
    assert "2 of 2 peer hosts never became ready within 1 s" in message


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Environment, Environment]]:
    """The two hosts of a torchrun job, each on its own loopback address, one free status port."""
    environ = {
        "SMTK_HOST_ADDRESSES": "algo-1=127.0.0.1,algo-2=127.0.0.2",
        "SMTK_STATUS_PORT": str(_free_port()),
        "SMTK_READY_TIMEOUT": "30",
        "SMTK_OUTCOME_LINGER": "30",
    }
    envs = []
    for host in ("algo-1", "algo-2"):
        root = make_tree(
            tmp_path / host,
            hyperparameters={"sagemaker_program": "train.py", "sagemaker_torch_distributed_enabled": True},
            resourceconfig={"current_host": host, "hosts": ["algo-1", "algo-2"]},
        )
        envs.append(Environment(root=root, environ=environ))
    yield envs[0], envs[1]


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    opened: list[Session] = []
    yield opened
    for session in opened:
        session.settled.set()  # no escalation threads left behind
        session.linger = 0.0  # nothing left to deliver
        session.close()


def _session(env: Environment, opened: list[Session], stop: Stop | None = None) -> Session:
    session = Session(env, stop, ["s3cret"], ["algo-1", "algo-2"])
    opened.append(session)
    return session


def _failure(host: str, cause: str, status: int = 1, rank: int | None = None) -> Failure:
    return Failure(exit_status=status, cause=cause, category="x", host=host, rank=rank)


def test_both_sides_become_ready(pair: tuple[Environment, Environment], sessions: list[Session]) -> None:
    master = _session(pair[0], sessions)
    member = _session(pair[1], sessions)
    waiter = threading.Thread(target=master.wait_ready, args=([probe.Peer("algo-2", None)], 30))
    waiter.start()
    member.mark_ready()
    master.mark_ready()
    member.wait_ready([], 30)
    waiter.join(30)
    assert not waiter.is_alive() and "algo-2" in master.ready_members


def test_master_failure_reaches_a_member_that_connects_later(
    pair: tuple[Environment, Environment], sessions: list[Session]
) -> None:
    master = _session(pair[0], sessions)
    final = master.settle(_failure("algo-1", "EntryPointError: no train.py (s3cret)", 2))
    assert final.cause.startswith("EntryPointError")
    closing = threading.Thread(target=master.close)  # lingers until algo-2 has been told
    closing.start()
    stop = Stop()
    member = _session(pair[1], sessions, stop)
    with pytest.raises(
        ClusterError, match=r"peer algo-1 failed \(exit status 2\): EntryPointError: no train"
    ):
        member.wait_ready([], 30)
    assert stop.stop_signal == signal.SIGTERM  # its run (had it started) is being stopped
    outcome = member.settle(Failure(exit_status=4, cause="ClusterError: peer ..."))
    assert (outcome.exit_status, outcome.host, outcome.extra["reported_by"]) == (2, "algo-1", "algo-2")
    assert "s3cret" not in outcome.cause  # the sender redacted its secrets
    closing.join(30)
    assert not closing.is_alive() and master.told == {"algo-2"}


def test_member_failure_stops_the_waiting_master(
    pair: tuple[Environment, Environment], sessions: list[Session]
) -> None:
    stop = Stop()
    master = _session(pair[0], sessions, stop)
    member = _session(pair[1], sessions)
    member.settle(_failure("algo-2", "InstallError: pip failed", 3))
    with pytest.raises(ClusterError, match=r"peer algo-2 failed \(exit status 3\): InstallError: pip failed"):
        master.wait_ready([], 30)
    assert stop.stop_signal == signal.SIGTERM
    outcome = master.settle(_failure("algo-1", "Stopped: train received SIGTERM"))
    assert (outcome.cause, outcome.host, outcome.exit_status) == ("InstallError: pip failed", "algo-2", 3)


def test_own_root_cause_beats_a_peers_fallout(
    pair: tuple[Environment, Environment], sessions: list[Session]
) -> None:
    master = _session(pair[0], sessions)
    member = _session(pair[1], sessions)
    member.mark_ready()
    master.mark_ready()
    member.wait_ready([], 30)
    member.settle(_failure("algo-2", "RuntimeError: Connection closed by peer", 1, rank=1))
    with master.cond:
        master.cond.wait_for(lambda: master.first is not None, 30)
    outcome = master.settle(_failure("algo-1", "ValueError: boom at train.py:3", 1, rank=0))
    assert (outcome.cause, outcome.host, outcome.rank) == ("ValueError: boom at train.py:3", "algo-1", 0)


def test_member_fails_at_once_when_the_masters_train_dies(
    pair: tuple[Environment, Environment], sessions: list[Session]
) -> None:
    master = _session(pair[0], sessions)
    stop = Stop()
    member = _session(pair[1], sessions, stop)
    with master.cond:
        master.cond.wait_for(lambda: "algo-2" in master.hub.connected(), 30)
    # the master's train is gone without a word: its sockets close
    master.hub.close(flush=0)
    status, failure = member.wait_master_outcome(30)
    assert status == 1 and failure is not None and failure.host == "algo-1"
    assert "lost the connection to the master algo-1" in failure.cause
    assert stop.stop_signal == signal.SIGTERM


def test_mpi_worker_gets_the_masters_outcome(
    pair: tuple[Environment, Environment], sessions: list[Session]
) -> None:
    master = _session(pair[0], sessions)
    member = _session(pair[1], sessions)
    master.settle(Success(1.0, host="algo-1"))
    assert member.wait_master_outcome(30) == (0, None)


def test_rank_failure_reports_are_collected(
    pair: tuple[Environment, Environment], sessions: list[Session]
) -> None:
    master = _session(pair[0], sessions)
    member = _session(pair[1], sessions)
    with master.cond:
        master.cond.wait_for(lambda: "algo-2" in master.hub.connected(), 30)
    # A rank on algo-2 reports to algo-2's train, which passes it to the master, which
    # passes it to every other host: each can then name the first rank that failed.
    sent = Failure(cause="ValueError: x", host="algo-2", rank=3, time=1.0)
    assert wire.send_report(sent, "algo-2", pair[1].settings)
    assert member.reported_failures(30, bool) == [sent]
    assert master.reported_failures(30, bool) == [sent]


def test_a_stop_ends_the_wait_for_peers_at_once(
    pair: tuple[Environment, Environment], sessions: list[Session]
) -> None:
    stop = Stop()
    master = _session(pair[0], sessions, stop)  # algo-2 never comes: only the stop ends the wait
    threading.Timer(0.5, stop.request, args=(signal.SIGTERM,)).start()
    started = time.monotonic()
    with pytest.raises(Stopped) as info:
        master.wait_ready([probe.Peer("algo-2", None)], 600)
    assert time.monotonic() - started < 10
    assert info.value.signum == signal.SIGTERM and "algo-2" in info.value.during


def test_a_stop_ends_a_probe_wait_at_once() -> None:
    stop = Stop()
    threading.Timer(0.5, stop.request, args=(signal.SIGINT,)).start()
    started = time.monotonic()
    with pytest.raises(Stopped) as info:
        probe.wait_for([probe.Peer("algo-9.invalid", 22, "sshd")], Settings(), 600, stop=stop)
    assert time.monotonic() - started < 10 and info.value.signum == signal.SIGINT


def test_a_member_does_not_linger_after_the_master_hung_up(
    pair: tuple[Environment, Environment], sessions: list[Session]
) -> None:
    master = _session(pair[0], sessions)
    member = _session(pair[1], sessions)
    member.mark_ready()
    master.mark_ready()
    member.wait_ready([], 30)
    master.settle(Success(1.0, host="algo-1"))
    member.settle(Success(1.0, host="algo-2"))
    master.close()  # the master is done and hangs up first
    with member.cond:
        member.cond.wait_for(lambda: not member.link.connected, 30)  # type: ignore[union-attr]
    started = time.monotonic()
    member.close()  # its outcome was delivered while connected: nothing left to wait for
    assert time.monotonic() - started < 5, "the member waited out SMTK_OUTCOME_LINGER (30 s)"
