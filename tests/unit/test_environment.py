"""Environment against the reference's worked example (reference doc, "Facts for a compatibility test")."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from smtk import hardware
from smtk.environment import MAPPING_KEYS, Environment
from smtk.errors import ConfigError
from tests.helpers.jobtree import make_tree

DATA = Path(__file__).resolve().parents[1] / "data" / "worked_example.json"
WORKED = json.loads(DATA.read_text())

# Expected values copied from the reference document (verified there against 5.1.4);
# "/opt/ml" stands for the tree's root.
RESOURCE = (
    '{"current_group_name":"homogeneousCluster","current_host":"algo-2","current_instance_type":"ml.m5.xlarge",'
    '"hosts":["algo-1","algo-2"],"instance_groups":[{"hosts":["algo-2","algo-1"],"instance_group_name":'
    '"homogeneousCluster","instance_type":"ml.m5.xlarge"}],"network_interface_name":"eth0"}'
)
INPUT_DATA = (
    '{"eval":{"RecordWrapperType":"None","S3DistributionType":"FullyReplicated","TrainingInputMode":"File"},'
    '"train":{"ContentType":"text/csv","RecordWrapperType":"None","S3DistributionType":"FullyReplicated",'
    '"TrainingInputMode":"File"}}'
)
GROUPS_DICT = (
    '{"homogeneousCluster":{"hosts":["algo-2","algo-1"],"instance_group_name":"homogeneousCluster",'
    '"instance_type":"ml.m5.xlarge"}}'
)
HPS = (
    '{"batch-size":64,"extra":{"a":1,"b":"x y"},"layers":[64,32],"lr":0.001,"n":3,"name":"plain string",'
    '"none_val":null,"optimizer":"adam","use_amp":true}'
)
ARGV = ["--batch-size", "64", "--extra", "a=1,b=x y", "--layers", "[64, 32]", "--lr", "0.001", "-n", "3",
        "--name", "plain string", "--none_val", "", "--optimizer", "adam", "--use_amp", "True"]  # fmt: skip
TRAINING_ENV = (
    '{"additional_framework_parameters":{"sagemaker_mpi_enabled":false},"channel_input_dirs":{"eval":'
    '"/opt/ml/input/data/eval","train":"/opt/ml/input/data/train"},"current_host":"algo-2",'
    '"current_instance_group":"homogeneousCluster","current_instance_group_hosts":["algo-2","algo-1"],'
    '"current_instance_type":"ml.m5.xlarge","distribution_hosts":[],"distribution_instance_groups":[],'
    '"framework_module":null,"hosts":["algo-1","algo-2"],"hyperparameters":' + HPS + ","
    '"input_config_dir":"/opt/ml/input/config","input_data_config":' + INPUT_DATA + ","
    '"input_dir":"/opt/ml/input","instance_groups":["homogeneousCluster"],"instance_groups_dict":'
    + GROUPS_DICT
    + ","
    '"is_hetero":false,"is_master":false,"is_modelparallel_enabled":null,"is_smddpmprun_installed":false,'
    '"is_smddprun_installed":false,"job_name":"job-1","log_level":20,"master_hostname":"algo-1",'
    '"model_dir":"/opt/ml/model","module_dir":"s3://my-bucket/job-1/source/sourcedir.tar.gz",'
    '"module_name":"train","network_interface_name":"eth0","num_cpus":CPUS,"num_gpus":0,"num_neurons":0,'
    '"output_data_dir":"/opt/ml/output/data","output_dir":"/opt/ml/output","output_intermediate_dir":'
    '"/opt/ml/output/intermediate","resource_config":'
    + RESOURCE
    + ',"topology":[],"user_entry_point":"train.py"}'
)
EXPECTED: dict[str, str] = {
    "SM_CHANNELS": '["eval","train"]',
    "SM_CHANNEL_EVAL": "/opt/ml/input/data/eval",
    "SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
    "SM_CURRENT_HOST": "algo-2",
    "SM_CURRENT_INSTANCE_GROUP": "homogeneousCluster",
    "SM_CURRENT_INSTANCE_GROUP_HOSTS": '["algo-2","algo-1"]',
    "SM_CURRENT_INSTANCE_TYPE": "ml.m5.xlarge",
    "SM_DISTRIBUTION_INSTANCE_GROUPS": "[]",
    "SM_FRAMEWORK_MODULE": "",
    "SM_FRAMEWORK_PARAMS": '{"sagemaker_mpi_enabled":false}',
    "SM_HOSTS": '["algo-1","algo-2"]',
    "SM_HPS": HPS,
    "SM_HP_BATCH-SIZE": "64",
    "SM_HP_EXTRA": '{"a":1,"b":"x y"}',
    "SM_HP_LAYERS": "[64,32]",
    "SM_HP_LR": "0.001",
    "SM_HP_N": "3",
    "SM_HP_NAME": "plain string",
    "SM_HP_NONE_VAL": "",
    "SM_HP_OPTIMIZER": "adam",
    "SM_HP_USE_AMP": "true",
    "SM_INPUT_CONFIG_DIR": "/opt/ml/input/config",
    "SM_INPUT_DIR": "/opt/ml/input",
    "SM_INPUT_DATA_CONFIG": INPUT_DATA,
    "SM_INSTANCE_GROUPS": '["homogeneousCluster"]',
    "SM_INSTANCE_GROUPS_DICT": GROUPS_DICT,
    "SM_IS_HETERO": "false",
    "SM_LOG_LEVEL": "20",
    "SM_MODEL_DIR": "/opt/ml/model",
    "SM_MODULE_DIR": "s3://my-bucket/job-1/source/sourcedir.tar.gz",
    "SM_MODULE_NAME": "train",
    "SM_NETWORK_INTERFACE_NAME": "eth0",
    "SM_NUM_CPUS": "CPUS",
    "SM_NUM_GPUS": "0",
    "SM_NUM_NEURONS": "0",
    "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
    "SM_OUTPUT_DIR": "/opt/ml/output",
    "SM_OUTPUT_INTERMEDIATE_DIR": "/opt/ml/output/intermediate",
    "SM_RESOURCE_CONFIG": RESOURCE,
    "SM_USER_ARGS": json.dumps(ARGV, separators=(",", ":")),
    "SM_USER_ENTRY_POINT": "train.py",
    "SM_TRAINING_ENV": TRAINING_ENV,
}


def _worked_tree(tmp_path: Path, **changes: Any) -> Path:
    spec = {"hyperparameters": WORKED["hyperparameters"], "inputdataconfig": WORKED["inputdataconfig"],
            "resourceconfig": WORKED["resourceconfig"]}  # fmt: skip
    spec.update(changes)
    return make_tree(tmp_path, encode=False, code={"train.py": "print('hi')\n"}, **spec)


ENVIRON = {"PATH": "/usr/bin:/bin", "TRAINING_JOB_NAME": "job-1"}


def test_worked_example_env_vars_byte_for_byte(tmp_path: Path) -> None:
    root = _worked_tree(tmp_path)
    env = Environment(root=root, environ=ENVIRON)
    cpus = str(hardware.cpu_count())
    expected = {k: v.replace("/opt/ml", str(root)).replace("CPUS", cpus) for k, v in EXPECTED.items()}
    assert len(expected) == 42
    assert env.to_env_vars() == expected
    assert env.to_cmd_args() == ARGV


def test_mapping_is_the_reference_property_set(tmp_path: Path) -> None:
    env = Environment(root=_worked_tree(tmp_path), environ=ENVIRON)
    assert len(env) == len(MAPPING_KEYS) == 37
    assert list(env) == sorted(MAPPING_KEYS)
    assert dict(env)["hosts"] == ["algo-1", "algo-2"]
    with pytest.raises(KeyError):
        env["paths"]  # an attribute, not a property of the reference
    with pytest.raises(TypeError):
        env["hosts"] = ["x"]  # type: ignore[index]
    assert "current_host" in env and "nope" not in env


def test_variants_mpi_and_missing_groups(tmp_path: Path) -> None:
    hps = {**WORKED["hyperparameters"], "sagemaker_mpi_enabled": "true"}
    env = Environment(root=_worked_tree(tmp_path / "a", hyperparameters=hps), environ=ENVIRON)
    assert env.distribution_instance_groups == ["homogeneousCluster"]
    assert env.distribution_hosts == ["algo-2", "algo-1"]
    assert (env.master_hostname, env.is_master, env.distribution_enabled) == ("algo-2", True, True)

    rc = {k: v for k, v in WORKED["resourceconfig"].items() if k != "instance_groups"}
    env = Environment(
        root=_worked_tree(tmp_path / "b", hyperparameters=hps, resourceconfig=rc), environ=ENVIRON
    )
    assert env.distribution_hosts == ["algo-1", "algo-2"]
    assert (env.master_hostname, env.instance_groups, env.current_instance_group_hosts) == ("algo-1", [], [])


def test_reads_no_process_state_it_was_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _worked_tree(tmp_path)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(root))
    monkeypatch.setenv("TRAINING_JOB_NAME", "from-os-environ")
    before = dict(os.environ)
    env = Environment()
    env.to_env_vars()
    assert dict(os.environ) == before, "Environment must never write os.environ"
    assert env.paths.root == str(root) and env.job_name == "from-os-environ"
    # An explicit root beats SAGEMAKER_BASE_DIR; an explicit environ replaces os.environ.
    other = _worked_tree(tmp_path / "other")
    assert Environment(root=other).paths.root == str(other)
    assert Environment(environ={"SAGEMAKER_BASE_DIR": str(other)}).job_name is None


def test_program_resolution(tmp_path: Path) -> None:
    root = _worked_tree(tmp_path)
    assert Environment(root=root, environ={"SAGEMAKER_PROGRAM": "env.py"}).user_entry_point == "env.py"
    empty = Environment(root=root, environ={"SAGEMAKER_PROGRAM": ""})
    assert (empty.user_entry_point, empty.module_name) == ("train.py", "")
    bare = Environment(root=_worked_tree(tmp_path / "b", hyperparameters={}), environ={})
    assert (bare.user_entry_point, bare.module_name) == (None, "None")


def test_argv_format_opt_in(tmp_path: Path) -> None:
    root = _worked_tree(tmp_path)
    assert Environment(root=root, environ={}).argv_format == "compat"
    env = Environment(root=root, environ={"SMTK_ARGV_FORMAT": "json"})
    argv = env.to_cmd_args()
    assert argv[argv.index("--use_amp") + 1] == "true"
    assert argv[argv.index("--layers") + 1] == "[64,32]"
    assert json.loads(env.to_env_vars()["SM_USER_ARGS"]) == argv
    assert env.to_cmd_args("compat") == ARGV
    hps = {**WORKED["hyperparameters"], "smtk_argv_format": '"compat"'}
    per_job = Environment(
        root=_worked_tree(tmp_path / "b", hyperparameters=hps), environ={"SMTK_ARGV_FORMAT": "json"}
    )
    assert per_job.to_cmd_args() == ARGV, "the hyperparameter wins over the variable"
    assert Environment(root=root, environ={"SMTK_ARGV_FORMAT": ""}).argv_format == "compat"


def test_log_level_forms(tmp_path: Path) -> None:
    for stored, level in (("10", 10), ('"30"', 30), ('"DEBUG"', 10), ("warning", 30)):
        root = _worked_tree(
            tmp_path / stored.strip('"'), hyperparameters={"sagemaker_container_log_level": stored}
        )
        assert Environment(root=root, environ={}).log_level == level


def test_missing_files_mean_defaults(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    env = Environment(root=root, environ={})
    assert env.hyperparameters == {} and env.channel_input_dirs == {}
    assert env.hosts == [env.current_host] and env.checkpoint_config is None
    assert not root.exists(), "reading a missing tree creates nothing"


def test_error_in_typed_accessor_through_environment(tmp_path: Path) -> None:
    env = Environment(root=_worked_tree(tmp_path), environ={})
    assert env.hyperparameters.get_int("batch-size") == 64
    assert env.hyperparameters.get_bool("use_amp") is True
    with pytest.raises(ConfigError, match="key 'name': expected an integer"):
        env.hyperparameters.get_int("name")
