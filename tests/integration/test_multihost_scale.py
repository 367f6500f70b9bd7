"""Eight real hosts (network namespaces), torchrun with gloo, one process per host.

The same static rendezvous and status channel as in test_multihost.py, at a scale
where start-up order, the master's fan-out of failures and per-host identities are
easier to get wrong: eight ``train`` processes (each with its torchrun agent and one
rank) start at once on a small machine. A hang fails the test at the harness's
deadline (every host's ``train`` is then killed and its output shown), well before
pytest's own timeout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import HostRun, cluster

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HOSTS = [f"algo-{i + 1}" for i in range(8)]
TORCHRUN = {"sagemaker_program": "train.py", "sagemaker_torch_distributed_enabled": True}
# Eight Python+torch start-ups at once on two cores take a while; readiness gives up
# (exit status 4, with the reason) before the harness does.
SETTINGS = {"SMTK_READY_TIMEOUT": "180"}
HARNESS_TIMEOUT = 240.0
# Once the job has ended (or failed) anywhere, every host's train ends within a few
# seconds (settling waits at most ~2 s for a root cause); SMTK_OUTCOME_LINGER (30 s)
# is only for hosts that never connected, so a host still running 15 s after the
# first one ended is waiting for something it should not.
SPREAD = 15.0

IDENTITY = """
import json, os, socket
import torch, torch.distributed as dist
dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
keys = ("SM_CURRENT_HOST", "SMTK_HOST", "RANK", "LOCAL_RANK", "WORLD_SIZE", "SM_HOSTS", "MASTER_ADDR")
seen = {key: os.environ.get(key) for key in keys}
seen.update(hostname=socket.gethostname(), group_rank=dist.get_rank(), sum=value.item())
print("identity " + json.dumps(seen, sort_keys=True), flush=True)
dist.destroy_process_group()
"""

LAST_HOST_FAILS = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
if dist.get_rank() == dist.get_world_size() - 1:
    raise ValueError("boom on the last host")
dist.barrier()
dist.all_reduce(torch.tensor([1.0]))
dist.destroy_process_group()
"""
RAISE_LINE = LAST_HOST_FAILS.splitlines().index('    raise ValueError("boom on the last host")') + 1


def _ended_together(runs: dict[str, HostRun]) -> None:
    seconds = {host: run.seconds or 0.0 for host, run in runs.items()}
    first = min(seconds, key=seconds.__getitem__)
    late = {h: round(s - seconds[first], 1) for h, s in seconds.items() if s - seconds[first] > SPREAD}
    assert not late, (
        f"hosts still running long after {first} ended (seconds later): {late}; "
        "a wait of ~30 s is SMTK_OUTCOME_LINGER's default"
    )


def _identity(run: HostRun) -> dict[str, Any]:
    """The rank's identity line (prefixed ``host:rank`` by the rank wrapper), parsed."""
    lines = [line for line in run.lines if " identity {" in line]
    assert len(lines) == 1, f"{run.host}: expected one identity line:\n{run.output[-4000:]}"
    prefix, _, payload = lines[0].partition(" identity ")
    seen: dict[str, Any] = json.loads(payload)
    seen["prefix"] = prefix
    return seen


@pytest.mark.timeout(HARNESS_TIMEOUT + 120)
def test_eight_hosts_identities_and_all_reduce(tmp_path: Path) -> None:
    n = len(HOSTS)
    with cluster(tmp_path, HOSTS, hyperparameters=TORCHRUN, code={"train.py": IDENTITY}) as hosts:
        runs = hosts.run(SETTINGS, timeout=HARNESS_TIMEOUT)
    for run in runs.values():
        assert run.exit_status == 0, f"{run.host} failed:\n{run.output[-4000:]}\n{run.failure()}"
        assert (run.root / "output" / "success").exists(), run.host
        assert run.failure() is None, run.failure()
    for index, host in enumerate(HOSTS):
        seen = _identity(runs[host])
        # its own host, never the master's, under every name a script might read
        assert seen["SM_CURRENT_HOST"] == seen["SMTK_HOST"] == seen["hostname"] == host, seen
        assert json.loads(seen["SM_HOSTS"]) == HOSTS, seen
        # --node-rank is the host's index in the host list; one process per host
        assert seen["RANK"] == str(index) and seen["group_rank"] == index, seen
        assert seen["LOCAL_RANK"] == "0" and seen["WORLD_SIZE"] == str(n), seen
        assert seen["prefix"] == f"{host}:{index}", seen
        # every host's torchrun met the same master
        assert seen["MASTER_ADDR"] == "algo-1", seen
        assert seen["sum"] == n * (n + 1) / 2, seen
    _ended_together(runs)


@pytest.mark.timeout(HARNESS_TIMEOUT + 120)
def test_a_rank_failure_on_the_last_host_stops_every_host_with_its_root_cause(tmp_path: Path) -> None:
    code = {"train.py": LAST_HOST_FAILS}
    with cluster(tmp_path, HOSTS, hyperparameters=TORCHRUN, code=code) as hosts:
        # returns only when every host's train has exited (else it fails, killing them all)
        runs = hosts.run(SETTINGS, timeout=HARNESS_TIMEOUT)
    for run in runs.values():
        assert run.exit_status == 1, f"{run.host} exit status {run.exit_status}:\n{run.output[-4000:]}"
        assert not (run.root / "output" / "success").exists(), run.host
    for run in runs.values():
        # the other hosts' ranks only saw a peer vanish; every reason names the root cause
        failure = run.failure() or ""
        first = failure.splitlines()[0] if failure else ""
        assert first == f"ValueError: boom on the last host at train.py:{RAISE_LINE}", (run.host, failure)
        assert "where: host algo-8, rank 7" in failure, (run.host, failure)
    assert "algo-8:7 smtk: rank failed" in runs["algo-8"].output
    for host in HOSTS[:-1]:
        record = runs[host].failure_json() or {}
        assert record.get("peer_failure") is True or record.get("host") == "algo-8", (host, record)
    _ended_together(runs)
