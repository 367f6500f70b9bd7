"""Fail fast across hosts: one host's failure stops every other host, naming it (network namespaces).

Each test breaks one host of a real multi-host torchrun job (its tree, its requirements,
or its ``train`` process) and checks that every other host's ``train`` stops on its
own, well before its readiness deadline (``SMTK_READY_TIMEOUT=300``, while the harness
gives up after 120 s), and reports the failing host with its root cause.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.netns import HostRun, cluster, wait_all

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TORCHRUN = {"sagemaker_program": "train.py", "sagemaker_torch_distributed_enabled": True}
# Far beyond the harness's wait: a host that only stops at its deadline fails the test.
SETTINGS = {"SMTK_READY_TIMEOUT": "300", "SMTK_PIP_ARGS": "--no-index"}
HARNESS_TIMEOUT = 120.0

ALLREDUCE = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
dist.all_reduce(torch.tensor([1.0]))
dist.destroy_process_group()
"""

HANG = """
import time
import torch.distributed as dist
dist.init_process_group("gloo")
print("joined", flush=True)
time.sleep(3600)
"""


def _hosts(n: int) -> list[str]:
    return [f"algo-{i + 1}" for i in range(n)]


def test_master_entry_point_missing_stops_every_worker(tmp_path: Path) -> None:
    names = _hosts(3)
    with cluster(tmp_path, names, hyperparameters=TORCHRUN, code={"train.py": ALLREDUCE}) as hosts:
        (hosts.roots["algo-1"] / "code" / "train.py").unlink()
        runs = hosts.run(SETTINGS, timeout=HARNESS_TIMEOUT)
    master = runs["algo-1"]
    assert master.exit_status == 2, master.output
    assert (master.failure() or "").startswith("EntryPointError: "), master.failure()
    for host in ("algo-2", "algo-3"):
        run = runs[host]
        assert run.exit_status == 2, run.output
        failure = run.failure() or ""
        # the same root cause as on the master, and where it happened
        assert failure.startswith("EntryPointError: ") and "where: host algo-1," in failure, failure
        assert "peer algo-1 failed (exit status 2): EntryPointError" in run.output
        record = run.failure_json() or {}
        assert record.get("host") == "algo-1" and record["extra"]["reported_by"] == host


def test_worker_install_failure_stops_the_master_and_other_workers(tmp_path: Path) -> None:
    names = _hosts(3)
    with cluster(tmp_path, names, hyperparameters=TORCHRUN, code={"train.py": ALLREDUCE}) as hosts:
        (hosts.roots["algo-2"] / "code" / "requirements.txt").write_text("smtk-no-such-package==1.0\n")
        runs = hosts.run(SETTINGS, timeout=HARNESS_TIMEOUT)
    failing = runs["algo-2"]
    assert failing.exit_status == 3, failing.output
    assert (failing.failure() or "").startswith("InstallError: "), failing.failure()
    for host in ("algo-1", "algo-3"):
        run = runs[host]
        assert run.exit_status == 3, run.output
        failure = run.failure() or ""
        assert failure.startswith("InstallError: ") and "where: host algo-2," in failure, failure
        assert "smtk-no-such-package" in failure
        assert "peer algo-2 failed (exit status 3): InstallError" in run.output
    # algo-3 was ready and had launched torchrun (waiting for the master's store): it was stopped
    assert "forwarding it to the job's process group" in runs["algo-3"].output


def test_worker_train_killed_stops_the_master(tmp_path: Path) -> None:
    names = _hosts(2)
    with cluster(tmp_path, names, hyperparameters=TORCHRUN, code={"train.py": HANG}) as hosts:
        runs = {host: hosts.start(host, SETTINGS) for host in names}
        _wait_for_line(runs["algo-2"], "algo-2:1 joined")
        # algo-2's train dies without a word (its ranks live on, orphaned)
        os.kill(runs["algo-2"].proc.pid, signal.SIGKILL)
        wait_all(runs, HARNESS_TIMEOUT)
    master = runs["algo-1"]
    assert master.exit_status not in (0, None), master.output
    failure = master.failure() or ""
    assert "the train of algo-2 ended without reporting an outcome" in failure, failure
    assert "where: host algo-2," in failure


def _wait_for_line(run: HostRun, text: str, timeout: float = HARNESS_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while text not in run.output:
        assert run.exit_status is None, run.output
        assert time.monotonic() < deadline, run.output
        time.sleep(0.05)


SAVE_ON_TERM = """
import os, signal, sys, time
import torch.distributed as dist

def on_term(signum, frame):
    # algo-1 saves quickly, algo-2 slowly: algo-2 is still saving when algo-1 reports "stopped"
    time.sleep(0.2 if os.environ["SM_CURRENT_HOST"] == "algo-1" else 4.0)
    print("saved", flush=True)
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)
dist.init_process_group("gloo")
print("joined", flush=True)
while True:
    time.sleep(0.05)
"""


def test_a_stop_on_every_host_keeps_each_hosts_grace_period(tmp_path: Path) -> None:
    # The platform (or scancel) stops every host at once. The first host to finish reports
    # "stopped" on the channel; a host that is still in its grace period must not take that
    # as a peer's failure and kill its ranks at once.
    names = _hosts(2)
    with cluster(tmp_path, names, hyperparameters=TORCHRUN, code={"train.py": SAVE_ON_TERM}) as hosts:
        runs = {host: hosts.start(host, SETTINGS) for host in names}
        _wait_for_line(runs["algo-1"], "algo-1:0 joined")
        _wait_for_line(runs["algo-2"], "algo-2:1 joined")
        for run in runs.values():
            os.kill(run.proc.pid, signal.SIGTERM)
        wait_all(runs, HARNESS_TIMEOUT)
    for host, rank in (("algo-1", 0), ("algo-2", 1)):
        run = runs[host]
        assert f"{host}:{rank} saved" in run.output, run.output
        assert run.exit_status == 128 + signal.SIGTERM, run.output
        assert (run.failure() or "").startswith("Stopped"), run.failure()
