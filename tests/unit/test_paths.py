"""The /opt/ml layout."""

from __future__ import annotations

from pathlib import Path

from smtk.paths import DEFAULT_ROOT, Paths


def test_default_tree_is_the_reference_layout() -> None:
    paths = Paths()
    assert paths.root == DEFAULT_ROOT == "/opt/ml"
    assert {
        "code": paths.code_dir,
        "model": paths.model_dir,
        "input": paths.input_dir,
        "config": paths.input_config_dir,
        "data": paths.input_data_dir,
        "output": paths.output_dir,
        "output_data": paths.output_data_dir,
        "intermediate": paths.output_intermediate_dir,
        "checkpoints": paths.checkpoints_dir,
        "hp": paths.hyperparameters_file,
        "idc": paths.input_data_config_file,
        "rc": paths.resource_config_file,
        "ckpt": paths.checkpoint_config_file,
        "success": paths.success_file,
        "failure": paths.failure_file,
        "failure_json": paths.failure_json_file,
        "channel": paths.channel_dir("train"),
    } == {
        "code": "/opt/ml/code",
        "model": "/opt/ml/model",
        "input": "/opt/ml/input",
        "config": "/opt/ml/input/config",
        "data": "/opt/ml/input/data",
        "output": "/opt/ml/output",
        "output_data": "/opt/ml/output/data",
        "intermediate": "/opt/ml/output/intermediate",
        "checkpoints": "/opt/ml/checkpoints",
        "hp": "/opt/ml/input/config/hyperparameters.json",
        "idc": "/opt/ml/input/config/inputdataconfig.json",
        "rc": "/opt/ml/input/config/resourceconfig.json",
        "ckpt": "/opt/ml/input/config/checkpointconfig.json",
        "success": "/opt/ml/output/success",
        "failure": "/opt/ml/output/failure",
        "failure_json": "/opt/ml/output/failure.json",
        "channel": "/opt/ml/input/data/train",
    }


def test_from_environ_honours_sagemaker_base_dir() -> None:
    assert Paths.from_environ({"SAGEMAKER_BASE_DIR": "/tmp/job/opt/ml"}).model_dir == "/tmp/job/opt/ml/model"
    # os.path.join semantics, as the reference: a trailing slash does not double up.
    assert Paths.from_environ({"SAGEMAKER_BASE_DIR": "/tmp/job/"}).code_dir == "/tmp/job/code"
    assert Paths.from_environ({}).root == "/opt/ml"
    # Empty means unset (the reference would build relative paths from "").
    assert Paths.from_environ({"SAGEMAKER_BASE_DIR": ""}).root == "/opt/ml"


def test_building_paths_touches_nothing(tmp_path: Path) -> None:
    root = tmp_path / "nothing-here"
    paths = Paths(str(root))
    assert paths.output_intermediate_dir.startswith(str(root))
    assert not root.exists()
    assert paths == Paths(str(root))  # a value: comparable, hashable
    assert hash(paths) == hash(Paths(str(root)))
