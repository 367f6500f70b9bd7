"""Where ``train`` runs (smtk.scheduler.detect) and Slurm's variables -> Placement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smtk.errors import ConfigError
from smtk.scheduler import detect, slurm
from smtk.scheduler.placement import Placement
from tests.helpers.jobtree import make_tree

#: What a task of ``srun --nodes 2 --ntasks-per-node 1`` sees on its second node (lab notes).
SRUN_TASK = {
    "SLURM_JOB_ID": "42",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NAME": "my job",
    "SLURM_JOB_NODELIST": "algo-[1-2]",
    "SLURM_NODELIST": "algo-[1-2]",
    "SLURM_STEP_NODELIST": "algo-[1-2]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_NODEID": "1",
    "SLURMD_NODENAME": "algo-2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_TASKS_PER_NODE": "1(x2)",
    "PATH": "/nonexistent",  # no scontrol: the parser expands the list
}


# -- detection ---------------------------------------------------------------------------------


def test_a_platform_tree_is_sagemaker_whatever_else_is_set(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    environ = {**SRUN_TASK, "SAGEMAKER_BASE_DIR": str(root), "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert detect.where(environ) == "sagemaker"


def test_slurm_without_a_tree(tmp_path: Path) -> None:
    assert detect.where({**SRUN_TASK, "SAGEMAKER_BASE_DIR": str(tmp_path / "none")}) == "slurm"


def test_a_tree_the_bootstrap_laid_out_is_not_the_platform_s(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / detect.MARKER).write_text("")
    environ = {**SRUN_TASK, "SAGEMAKER_BASE_DIR": str(root)}
    assert not detect.platform_tree(environ)
    assert detect.where(environ) == "slurm"  # a later job on the node lays it out again


def test_nothing_detected_is_sagemaker(tmp_path: Path) -> None:
    # train then reads the tree and reports what is missing, as it always did
    assert detect.where({"SAGEMAKER_BASE_DIR": str(tmp_path)}) == "sagemaker"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("slurm", "slurm"),
        ("SAGEMAKER", "sagemaker"),
        ("kubernetes", "kubernetes"),
        ("auto", "slurm"),
        ("", "slurm"),
    ],
)
def test_smtk_scheduler_overrides_detection(tmp_path: Path, setting: str, expected: str) -> None:
    environ = {**SRUN_TASK, "SAGEMAKER_BASE_DIR": str(tmp_path), "SMTK_SCHEDULER": setting}
    assert detect.where(environ) == expected


def test_a_bad_smtk_scheduler_is_left_to_train_to_report(tmp_path: Path) -> None:
    environ = {**SRUN_TASK, "SAGEMAKER_BASE_DIR": str(tmp_path), "SMTK_SCHEDULER": "pbs"}
    assert detect.where(environ) == "sagemaker"
    from smtk.settings import Settings

    with pytest.raises(ConfigError, match="SMTK_SCHEDULER"):
        Settings.from_environ(environ)


def test_the_sagemaker_path_stays_light(tmp_path: Path) -> None:
    """On a platform tree, train imports none of the schedulers' modules nor smtk local."""
    root = make_tree(tmp_path / "job", code={"train.py": "print('hi')\n"}, hyperparameters={})
    probe = (
        "import sys, smtk.cli\n"
        "status = smtk.cli.train_main([])\n"
        "late = [m for m in ('smtk.scheduler.bootstrap', 'smtk.scheduler.detect', 'smtk.scheduler.slurm',\n"
        "                    'smtk.scheduler.kubernetes', 'smtk.local.layout', 'smtk.local.spec')\n"
        "        if m in sys.modules]\n"
        "print('LOADED', late, status)\n"
    )
    env = {
        **SRUN_TASK,
        "PATH": "/usr/bin:/bin",
        "SAGEMAKER_BASE_DIR": str(root),
        "SAGEMAKER_PROGRAM": "train.py",
    }
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "LOADED [] 0" in proc.stdout, proc.stdout + proc.stderr


# -- Slurm's variables -----------------------------------------------------------------------


def test_srun_task_placement() -> None:
    placed = slurm.placement(SRUN_TASK, "ignored")
    assert placed == Placement(
        scheduler="slurm", hosts=("algo-1", "algo-2"), current_host="algo-2", gpus=None, job_name="my-job-42"
    )
    assert placed.master == "algo-1" and placed.index == 1


def test_the_step_s_nodes_win_over_the_job_s() -> None:
    environ = {**SRUN_TASK, "SLURM_JOB_NODELIST": "algo-[1-4]", "SLURM_NODELIST": "algo-[1-4]"}
    assert slurm.placement(environ, "x").hosts == ("algo-1", "algo-2")


