"""Readiness and the MPI outcome channel over real sockets on loopback (no namespaces needed)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtk import cluster
from smtk.environment import Environment
from smtk.errors import ClusterError
from smtk.launch import worker
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
            cluster.wait_for(
                [cluster.Peer("late", port, "test")], {"SMTK_HOST_ADDRESSES": "late=127.0.0.1"}, 120
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
    peers = [cluster.Peer("algo-2", port, "sshd"), cluster.Peer("algo-3.invalid", port, "sshd")]
    with pytest.raises(ClusterError) as caught:
        cluster.wait_for(peers, {"SMTK_HOST_ADDRESSES": "algo-2=127.0.0.1"}, 1.0)
    message = str(caught.value)
    assert caught.value.exit_status == 4
    assert f"algo-2 (connect 127.0.0.1:{port} (sshd): Connection refused" in message
    assert "algo-3.invalid (DNS: " in message
    assert "2 of 2 peer hosts never became ready within 1 s" in message


@pytest.fixture
def mpi_pair(tmp_path: Path) -> Iterator[tuple[Environment, Environment]]:
    environ = {
        "SMTK_HOST_ADDRESSES": "algo-1=127.0.0.1,algo-2=127.0.0.1",
        "SMTK_STATUS_PORT": str(_free_port()),
        "SMTK_READY_TIMEOUT": "30",
    }
    envs = []
    for host in ("algo-1", "algo-2"):
        root = make_tree(
            tmp_path / host,
            hyperparameters={"sagemaker_program": "train.py", "sagemaker_mpi_enabled": True},
            resourceconfig={"current_host": host, "hosts": ["algo-1", "algo-2"]},
        )
        envs.append(Environment(root=root, environ=environ))
    yield envs[0], envs[1]


def _outcome_of_worker(env: Environment) -> tuple[threading.Thread, list[worker.WorkerOutcome]]:
    found: list[worker.WorkerOutcome] = []

    def wait() -> None:
        connection = worker._connect_to_master(env)
        with connection:
            found.append(worker._wait_for_outcome(connection, env.current_host, env.master_hostname))

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, found


def test_worker_gets_the_masters_failure(mpi_pair: tuple[Environment, Environment]) -> None:
    master, other = mpi_pair
    server = worker.OutcomeServer(master, ["algo-2"])
    thread, found = _outcome_of_worker(other)
    server.publish(3, "ValueError: boom; where: host algo-2, rank 1", linger=30)
    thread.join(30)
    assert found == [
        worker.WorkerOutcome(
            3, "the MPI job failed on the master algo-1: ValueError: boom; where: host algo-2, rank 1"
        )
    ]


def test_worker_fails_at_once_when_the_master_dies(mpi_pair: tuple[Environment, Environment]) -> None:
    master, other = mpi_pair
    server = worker.OutcomeServer(master, ["algo-2"])
    thread, found = _outcome_of_worker(other)
    while not server._connections:  # the worker said hello
        threading.Event().wait(0.02)
    server.close()  # the master's train is gone without an outcome
    thread.join(30)
    assert len(found) == 1 and found[0].exit_status == 1
    assert "ended without reporting an outcome" in (found[0].failure_reason or "")
