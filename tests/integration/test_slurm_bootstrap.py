"""``train`` started as a one-node Slurm task: the bootstrap end to end, without a cluster.

The environment is what ``srun --nodes 1 --ntasks-per-node 1 train`` gives a task (the
lab notes list it); everything else is real: the spec file, the tree, ``train`` and the
user's process. The multi-node runs on a real cluster are in test_slurm.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from smtk.scheduler.detect import MARKER
from tests.helpers.s3server import S3Server

pytestmark = pytest.mark.slow

HOST = socket.gethostname()
TRAIN = Path(sys.executable).parent / "train"

SCRIPT = """
import json, os, sys
seen = {k: v for k, v in os.environ.items() if k.startswith(("SM_", "TRAINING_JOB_NAME", "MY_"))}
seen["argv"] = sys.argv[1:]
seen["train"] = sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "seen.json"), "w") as out:
    json.dump(seen, out)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.bin"), "w") as out:
    out.write("weights")
"""


def _task_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "SMTK_", "SM_", "SAGEMAKER"))}
    env.update(
        SLURM_JOB_ID="77",
        SLURM_JOB_NAME="bootstrap",
        SLURM_JOB_NODELIST=HOST,
        SLURM_STEP_NODELIST=HOST,
        SLURM_NODEID="0",
        SLURMD_NODENAME=HOST,
        SLURM_LOCALID="0",
        SLURM_NTASKS="1",
        SMTK_JOB_DIR=str(tmp / "jobs"),
        SAGEMAKER_BASE_DIR=str(tmp / "no-platform-tree"),
    )
    env.update(extra)
    return env


def _spec(tmp: Path, script: str = SCRIPT, **fields: object) -> Path:
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(script)
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    (data / "a.csv").write_text("1,2\n")
    spec: dict[str, object] = {
        "HyperParameters": {
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": "code",
            "lr": "0.1",
        },
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "data"}}}],
        "Environment": {"MY_SETTING": "on"},
        "OutputDataConfig": {"S3OutputPath": "out"},
        **fields,
    }
    path = tmp / "job.json"
    path.write_text(json.dumps(spec))
    return path


def _train(env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TRAIN)], env=dict(env), cwd="/", capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_slurm_task_runs_the_spec_as_on_sagemaker(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    proc = _train(_task_env(tmp_path, SMTK_JOB_SPEC=str(spec)))
    assert proc.returncode == 0, proc.stderr
    tree = tmp_path / "jobs" / HOST
    assert (tree / "output" / "success").exists()
    seen = json.loads((tree / "output" / "data" / "seen.json").read_text())
    assert json.loads(seen["SM_HOSTS"]) == [HOST] and seen["SM_CURRENT_HOST"] == HOST
    assert seen["argv"] == ["--lr", "0.1"] and seen["SM_HP_LR"] == "0.1"
    assert seen["train"] == ["a.csv"] and seen["SM_CHANNEL_TRAIN"] == str(tree / "input" / "data" / "train")
    assert seen["MY_SETTING"] == "on"
    assert seen["TRAINING_JOB_NAME"] == "bootstrap-77"  # the scheduler's job: the spec names none
    resource = json.loads((tree / "input" / "config" / "resourceconfig.json").read_text())
    assert resource["hosts"] == [HOST] and resource["current_host"] == HOST
    assert resource["network_interface_name"] in os.listdir("/sys/class/net")
    stored = tmp_path / "out" / "bootstrap-77" / "output"
    with tarfile.open(stored / "model.tar.gz") as tar:
        assert tar.getnames() == ["model.bin"]
    with tarfile.open(stored / "output.tar.gz") as tar:
        assert tar.getnames() == ["seen.json"]
    assert "slurm: host" in proc.stderr + proc.stdout


def test_the_spec_s_job_name_wins_and_a_rerun_lays_the_tree_out_again(tmp_path: Path) -> None:
    spec = _spec(tmp_path, TrainingJobName="named")
    env = _task_env(tmp_path, SMTK_JOB_SPEC=str(spec))
    assert _train(env).returncode == 0
    tree = tmp_path / "jobs" / HOST
    (tree / "model" / "stale.bin").write_text("from the first run")
    (tree / "checkpoints" / "step-1.pt").write_text("kept")
    proc = _train(env)
    assert proc.returncode == 0, proc.stderr
    assert (tree / MARKER).exists()
    assert not (tree / "model" / "stale.bin").exists(), "model/ is the new job's"
    assert (tree / "checkpoints" / "step-1.pt").read_text() == "kept"
    assert (tmp_path / "out" / "named" / "output" / "model.tar.gz").exists()


def test_no_spec_is_a_failure_naming_the_setting(tmp_path: Path) -> None:
    proc = _train(_task_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    failure = (tmp_path / "jobs" / HOST / "output" / "failure").read_text()
    assert "SMTK_JOB_SPEC" in failure.splitlines()[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("spec_text", "named"),
    [
        ("{not json", "job.json"),
        ('{"InputDataConfig": {}}', "InputDataConfig"),
        ('{"HyperParameters": {"sagemaker_program": "train.py"}, "InputDataConfig": '
         '[{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "missing"}}}]}', "missing"),
    ],
)  # fmt: skip
def test_a_bad_spec_fails_with_exit_2_and_the_cause(tmp_path: Path, spec_text: str, named: str) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(spec_text)
    proc = _train(_task_env(tmp_path, SMTK_JOB_SPEC=str(spec)))
    assert proc.returncode == 2, proc.stderr
    failure = (tmp_path / "jobs" / HOST / "output" / "failure").read_text()
    assert named in failure, failure
    assert "Traceback" not in proc.stderr


def test_a_tree_smtk_did_not_lay_out_is_left_alone(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    foreign = tmp_path / "jobs" / HOST / "input" / "data" / "precious"
    foreign.mkdir(parents=True)
    proc = _train(_task_env(tmp_path, SMTK_JOB_SPEC=str(spec)))
    assert proc.returncode == 2, proc.stderr
    assert foreign.exists()
    assert "SMTK_JOB_DIR" in (tmp_path / "jobs" / HOST / "output" / "failure").read_text()


def test_the_stopping_condition_stops_the_job_as_the_platform_does(tmp_path: Path) -> None:
    script = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
    spec = _spec(tmp_path, script, StoppingCondition={"MaxRuntimeInSeconds": 2})
    proc = _train(_task_env(tmp_path, SMTK_JOB_SPEC=str(spec), SMTK_GRACE_PERIOD="5"), timeout=60)
    assert proc.returncode == 143, proc.stderr
    failure = (tmp_path / "jobs" / HOST / "output" / "failure").read_text()
    assert failure.startswith("Stopped: train received SIGTERM"), failure
    assert "MaxRuntimeInSeconds (2 s) reached" in proc.stderr


def test_a_pipe_channel_is_fed_beside_the_job(tmp_path: Path) -> None:
    script = (
        "import os\n"
        "with open(os.path.join(os.environ['SM_INPUT_DIR'], 'data', 'train_0'), 'rb') as pipe:\n"
        "    data = pipe.read()\n"
        "open(os.path.join(os.environ['SM_MODEL_DIR'], 'got'), 'wb').write(data)\n"
    )
    spec = _spec(
        tmp_path,
        script,
        InputDataConfig=[
            {"ChannelName": "train", "InputMode": "Pipe", "DataSource": {"S3DataSource": {"S3Uri": "data"}}}
        ],
    )
    proc = _train(_task_env(tmp_path, SMTK_JOB_SPEC=str(spec)))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "jobs" / HOST / "model" / "got").read_bytes() == b"1,2\n"


def test_the_user_code_fails_as_on_sagemaker(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "raise ValueError('bad shape (1, 3)')\n")
    proc = _train(_task_env(tmp_path, SMTK_JOB_SPEC=str(spec)))
    assert proc.returncode == 1, proc.stderr
    tree = tmp_path / "jobs" / HOST
    assert (tree / "output" / "failure").read_text().startswith("ValueError: bad shape (1, 3)")
    record = json.loads((tree / "output" / "failure.json").read_text())
    assert record["host"] == HOST and record["extra"]["job_name"] == "bootstrap-77", record
    # the platform stores what a failed job left, too
    assert (tmp_path / "out" / "bootstrap-77" / "output" / "model.tar.gz").exists()


def test_s3_channels_and_an_s3_output_path(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    for key, body in {
        "train/a.csv": b"1,2\n",
        "train/sub/b.csv": b"3,4\n",
        "stream/x.rec": b"records",
    }.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    script = (
        "import os\n"
        "names = sorted(os.path.relpath(os.path.join(d, f), os.environ['SM_CHANNEL_TRAIN'])\n"
        "               for d, _, fs in os.walk(os.environ['SM_CHANNEL_TRAIN']) for f in fs)\n"
        "with open(os.path.join(os.environ['SM_INPUT_DIR'], 'data', 'stream_0'), 'rb') as pipe:\n"
        "    streamed = pipe.read()\n"
        "open(os.path.join(os.environ['SM_MODEL_DIR'], 'seen'), 'w').write(repr((names, streamed)))\n"
    )
    spec = _spec(
        tmp_path,
        script,
        InputDataConfig=[
            {"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": f"s3://{bucket}/train"}}},
            {
                "ChannelName": "stream",
                "InputMode": "Pipe",
                "DataSource": {"S3DataSource": {"S3Uri": f"s3://{bucket}/stream"}},
            },
        ],
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/jobs"},
    )
    proc = _train(_task_env(tmp_path, SMTK_JOB_SPEC=str(spec), **s3_server.env()))
    assert proc.returncode == 0, proc.stderr
    seen = (tmp_path / "jobs" / HOST / "model" / "seen").read_text()
    assert seen == repr((["a.csv", "sub/b.csv"], b"records"))
    stored = s3_server.objects(bucket, "jobs/")
    assert sorted(stored) == [
        "jobs/bootstrap-77/output/model.tar.gz",
        "jobs/bootstrap-77/output/output.tar.gz",
    ]
