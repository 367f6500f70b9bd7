"""``smtk local`` with several hosts (smtk.local.hosts.run_hosts): loopback mode and namespaces."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from smtk.errors import ConfigError
from smtk.local.hosts import run_hosts
from tests.helpers.jobtree import clean_env, make_tree
from tests.helpers.netns import require_netns

pytestmark = pytest.mark.slow

SCRIPT = """
import os
import torch, torch.distributed as dist
dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print(f"sum={value.item():g} host={os.environ['SM_CURRENT_HOST']}", flush=True)
dist.destroy_process_group()
"""


def _trees(tmp_path: Path, hps: dict[str, object]) -> dict[str, str]:
    hosts = ["algo-1", "algo-2"]
    return {
        host: str(
            make_tree(
                tmp_path / host,
                hyperparameters={"sagemaker_program": "train.py", **hps},
                resourceconfig={"current_host": host, "hosts": hosts, "network_interface_name": "lo"},
                code={"train.py": SCRIPT},
            )
        )
        for host in hosts
    }


def _environ(mode: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    return clean_env(PATH=path, SMTK_LOCAL_HOSTS=mode, SMTK_READY_TIMEOUT="120", PYTHONUNBUFFERED="1")


@pytest.mark.parametrize("mode", ["loopback", "netns"])
def test_two_hosts_on_this_machine(tmp_path: Path, mode: str) -> None:
    if mode == "netns":
        require_netns()
    lines: list[str] = []
    roots = _trees(tmp_path, {"sagemaker_torch_distributed_enabled": True})
    statuses = run_hosts(roots, _environ(mode), sink=lambda _stream, line: lines.append(line))
    text = "\n".join(lines)
    assert statuses == {"algo-1": 0, "algo-2": 0}, text
    assert "algo-1:0 sum=3 host=algo-1" in text and "algo-2:1 sum=3 host=algo-2" in text
    assert "algo-2 | smtk INFO reporting success" in text
    for root in roots.values():
        assert os.path.exists(os.path.join(root, "output", "success"))


def test_mpi_without_namespaces_is_refused(tmp_path: Path) -> None:
    roots = _trees(tmp_path, {"sagemaker_mpi_enabled": True})
    with pytest.raises(ConfigError, match="root"):
        run_hosts(roots, _environ("loopback"))


SLEEPER = """
import os, signal, sys, time
def on_term(signum, frame):
    print(f"stopping on {os.environ['SM_CURRENT_HOST']}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(600)
"""


def test_max_runtime_and_stops_reach_every_host(tmp_path: Path) -> None:
    hosts = ["algo-1", "algo-2"]
    roots = {
        host: str(
            make_tree(
                tmp_path / host,
                hyperparameters={"sagemaker_program": "train.py"},
                resourceconfig={"current_host": host, "hosts": hosts, "network_interface_name": "lo"},
                code={"train.py": SLEEPER},
            )
        )
        for host in hosts
    }
    lines: list[str] = []
    statuses = run_hosts(
        roots,
        _environ("loopback"),
        sink=lambda _stream, line: lines.append(line),
        max_runtime=3,
        stop_grace=60,
    )
    text = "\n".join(lines)
    assert statuses == {"algo-1": 143, "algo-2": 143}, text
    assert "stopping on algo-1" in text and "stopping on algo-2" in text
    for root in roots.values():
        with open(os.path.join(root, "output", "failure")) as handle:
            assert handle.readline().startswith("Stopped: train received SIGTERM")
