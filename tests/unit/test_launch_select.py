"""Runner choice and the torchrun/MPI plans, compared as values (no process started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smtk.entry_point import EntryPoint
from smtk.environment import Environment
from smtk.errors import ConfigError
from smtk.launch import mpi, select, torchrun
from tests.helpers.jobtree import make_tree

PY = "/py"


def _env(
    tmp_path: Path,
    hps: dict[str, Any],
    *,
    current: str = "algo-1",
    hosts: tuple[str, ...] = ("algo-1", "algo-2"),
    groups: list[dict[str, Any]] | None = None,
    current_group: str | None = None,
    environ: dict[str, str] | None = None,
) -> Environment:
    resource: dict[str, Any] = {
        "current_host": current,
        "hosts": list(hosts),
        "network_interface_name": "ens5",
    }
    if groups is not None:
        resource["instance_groups"] = groups
        resource["current_group_name"] = current_group
    root = make_tree(
        tmp_path, hyperparameters={"sagemaker_program": "train.py", **hps}, resourceconfig=resource
    )
    return Environment(root=root, environ={"PATH": _fake_mpi_bin(tmp_path), **(environ or {})})


def _fake_mpi_bin(tmp_path: Path) -> str:
    """A directory holding an ``mpirun`` that is only ever looked up, never run."""
    bindir = tmp_path / "mpi" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    mpirun = bindir / "mpirun"
    mpirun.write_text("#!/bin/sh\nexit 99\n")
    mpirun.chmod(0o755)
    return str(bindir)


def _entry(env: Environment, kind: str = "python", name: str = "train.py") -> EntryPoint:
    return EntryPoint(kind=kind, name=name, code_dir=env.paths.code_dir)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hps", "current", "expected"),
    [
        ({}, "algo-1", "process"),
        ({"sagemaker_mpi_enabled": True}, "algo-1", "mpi"),
        ({"sagemaker_mpi_enabled": True}, "algo-2", "mpi-worker"),
        ({"sagemaker_mpi_enabled": "false"}, "algo-1", "process"),
        ({"sagemaker_torch_distributed_enabled": True}, "algo-2", "torchrun"),
        ({"sagemaker_pytorch_ddp_enabled": True}, "algo-1", "torchrun"),
        ({"sagemaker_distributed_dataparallel_enabled": True}, "algo-1", "torchrun"),
        ({"sagemaker_mpi_enabled": True, "sagemaker_torch_distributed_enabled": True}, "algo-1", "mpi"),
    ],
)
def test_launcher_choice(tmp_path: Path, hps: dict[str, Any], current: str, expected: str) -> None:
    env = _env(tmp_path, hps, current=current)
    assert select.launcher_for(env) == expected
    assert select.build_plan(env, _entry(env)).kind == expected


def test_heterogeneous_cluster_launches_only_on_distribution_groups(tmp_path: Path) -> None:
    groups = [
        {"instance_group_name": "data", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1"]},
        {"instance_group_name": "train", "instance_type": "ml.p4d.24xlarge", "hosts": ["algo-3", "algo-2"]},
    ]
    hps = {"sagemaker_torch_distributed_enabled": True, "sagemaker_distribution_instance_groups": ["train"]}
    data = _env(tmp_path / "a", hps, current="algo-1", hosts=("algo-1", "algo-2", "algo-3"),
                groups=groups, current_group="data")  # fmt: skip
    assert select.build_plan(data, _entry(data)).kind == "process"
    trainer = _env(tmp_path / "b", hps, current="algo-2", hosts=("algo-1", "algo-2", "algo-3"),
                   groups=groups, current_group="train")  # fmt: skip
    plan = select.build_plan(trainer, _entry(trainer))
    assert plan.kind == "torchrun"
    assert plan.hosts == ("algo-3", "algo-2")  # group order: the master is algo-3
    argv = list(plan.argv)
    assert argv[argv.index("--node-rank") + 1] == "1"
    assert argv[argv.index("--master-addr") + 1] == "algo-3"


def test_torchrun_plan(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        {
            "sagemaker_torch_distributed_enabled": True,
            "sagemaker_mpi_num_of_processes_per_host": 3,
            "lr": 0.1,
        },
        current="algo-2",
        environ={"SMTK_MASTER_PORT": "29400", "SMTK_HOST_ADDRESSES": "algo-1=127.0.0.2,algo-2=127.0.0.3"},
    )
    plan = torchrun.build_plan(env, _entry(env), python=PY)
    assert plan.argv == (
        PY, "-m", "torch.distributed.run",
        "--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.2", "--master-port", "29400",
        "--nproc-per-node", "3", "--max-restarts", "0", "--monitor-interval", "0.1",
        "--no-python", PY, "-m", "smtk.launch.rank", "--", PY, "train.py", "--lr", "0.1",
    )  # fmt: skip
    assert plan.hosts == ("algo-1", "algo-2")
    assert plan.processes_per_host == 3
    assert plan.env["SM_CURRENT_HOST"] == "algo-2"
    assert plan.env["SMTK_LAUNCHER"] == "torchrun"
    assert plan.env["NCCL_SOCKET_IFNAME"] == "ens5"
    assert plan.cwd == env.paths.code_dir


def test_torchrun_single_host_is_standalone_and_max_restarts_passes_through(tmp_path: Path) -> None:
    env = _env(
        tmp_path, {"sagemaker_torch_distributed_enabled": True, "smtk_max_restarts": 2}, hosts=("algo-1",)
    )
    argv = list(torchrun.build_plan(env, _entry(env), python=PY).argv)
    assert argv[3:6] == ["--standalone", "--nnodes", "1"]
    assert "--master-addr" not in argv
    assert argv[argv.index("--max-restarts") + 1] == "2"


@pytest.mark.parametrize("value", [0, -2, "many", True])
def test_bad_processes_per_host_is_a_config_error(tmp_path: Path, value: object) -> None:
    env = _env(
        tmp_path,
        {"sagemaker_torch_distributed_enabled": True, "sagemaker_mpi_num_of_processes_per_host": value},
    )
    with pytest.raises(ConfigError, match="sagemaker_mpi_num_of_processes_per_host"):
        torchrun.build_plan(env, _entry(env), python=PY)


def test_mpi_master_plan(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        {
            "sagemaker_mpi_enabled": True,
            "sagemaker_mpi_num_of_processes_per_host": 2,
            "sagemaker_mpi_custom_mpi_options": "--NCCL_DEBUG INFO --bind-to core -x 'A=b c'",
            "epochs": 3,
        },
        environ={"SAGEMAKER_BASE_DIR": "/opt/ml", "SMTK_READY_TIMEOUT": "5", "AWS_SECRET_ACCESS_KEY": "x"},
    )
    plan = mpi.build_master_plan(env, _entry(env), python=PY)
    argv = list(plan.argv)
    mpirun = str(tmp_path / "mpi" / "bin" / "mpirun")
    assert argv[:6] == [mpirun, "--host", "algo-1:2,algo-2:2", "-np", "4", "--allow-run-as-root"]
    assert argv[6:8] == ["--prefix", str(tmp_path / "mpi")]  # prted found on the other hosts too
    assert argv[argv.index("btl_tcp_if_include") - 1 :][:3] == ["--mca", "btl_tcp_if_include", "ens5"]
    assert "NCCL_DEBUG=INFO" in argv
    assert "SAGEMAKER_BASE_DIR" in argv and "SMTK_READY_TIMEOUT" in argv
    assert not any("AWS_" in a for a in argv)  # credentials never travel on the command line
    # user options come after every smtk option, right before the command
    rank_at = argv.index("smtk.launch.rank") - 2
    assert argv[rank_at - 4 : rank_at] == ["--bind-to", "core", "-x", "A=b c"]
    assert argv[rank_at:] == [
        PY,
        "-m",
        "smtk.launch.rank",
        "--",
        PY,
        "-m",
        "mpi4py",
        "train.py",
        "--epochs",
        "3",
    ]
    assert plan.processes_per_host == 2


def test_mpi_entry_kinds(tmp_path: Path) -> None:
    env = _env(tmp_path, {"sagemaker_mpi_enabled": True})
    shell = EntryPoint(kind="shell", name="run.sh", code_dir=env.paths.code_dir, has_shebang=True)
    assert mpi.mpi_command(env, shell, PY) == ["./run.sh"]
    package = EntryPoint(kind="package", name="trainer", code_dir=env.paths.code_dir, module="trainer.main")
    assert mpi.mpi_command(env, package, PY) == [PY, "-m", "mpi4py", "-m", "trainer.main"]


def test_mpi_total_processes_override(tmp_path: Path) -> None:
    env = _env(tmp_path, {"sagemaker_mpi_enabled": True, "sagemaker_mpi_num_processes": 3})
    argv = list(mpi.build_master_plan(env, _entry(env), python=PY).argv)
    assert argv[argv.index("-np") + 1] == "3"


def test_mpi_worker_plan_runs_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path, {"sagemaker_mpi_enabled": True}, current="algo-2")
    plan = mpi.build_worker_plan(env)
    assert plan.kind == "mpi-worker"
    assert plan.argv == ()
    assert plan.env["SM_CURRENT_HOST"] == "algo-2"


def test_mpi_without_mpirun_is_a_configuration_error(tmp_path: Path) -> None:
    env = _env(tmp_path, {"sagemaker_mpi_enabled": True}, environ={"PATH": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="mpirun") as info:
        mpi.build_master_plan(env, _entry(env), python=PY)
    assert info.value.exit_status == 2
    assert "install Open MPI" in str(info.value)


def test_mpi_python_entry_without_mpi4py_is_a_configuration_error(tmp_path: Path) -> None:
    """Planning in an interpreter that has no mpi4py (``-I -S``: no site-packages at all)."""
    env_root = _env(tmp_path, {"sagemaker_mpi_enabled": True}).paths.root
    src = str(Path(mpi.__file__).resolve().parents[2])
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from smtk.environment import Environment; from smtk.entry_point import EntryPoint; "
        "from smtk.errors import ConfigError; from smtk.launch import mpi\n"
        "env = Environment(root=sys.argv[2], environ={'PATH': sys.argv[3]})\n"
        "entry = EntryPoint(kind='python', name='train.py', code_dir=env.paths.code_dir)\n"
        "try:\n    mpi.build_master_plan(env, entry)\n"
        "except ConfigError as exc:\n    print(exc.exit_status, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, src, env_root, str(tmp_path / "mpi" / "bin")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 ") and "pip install mpi4py" in done.stdout
