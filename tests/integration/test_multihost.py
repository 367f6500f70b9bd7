"""Distributed jobs on real hosts: network namespaces, real ``train``, torchrun (gloo) and MPI (sshd).

Each test makes its own namespaces on a private /24 and removes them afterwards
(tests/helpers/netns.py); without root or iproute2 the tests skip with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.netns import HostRun, cluster, have_sshd, ssh_setup, wait_all

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TORCH_ALLREDUCE = """
import os, socket
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
assert value.item() == world * (world + 1) / 2, value
# every rank sees its own host, never the master's
assert os.environ["SM_CURRENT_HOST"] == socket.gethostname() == os.environ["SMTK_HOST"]
assert os.environ["SMTK_RANK"] == str(rank) and os.environ["SMTK_WORLD_SIZE"] == str(world)
print(f"allreduce ok rank={rank} world={world} sum={value.item():g}", flush=True)
dist.destroy_process_group()
"""

TORCH_CRASH = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
if dist.get_rank() == 1:
    raise ValueError("rank one is broken")
dist.all_reduce(torch.tensor([1.0]))
dist.destroy_process_group()
"""

MPI_ALLREDUCE = """
import os, socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
total = comm.allreduce(rank + 1)
assert total == world * (world + 1) // 2, total
assert os.environ["SM_CURRENT_HOST"] == socket.gethostname() == os.environ["SMTK_HOST"]
assert os.environ["SMTK_RANK"] == str(rank)
local = os.environ["SMTK_LOCAL_RANK"]
print(f"mpi allreduce ok rank={rank} world={world} local={local} sum={total}", flush=True)
"""

MPI_CRASH = """
from mpi4py import MPI
comm = MPI.COMM_WORLD
if comm.Get_rank() == 1:
    raise ValueError("rank one is broken")
comm.allreduce(1)
"""

TORCHRUN = {"sagemaker_program": "train.py", "sagemaker_torch_distributed_enabled": True}
MPI = {"sagemaker_program": "train.py", "sagemaker_mpi_enabled": True}
SETTINGS = {"SMTK_READY_TIMEOUT": "120"}


def _hosts(n: int) -> list[str]:
    return [f"algo-{i + 1}" for i in range(n)]


def _ok(runs: dict[str, HostRun]) -> None:
    for run in runs.values():
        assert run.exit_status == 0, f"{run.host} failed:\n{run.output[-4000:]}\n{run.failure()}"
        assert (run.root / "output" / "success").exists()


@pytest.mark.parametrize("n", [2, 3])
def test_torchrun_all_reduce(tmp_path: Path, n: int) -> None:
    with cluster(tmp_path, _hosts(n), hyperparameters=TORCHRUN, code={"train.py": TORCH_ALLREDUCE}) as hosts:
        runs = hosts.run(SETTINGS)
    _ok(runs)
    for index, host in enumerate(_hosts(n)):
        # the rank's line arrives whole, prefixed host:rank, on its own host's log
        assert (
            f"{host}:{index} allreduce ok rank={index} world={n} sum={n * (n + 1) // 2}" in runs[host].output
        )


def test_mpi_all_reduce_over_ssh(tmp_path: Path) -> None:
    if (why := have_sshd()) is not None:
        pytest.skip(why)
    hps = {**MPI, "sagemaker_mpi_num_of_processes_per_host": 2}
    with cluster(tmp_path, _hosts(2), hyperparameters=hps, code={"train.py": MPI_ALLREDUCE}) as hosts:
        runs = hosts.run({**SETTINGS, **ssh_setup(tmp_path / "ssh")})
    _ok(runs)
    master = runs["algo-1"].output
    for rank, host in enumerate(["algo-1", "algo-1", "algo-2", "algo-2"]):
        assert f"{host}:{rank} mpi allreduce ok rank={rank} world=4 local={rank % 2} sum=10" in master
    assert "the master algo-1 reported success" in runs["algo-2"].output


def test_name_that_resolves_late(tmp_path: Path) -> None:
    names = _hosts(2)
    code = {"train.py": TORCH_ALLREDUCE}
    with cluster(tmp_path, names, hyperparameters=TORCHRUN, code=code, resolvable=["algo-1"]) as hosts:
        runs = {host: hosts.start(host, SETTINGS) for host in names}
        _wait_for_line(runs["algo-1"], "waiting up to")
        time.sleep(1.0)  # the master has now failed to resolve algo-2 at least once
        hosts.spaces.set_resolvable(names)
        wait_all(runs, 180)
    _ok(runs)
    assert "algo-2:1 allreduce ok" in runs["algo-2"].output


def test_host_that_never_comes_up(tmp_path: Path) -> None:
    names = _hosts(3)
    code = {"train.py": TORCH_ALLREDUCE}
    # algo-3 never starts, and its name never resolves on algo-1: both failure kinds at once
    with cluster(
        tmp_path, names, hyperparameters=TORCHRUN, code=code, resolvable=["algo-1", "algo-2"]
    ) as hosts:
        runs = hosts.run(
            {"SMTK_READY_TIMEOUT": "4", "SMTK_OUTCOME_LINGER": "0"}, hosts=["algo-1", "algo-2"], timeout=120
        )
    master = runs["algo-1"]
    assert master.exit_status == 4, master.output
    failure = master.failure() or ""
    assert "algo-3 (DNS:" in failure and "algo-2" not in failure.splitlines()[0]
    assert (master.failure_json() or {}).get("exit_status") == 4
    # the worker had launched (the master was ready); the master's failure stopped it
    worker = runs["algo-2"]
    assert worker.exit_status == 4, worker.output
    worker_failure = worker.failure() or ""
    assert "algo-3 (DNS:" in worker_failure and "where: host algo-1" in worker_failure, worker_failure
    assert "peer algo-1 failed (exit status 4): ClusterError" in worker.output


def test_torchrun_rank_crash_stops_every_host(tmp_path: Path) -> None:
    with cluster(tmp_path, _hosts(2), hyperparameters=TORCHRUN, code={"train.py": TORCH_CRASH}) as hosts:
        runs = hosts.run(SETTINGS)
    for run in runs.values():
        assert run.exit_status not in (0, None), run.output
    for run in runs.values():
        # algo-1's own rank only saw its peer vanish; the reason names the root cause
        failure = run.failure() or ""
        assert failure.startswith("ValueError: rank one is broken at train.py:5"), failure
        assert "where: host algo-2, rank 1" in failure
    assert "algo-2:1 smtk: rank failed" in runs["algo-2"].output


def test_mpi_rank_crash_names_the_rank_on_every_host(tmp_path: Path) -> None:
    if (why := have_sshd()) is not None:
        pytest.skip(why)
    with cluster(tmp_path, _hosts(2), hyperparameters=MPI, code={"train.py": MPI_CRASH}) as hosts:
        runs = hosts.run({**SETTINGS, **ssh_setup(tmp_path / "ssh")})
    for run in runs.values():
        assert run.exit_status == 1, run.output
        failure = run.failure() or ""
        assert "ValueError: rank one is broken at train.py:5" in failure.splitlines()[0], failure
        assert "host algo-2, rank 1" in failure


def _wait_for_line(run: HostRun, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in run.output:
        assert run.exit_status is None, run.output
        assert time.monotonic() < deadline, run.output
        time.sleep(0.05)