@pytest.mark.parametrize("variable", ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"])
def test_any_node_list_variable_will_do(variable: str) -> None:
    environ = {k: v for k, v in SRUN_TASK.items() if not k.endswith("NODELIST")}
    environ[variable] = "gpu[07-08]"
    environ["SLURMD_NODENAME"] = "gpu08"
    assert slurm.detected(environ)
    assert slurm.placement(environ, "x").hosts == ("gpu07", "gpu08")


def test_not_slurm_without_its_variables() -> None:
    assert not slurm.detected({"SLURM_JOB_ID": "1"})
    assert not slurm.detected({"SLURM_JOB_NODELIST": "a"})
    assert not slurm.detected({})


def test_the_node_id_names_the_host_without_slurmd_nodename() -> None:
    environ = {k: v for k, v in SRUN_TASK.items() if k != "SLURMD_NODENAME"}
    assert slurm.placement(environ, "x").current_host == "algo-2"


def test_the_hostname_is_the_last_resort() -> None:
    environ = {k: v for k, v in SRUN_TASK.items() if k not in ("SLURMD_NODENAME", "SLURM_NODEID")}
    assert slurm.placement(environ, "algo-1.cluster.example").current_host == "algo-1"
    with pytest.raises(ConfigError, match="SLURMD_NODENAME"):
        slurm.placement(environ, "elsewhere")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"SLURMD_NODENAME": "algo-9"}, "SLURMD_NODENAME"),
        ({"SLURM_NODEID": "0"}, "SLURM_NODEID"),  # disagrees with SLURMD_NODENAME
        ({"SLURM_NODEID": "2"}, "SLURM_NODEID"),
        ({"SLURM_NODEID": "one"}, "SLURM_NODEID"),
        ({"SLURM_LOCALID": "1"}, "SLURM_LOCALID"),  # two train per node
        ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"}, "SLURM_NTASKS"),
        ({"SLURM_STEP_NODELIST": "algo-[1-2],algo-1"}, "each node once"),
        ({"SLURM_STEP_NODELIST": "algo-[1-2]-ib"}, "node list"),
        ({"SLURM_GPUS_ON_NODE": "all"}, "SLURM_GPUS_ON_NODE"),
        ({"SLURM_STEP_ID": ""}, "SLURM_STEP_ID"),  # train in the batch script of a 2-node job
    ],
)
def test_what_cannot_be_right_is_an_error_naming_the_variable(changes: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        slurm.placement({**SRUN_TASK, **changes}, "x")


def test_a_one_node_batch_script_may_run_train_directly() -> None:
    environ = {k: v for k, v in SRUN_TASK.items() if "STEP" not in k}
    environ.update(
        SLURM_JOB_NODELIST="algo-1", SLURM_NODELIST="algo-1", SLURMD_NODENAME="algo-1", SLURM_NODEID="0"
    )
    environ.pop("SLURM_NTASKS")
    assert slurm.placement(environ, "x").hosts == ("algo-1",)


def test_one_task_per_node_is_the_advice() -> None:
    with pytest.raises(ConfigError) as raised:
        slurm.placement({**SRUN_TASK, "SLURM_LOCALID": "1"}, "x")
    assert "--ntasks-per-node 1" in str(raised.value)


@pytest.mark.parametrize(
    ("changes", "gpus"),
    [
        ({}, None),
        ({"SLURM_GPUS_ON_NODE": "8"}, 8),
        ({"SLURM_STEP_GPUS": "0,1,2,3"}, 4),
        ({"SLURM_JOB_GPUS": "2,3"}, 2),
        ({"SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_GPUS": "0,1,2,3"}, 2),
    ],
)
def test_gpus_on_the_node(changes: dict[str, str], gpus: int | None) -> None:
    assert slurm.placement({**SRUN_TASK, **changes}, "x").gpus == gpus


@pytest.mark.parametrize(
    ("name", "job_id", "expected"),
    [
        ("train", "7", "train-7"),
        ("my job.sh", "123", "my-job-sh-123"),
        (None, "5", "slurm-5"),
        ("___", "5", "slurm-5"),
        ("x" * 80, "99", "x" * 60 + "-99"),
        ("array", "10_3", "array-10-3"),
    ],
)
def test_job_names_are_valid_sagemaker_names_unique_per_job(
    name: str | None, job_id: str, expected: str
) -> None:
    environ = {"SLURM_JOB_ID": job_id}
    if name is not None:
        environ["SLURM_JOB_NAME"] = name
    assert slurm.job_name(environ) == expected
    assert len(expected) <= 63


def test_placement_through_detect_uses_the_hostname_given() -> None:
    environ = {k: v for k, v in SRUN_TASK.items() if k not in ("SLURMD_NODENAME", "SLURM_NODEID")}
    assert detect.placement("slurm", environ, "algo-1").current_host == "algo-1"
    with pytest.raises(ValueError, match="sagemaker"):
        detect.placement("sagemaker", environ, "algo-1")


def test_placement_is_frozen() -> None:
    placed = slurm.placement(SRUN_TASK, "x")
    with pytest.raises(AttributeError):
        placed.current_host = "algo-1"  # type: ignore[misc]
    assert json.dumps(list(placed.hosts)) == '["algo-1", "algo-2"]'
