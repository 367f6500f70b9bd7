"""Readiness settings and the peers each plan waits for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtk import cluster
from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.errors import ConfigError
from smtk.launch import rank, select
from tests.helpers.jobtree import make_tree


def test_host_addresses_parse_and_map() -> None:
    environ = {"SMTK_HOST_ADDRESSES": " algo-1=127.0.0.2, algo-2 = 127.0.0.3 "}
    assert cluster.host_addresses(environ) == {"algo-1": "127.0.0.2", "algo-2": "127.0.0.3"}
    assert cluster.address_of("algo-2", environ) == "127.0.0.3"
    assert cluster.address_of("algo-9", environ) == "algo-9"
    assert cluster.resolve("algo-1", environ) == "127.0.0.2"


@pytest.mark.parametrize("text", ["algo-1", "algo-1=", "=1.2.3.4", "a=1,b"])
def test_bad_host_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="SMTK_HOST_ADDRESSES"):
        cluster.host_addresses({"SMTK_HOST_ADDRESSES": text})


def test_settings_defaults() -> None:
    assert cluster.ready_timeout({}) == cluster.DEFAULT_READY_TIMEOUT
    assert cluster.ready_timeout({"SMTK_READY_TIMEOUT": "2.5"}) == 2.5
    assert cluster.master_port({}) == 7777
    assert cluster.status_port({"SMTK_STATUS_PORT": "9000"}) == 9000


@pytest.mark.parametrize(
    ("getter", "name", "value"),
    [
        (cluster.ready_timeout, "SMTK_READY_TIMEOUT", "-1"),
        (cluster.master_port, "SMTK_MASTER_PORT", "70000"),
        (cluster.ssh_port, "SMTK_SSH_PORT", "x"),
    ],
)
def test_bad_settings(getter: Any, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        getter({name: value})


def _env(tmp_path: Path, hps: dict[str, Any], current: str) -> Environment:
    resource = {"current_host": current, "hosts": ["algo-1", "algo-2", "algo-3"]}
    root = make_tree(
        tmp_path, hyperparameters={"sagemaker_program": "train.py", **hps}, resourceconfig=resource
    )
    return Environment(root=root, environ={"SMTK_SSH_PORT": "2222"})


@pytest.mark.parametrize(
    ("hps", "current", "expected"),
    [
        ({"sagemaker_torch_distributed_enabled": True}, "algo-1",
         [("algo-2", None, "train ready"), ("algo-3", None, "train ready")]),
        ({"sagemaker_torch_distributed_enabled": True}, "algo-3", [("algo-1", 7778, "smtk status")]),
        ({"sagemaker_mpi_enabled": True}, "algo-1", [("algo-2", 2222, "sshd"), ("algo-3", 2222, "sshd")]),
        ({"sagemaker_mpi_enabled": True}, "algo-2", []),
        ({}, "algo-2", []),
    ],
)  # fmt: skip
def test_peers_for_each_plan(tmp_path: Path, hps: dict[str, Any], current: str, expected: list[Any]) -> None:
    env = _env(tmp_path, hps, current)
    plan = select.build_plan(env, EntryPoint(kind="python", name="train.py", code_dir=env.paths.code_dir))
    assert [(p.host, p.port, p.service) for p in cluster.peers_for(env, plan)] == expected


def test_unresolvable_name_is_reported_as_dns() -> None:
    problem = cluster.probe(cluster.Peer("no-such-host.invalid", 22), {})
    assert problem is not None and problem.startswith("DNS: ")


def test_rank_identity_from_launcher_variables() -> None:
    assert rank.identity(
        {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "8"}
    ) == (rank.RankIdentity("mpi", 5, 1, 8))
    assert rank.identity({"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}) == rank.RankIdentity(
        "torchrun", 3, 0, 4
    )
    assert rank.identity({}) == rank.RankIdentity("process", 0, 0, 1)


def test_rank_failure_records_pick_the_earliest(tmp_path: Path) -> None:
    base = str(tmp_path)
    assert rank.first_failure(base) is None
    for r, t, cause in ((2, 20.0, "RuntimeError: peer closed"), (1, 10.0, "ValueError: boom")):
        rank.record_failure(base, rank.RankFailure("algo-2", r, 0, 1, None, cause, (cause,), t))
    first = rank.first_failure(base)
    assert first is not None and (first.rank, first.cause) == (1, "ValueError: boom")
    rank.clear_failures(base)
    assert rank.first_failure(base) is None


def test_rank_failure_announcement_is_found_in_launcher_output() -> None:
    lines = [
        "algo-1:0 step 3",
        "algo-2:1 smtk: rank failed: algo-2:1 failed (exit status 1): ValueError: boom at train.py:6",
        "algo-1:0 smtk: rank failed: algo-1:0 failed (exit status 1): RuntimeError: closed by peer",
    ]
    assert rank.failure_in(lines) == ("algo-2", 1, "ValueError: boom at train.py:6")
    assert rank.failure_in(lines[:1]) is None


def test_snapshot_is_private_and_skips_launcher_variables(tmp_path: Path) -> None:
    path = rank.write_snapshot(
        str(tmp_path), {"SM_CURRENT_HOST": "algo-2", "OMPI_COMM_WORLD_RANK": "0", "RANK": "9"}
    )
    assert (Path(path).stat().st_mode & 0o777) == 0o600
    values = rank.host_environment({"SAGEMAKER_BASE_DIR": str(tmp_path)}, "mpi")
    assert values == {"SM_CURRENT_HOST": "algo-2"}
