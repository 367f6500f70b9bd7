"""Readiness settings and the peers each plan waits for."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from smtk import causes
from smtk.cluster import probe, readiness
from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.errors import ConfigError
from smtk.failure import Failure, root_cause
from smtk.launch import rank, select
from smtk.settings import Settings
from smtk.supervisor import ProcessResult
from tests.helpers.jobtree import make_tree


def test_host_addresses_parse_and_map() -> None:
    settings = Settings.from_environ({"SMTK_HOST_ADDRESSES": " algo-1=127.0.0.2, algo-2 = 127.0.0.3 "})
    assert dict(settings.host_addresses) == {"algo-1": "127.0.0.2", "algo-2": "127.0.0.3"}
    assert settings.address_of("algo-2") == "127.0.0.3"
    assert settings.address_of("algo-9") == "algo-9"
    assert probe.resolve("algo-1", settings) == "127.0.0.2"


@pytest.mark.parametrize("text", ["algo-1", "algo-1=", "=1.2.3.4", "a=1,b"])
def test_bad_host_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="SMTK_HOST_ADDRESSES"):
        Settings.from_environ({"SMTK_HOST_ADDRESSES": text})


def test_settings_defaults() -> None:
    assert Settings.from_environ({}).ready_timeout == 600.0
    assert Settings.from_environ({"SMTK_READY_TIMEOUT": "2.5"}).ready_timeout == 2.5
    assert Settings.from_environ({}).master_port == 7777
    assert Settings.from_environ({"SMTK_STATUS_PORT": "9000"}).status_port == 9000


@pytest.mark.parametrize(
    ("name", "value"),
    [("SMTK_READY_TIMEOUT", "-1"), ("SMTK_MASTER_PORT", "70000"), ("SMTK_SSH_PORT", "x")],
)
def test_bad_settings(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_environ({name: value})


def _env(tmp_path: Path, hps: dict[str, Any], current: str) -> Environment:
    resource = {"current_host": current, "hosts": ["algo-1", "algo-2", "algo-3"]}
    root = make_tree(
        tmp_path, hyperparameters={"sagemaker_program": "train.py", **hps}, resourceconfig=resource
    )
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "mpirun").write_text("#!/bin/sh\nexit 99\n")  # looked up by the MPI plan, never run
    (bindir / "mpirun").chmod(0o755)
    return Environment(root=root, environ={"SMTK_SSH_PORT": "2222", "PATH": str(bindir)})


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
    assert [(p.host, p.port, p.service) for p in readiness.peers_for(env, plan)] == expected


def test_unresolvable_name_is_reported_as_dns() -> None:
    problem = probe.probe(probe.Peer("no-such-host.invalid", 22), Settings())
    assert problem is not None and problem.startswith("DNS: ")


def test_rank_identity_from_launcher_variables() -> None:
    assert rank.identity(
        {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "8"}
    ) == (rank.RankIdentity("mpi", 5, 1, 8))
    assert rank.identity({"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}) == rank.RankIdentity(
        "torchrun", 3, 0, 4
    )
    assert rank.identity({}) == rank.RankIdentity("process", 0, 0, 1)


def test_rank_failure_records_pick_the_root_cause(tmp_path: Path) -> None:
    base = str(tmp_path)
    assert root_cause(rank.recorded_failures(base)) is None
    for r, t, cause in (
        (3, 5.0, "RuntimeError: Connection reset by peer"),
        (2, 20.0, "RuntimeError: late"),
        (1, 10.0, "ValueError: boom"),
    ):
        rank.record_failure(base, Failure(cause=cause, host="algo-2", rank=r, time=t, stderr_tail=(cause,)))
    first = root_cause(rank.recorded_failures(base))
    # The earliest is fallout (a peer's reset); the earliest root cause wins.
    assert first is not None and (first.rank, first.cause) == (1, "ValueError: boom")
    assert sorted(f.rank or 0 for f in rank.recorded_failures(base)) == [1, 2, 3]
    rank.clear_failures(base)
    assert root_cause(rank.recorded_failures(base)) is None


TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/opt/ml/code/train.py", line 17, in <module>',
    '    raise ValueError("rank three is broken")',
    "ValueError: rank three is broken",
)


def _error_file(tmp_path: Path, message: str, stack: str) -> str:
    path = tmp_path / "error.json"
    path.write_text(json.dumps({"message": {"message": message, "extraInfo": {"py_callstack": stack}}}))
    return str(path)


@pytest.mark.parametrize(
    ("stopped_by", "returncode", "signum", "stderr", "error_file", "own"),
    [
        # No stop: every failure is the rank's own.
        (None, 1, None, (), None, True),
        (None, None, 9, (), None, True),
        # Stopped and killed by the signal: a consequence.
        (15, None, 15, TRACEBACK, None, False),
        # Stopped, but it exited with its own exception's traceback (MPI_Abort came after it).
        (15, 1, None, TRACEBACK, None, True),
        (15, 1, None, (), ("ValueError: rank three is broken", "\n".join(TRACEBACK)), True),
        # Stopped, exited with no traceback, or a toolkit's note that its script was killed.
        (15, 1, None, ("some output",), None, False),
        (15, 1, None, (), ("the entry point train.py was killed by SIGTERM (signal 15)", ""), False),
    ],
)
def test_a_rank_that_failed_before_its_stop_is_a_cause(
    tmp_path: Path,
    stopped_by: int | None,
    returncode: int | None,
    signum: int | None,
    stderr: tuple[str, ...],
    error_file: tuple[str, str] | None,
    own: bool,
) -> None:
    result = ProcessResult(
        pid=1,
        returncode=returncode,
        signal=signum,
        stopped_by=stopped_by,
        killed_after_grace=False,
        timed_out=False,
        seconds=1.0,
        stderr_tail=stderr,
    )
    failure = causes.process_failure(
        returncode=returncode,
        signum=signum,
        stderr_tail=stderr,
        code_dir="/opt/ml/code",
        error_file=_error_file(tmp_path, *error_file) if error_file else None,
        rank=3,
    )
    assert rank.failed_on_its_own(result, failure) is own, failure


def test_recorded_failures_ignore_what_is_not_a_record(tmp_path: Path) -> None:
    directory = tmp_path / ".smtk" / "ranks"
    directory.mkdir(parents=True)
    (directory / "1.json").write_text("not json")
    (directory / "2.json").write_text('{"cause": 3}')
    os.mkfifo(directory / "3.json")  # never blocks the reader
    rank.record_failure(str(tmp_path), Failure(cause="ValueError: x", host="algo-1", rank=0))
    assert [f.rank for f in rank.recorded_failures(str(tmp_path))] == [0]


def test_snapshot_is_private_and_skips_launcher_variables(tmp_path: Path) -> None:
    path = rank.write_snapshot(
        str(tmp_path), {"SM_CURRENT_HOST": "algo-2", "OMPI_COMM_WORLD_RANK": "0", "RANK": "9"}
    )
    assert (Path(path).stat().st_mode & 0o777) == 0o600
    values = rank.host_environment({"SAGEMAKER_BASE_DIR": str(tmp_path)}, "mpi")
    assert values == {"SM_CURRENT_HOST": "algo-2"}
