"""`smtk local` job specs and flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtk.errors import ConfigError
from smtk.local.layout import lay_out
from smtk.local.spec import encode_hyperparameter, load_spec, parse_channel_flag, parse_pairs


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("3", "3"),
        ("0.1", "0.1"),
        ("true", "true"),
        ("[1, 2]", "[1, 2]"),
        ("adam", '"adam"'),
        ("True", '"True"'),
    ],
)
def test_hyperparameters_are_stored_like_the_sdk(text: str, stored: str) -> None:
    assert encode_hyperparameter(text) == stored


def test_channel_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_channel_flag("train=data:Pipe").input_mode == "Pipe"
    assert parse_channel_flag("train=data:Pipe").source == str(tmp_path / "data")
    assert parse_channel_flag("train=s3://b/p:FastFile").source == "s3://b/p"
    assert parse_channel_flag("train=s3://b/p").input_mode == "File"
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_channel_flag("train")


def test_pairs_need_an_equals_sign() -> None:
    assert parse_pairs(["a=1", "b=x=y"], "--env") == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="--env"):
        parse_pairs(["novalue"], "--env")


def test_spec_file_is_parsed_relative_to_itself(tmp_path: Path) -> None:
    spec = {
        "TrainingJobName": "my-job",
        "HyperParameters": {
            "epochs": 3,
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"src"',
        },
        "AlgorithmSpecification": {"TrainingInputMode": "Pipe"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "RecordWrapperType": "RecordIO",
                "DataSource": {"S3DataSource": {"S3Uri": "data", "S3DataDistributionType": "ShardedByS3Key"}},
            },
            {
                "ChannelName": "eval",
                "InputMode": "File",
                "DataSource": {"FileDataSource": {"FileUri": "file:///d"}},
            },
        ],
        "ResourceConfig": {"InstanceCount": 2, "InstanceType": "ml.m5.xlarge"},
        "Environment": {"A": "1"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
        "CheckpointConfig": {"S3Uri": "s3://b/ckpt"},
    }
    (tmp_path / "job.json").write_text(json.dumps(spec))
    job = load_spec(str(tmp_path / "job.json"))
    assert job.job_name == "my-job"
    assert job.entry_point == "train.py" and job.source_dir == str(tmp_path / "src")
    assert job.hyperparameters == {"epochs": "3"}
    train, evaluation = job.channels
    assert (train.input_mode, train.distribution, train.record_wrapper) == (
        "Pipe",
        "ShardedByS3Key",
        "RecordIO",
    )
    assert train.source == str(tmp_path / "data")
    assert (evaluation.input_mode, evaluation.source) == ("File", "/d")
    assert (job.instance_count, job.instance_type, job.max_runtime) == (2, "ml.m5.xlarge", 60.0)
    assert job.checkpoint_s3 == "s3://b/ckpt" and job.environment == {"A": "1"}


def test_missing_spec_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"job\.json"):
        load_spec(str(tmp_path / "job.json"))


@pytest.mark.parametrize(
    ("submit", "container", "expected"),
    [
        ("s3://bucket/jobs/sourcedir.tar.gz", False, "s3://bucket/jobs/sourcedir.tar.gz"),
        ("s3://bucket/jobs/sourcedir.tar.gz", True, "s3://bucket/jobs/sourcedir.tar.gz"),
        ("src", False, "{base}/src"),
        ("src", True, None),  # copied into the image's code dir instead
    ],
)
def test_submit_directory_in_the_tree(
    tmp_path: Path, submit: str, container: bool, expected: str | None
) -> None:
    # An S3 archive stays a URI (train fetches it on each host); a local directory is absolute.
    path = tmp_path / "job.json"
    path.write_text(
        json.dumps(
            {
                "HyperParameters": {
                    "sagemaker_program": '"train.py"',
                    "sagemaker_submit_directory": json.dumps(submit),
                }
            }
        )
    )
    (tree,) = lay_out(load_spec(str(path)), str(tmp_path / "run"), {}, container=container)
    stored = json.loads(Path(tree.root, "input", "config", "hyperparameters.json").read_text())
    value = stored.get("sagemaker_submit_directory")
    assert (json.loads(value) if value else None) == (expected and expected.format(base=tmp_path))
