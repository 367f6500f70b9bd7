"""`smtk local` as a real subprocess: flags, spec files, outcomes, runtime limit, S3 channels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.s3server import S3Server

REPO = Path(__file__).resolve().parents[2]
SMTK = str(Path(sys.executable).parent / "smtk")


def smtk_local(*args: str, cwd: Path, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **extra}
    env.pop("SAGEMAKER_BASE_DIR", None)
    return subprocess.run(
        [SMTK, "local", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


SCRIPT = """
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--name")
parser.add_argument("--fail", default="no")
args = parser.parse_args()
rows = sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))
if args.fail == "yes":
    raise RuntimeError(f"asked to fail after {args.epochs} epochs")
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
    json.dump({"epochs": args.epochs, "name": args.name, "rows": rows,
               "host": os.environ["SM_CURRENT_HOST"], "job": os.environ["TRAINING_JOB_NAME"]}, f)
print("trained on", rows)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("1\n")
    (tmp_path / "data" / "b.csv").write_text("2\n")
    return tmp_path


def test_flags_lay_out_the_job_and_summarise(project: Path) -> None:
    proc = smtk_local(
        "--source-dir", "src", "--entry-point", "train.py", "-H", "epochs=5", "-H", "name=abc",
        "--channel", "train=data", "--job-dir", "job", "--job-name", "flags-job", cwd=project,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    model = json.loads((project / "job" / "algo-1" / "model" / "model.json").read_text())
    assert model == {
        "epochs": 5,
        "name": "abc",
        "rows": ["a.csv", "b.csv"],
        "host": "algo-1",
        "job": "flags-job",
    }
    stored = json.loads(
        (project / "job" / "algo-1" / "input" / "config" / "hyperparameters.json").read_text()
    )
    assert stored["epochs"] == "5" and stored["name"] == '"abc"'  # encoded as the SageMaker SDK does
    assert "job 'flags-job' succeeded" in proc.stdout
    assert f"model:       {project / 'job' / 'algo-1' / 'model'}  model.json" in proc.stdout


def test_failure_is_summarised_with_its_reason(project: Path) -> None:
    proc = smtk_local(
        "--source-dir", "src", "--entry-point", "train.py", "-H", "epochs=2", "-H", "fail=yes",
        "--channel", "train=data", "--job-dir", "job", cwd=project,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "failed (exit status 1)" in proc.stdout
    assert "RuntimeError: asked to fail after 2 epochs at train.py:" in proc.stdout


def test_spec_file_and_max_runtime(project: Path) -> None:
    (project / "src" / "slow.py").write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n")
    spec = {
        "TrainingJobName": "slow-job",
        "HyperParameters": {"sagemaker_program": '"slow.py"', "sagemaker_submit_directory": '"src"'},
        "InputDataConfig": [
            {"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "file://data"}}}
        ],
        "StoppingCondition": {"MaxRuntimeInSeconds": 2},
    }
    (project / "job.json").write_text(json.dumps(spec))
    proc = smtk_local("--spec", "job.json", "--job-dir", "job", cwd=project)
    assert proc.returncode == 143
    failure = (project / "job" / "algo-1" / "output" / "failure").read_text()
    assert failure.startswith("Stopped: train received SIGTERM")


def test_quickstart_spec_runs(tmp_path: Path) -> None:
    proc = smtk_local(
        "--spec", str(REPO / "examples" / "quickstart" / "job.json"), "--job-dir", "qs", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    model = json.loads((tmp_path / "qs" / "algo-1" / "model" / "model.json").read_text())
    assert abs(model["w"] - 3.0) < 0.2 and abs(model["b"] - 0.5) < 0.1


def test_refuses_a_job_dir_it_did_not_make(project: Path) -> None:
    (project / "mine").mkdir()
    (project / "mine" / "precious.txt").write_text("keep me")
    proc = smtk_local("--source-dir", "src", "--entry-point", "train.py", "--job-dir", "mine", cwd=project)
    assert proc.returncode == 2
    assert "--job-dir" in proc.stderr
    assert (project / "mine" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"ResourceConfig": {"InstanceCount": "two"}}, "ResourceConfig.InstanceCount"),
        ({"InputDataConfig": [{"ChannelName": "x", "InputMode": "Stream"}]}, "InputDataConfig[0]"),
        ({"Environment": {"A": 1}}, "Environment.A"),
    ],
)
def test_bad_spec_is_a_clear_error(project: Path, spec: dict[str, object], words: str) -> None:
    (project / "bad.json").write_text(json.dumps(spec))
    proc = smtk_local("--spec", "bad.json", cwd=project)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr


def test_s3_channel_is_downloaded(project: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="datasets/train/part-0.csv", Body=b"1\n")
    client.put_object(Bucket=bucket, Key="datasets/train/nested/part-1.csv", Body=b"2\n")
    proc = smtk_local(
        "--source-dir", "src", "--entry-point", "train.py", "--channel", f"train=s3://{bucket}/datasets/train",
        "--job-dir", "job", cwd=project, **s3_server.env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = project / "job" / "algo-1" / "input" / "data" / "train"
    assert (data / "part-0.csv").read_bytes() == b"1\n"
    assert (data / "nested" / "part-1.csv").read_bytes() == b"2\n"


PIPE_SCRIPT = """
import json, os
import smtk.channels
from smtk.channels.records import open_records
train = smtk.channels.get("train")
assert train.mode == "Pipe", train.mode
counts = []
for epoch in train.epochs(count=3):
    counts.append(sum(1 for _ in epoch.records("recordio")))
with open(os.path.join(os.environ["SM_MODEL_DIR"], "counts.json"), "w") as f:
    json.dump(counts, f)
print("epochs read", counts)
"""


def test_pipe_channel_is_fed_beside_the_job(project: Path) -> None:
    (project / "src" / "pipe_train.py").write_text(PIPE_SCRIPT)
    records = project / "records"
    records.mkdir()
    for index in range(3):
        (records / f"part-{index}.bin").write_bytes(b"payload %d" % index)
    spec = {
        "HyperParameters": {"sagemaker_program": "pipe_train.py", "sagemaker_submit_directory": "src"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "InputMode": "Pipe",
                "RecordWrapperType": "RecordIO",
                "DataSource": {"S3DataSource": {"S3Uri": "records"}},
            }
        ],
    }
    (project / "pipe.json").write_text(json.dumps(spec))
    proc = smtk_local("--spec", "pipe.json", "--job-dir", "job", cwd=project)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads((project / "job" / "algo-1" / "model" / "counts.json").read_text())
    assert counts == [3, 3, 3]  # every file is one RecordIO record, in every epoch
    assert not list((project / "job" / "algo-1" / "input" / "data").glob("train_*")), "FIFOs left behind"
    config = json.loads(
        (project / "job" / "algo-1" / "input" / "config" / "inputdataconfig.json").read_text()
    )
    assert config["train"]["TrainingInputMode"] == "Pipe"


SYNC_SCRIPT = """
import os, sys, time
import smtk
env = smtk.Environment()
checkpoints = env.checkpoint_config.local_path
restored = sorted(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else []
print("restored", restored, flush=True)
if sys.argv[-1] == "first":
    inter = env.output_intermediate_dir
    os.makedirs(os.path.join(inter, "logs", "deep"), exist_ok=True)
    for i in range(20):
        with open(os.path.join(inter, "logs", "deep", f"{i}.txt"), "w") as f:
            f.write(f"step {i}")
    with open(os.path.join(inter, "tmp.partial"), "w") as f:
        f.write("final metrics")
    os.rename(os.path.join(inter, "tmp.partial"), os.path.join(inter, "metrics.json"))
    os.makedirs(checkpoints, exist_ok=True)
    with open(os.path.join(checkpoints, "epoch-1.ckpt"), "w") as f:
        f.write("weights after epoch 1")
    raise RuntimeError("spot interruption simulated")
assert restored == ["epoch-1.ckpt"], restored
"""


def test_output_and_checkpoint_sync_through_train(project: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    (project / "src" / "sync_train.py").write_text(SYNC_SCRIPT)
    common = ["--source-dir", "src", "--entry-point", "sync_train.py", "--job-name", "spot-job",
              "--output-s3", f"s3://{bucket}/out", "--checkpoint-s3", f"s3://{bucket}/ckpt"]  # fmt: skip
    first = smtk_local(*common, "-H", "run=first", "--job-dir", "job1", cwd=project, **s3_server.env())
    assert first.returncode == 1, first.stderr
    objects = s3_server.objects(bucket)
    prefix = "out/spot-job/output/intermediate/"
    assert {k for k in objects if k.startswith(prefix)} == {
        *(f"{prefix}logs/deep/{i}.txt" for i in range(20)),
        f"{prefix}metrics.json",
    }
    assert objects[f"{prefix}logs/deep/7.txt"] == b"step 7"
    assert objects["ckpt/epoch-1.ckpt"] == b"weights after epoch 1"
    second = smtk_local(*common, "-H", "run=second", "--job-dir", "job2", cwd=project, **s3_server.env())
    assert second.returncode == 0, second.stderr
    assert "restored ['epoch-1.ckpt']" in second.stdout
