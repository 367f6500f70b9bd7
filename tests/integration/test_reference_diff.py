"""Differential test: smtk's ``SM_*`` variables and argv against the reference toolkit.

The reference (``sagemaker-training`` 5.1.4) lives in its own virtualenv, ``.venv-ref``
(or ``$SMTK_REFERENCE_PYTHON``); the test skips with the reason when it is absent.

The reference resolves ``SAGEMAKER_BASE_DIR`` when ``sagemaker_training.environment`` is
imported and writes ``os.environ``, so every tree needs a fresh process. Starting one
interpreter per tree costs about a second here (boto3, numpy), so one *oracle*
interpreter, started with a clean ``env -i``-style environment, preloads the reference's
heavy dependencies but not ``sagemaker_training.environment`` itself, and then forks one
child per tree; the child replaces its whole ``os.environ`` with the tree's environment,
imports the module fresh and reports ``to_env_vars()`` / ``to_cmd_args()``. A few trees are
also run the slow way (a new ``env -i`` interpreter each) to show the fork changes nothing.

smtk gets exactly the same environment mapping (``Environment(environ=...)``).

Known, intentional differences (docs/environment.md, "Differences from the reference"),
normalised or tested separately here:

- ``SM_NUM_CPUS`` (and ``num_cpus`` inside ``SM_TRAINING_ENV``): smtk counts the CPUs this
  process may use (affinity, cgroup quota); the reference counts the machine's. Both
  are replaced by a placeholder before comparing.
- ``smtk_*`` hyperparameters are reserved for smtk: they never reach argv or ``SM_HP_*``
  but are kept in ``SM_FRAMEWORK_PARAMS`` (the reference treats them as user
  hyperparameters). :func:`test_smtk_reserved_prefix_is_the_only_difference` checks that
  this is the *only* effect.
- argv may be rendered as JSON (``smtk_argv_format=json`` / ``SMTK_ARGV_FORMAT=json``);
  never the default, so no tree here sets it.
- Input the reference accepts but that cannot be right (``current_host`` not in
  ``hosts``, unknown ``TrainingInputMode``, ...) is a ``ConfigError`` in smtk; those trees
  are in tests/unit/test_config_errors.py, not here.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from smtk import hardware
from smtk.environment import Environment
from tests.helpers.jobtree import make_tree

REPO = Path(__file__).resolve().parents[2]
REFERENCE_PYTHON = Path(os.environ.get("SMTK_REFERENCE_PYTHON", str(REPO / ".venv-ref" / "bin" / "python")))
WORKED = json.loads((REPO / "tests" / "data" / "worked_example.json").read_text())

pytestmark = pytest.mark.skipif(
    not REFERENCE_PYTHON.exists(),
    reason=f"reference toolkit not installed: no interpreter at {REFERENCE_PYTHON} "
    "(create .venv-ref with `pip install sagemaker-training==5.1.4`, or set SMTK_REFERENCE_PYTHON)",
)

# Runs under the reference's interpreter. Reads a JSON list of cases on stdin, prints
# {case id: result} on stdout.
ORACLE = r"""
import json, os, sys
import boto3, boto3.session, botocore.session  # preloaded: each forked child stays cheap
import sagemaker_training.logging_config, sagemaker_training.mapping, sagemaker_training.params
assert "sagemaker_training.environment" not in sys.modules

SIDE = ("SAGEMAKER_JOB_NAME", "CURRENT_HOST", "SAGEMAKER_REGION")

def run_case(case):
    os.environ.clear()
    os.environ.update(case["env"])
    os.chdir(case["cwd"])
    from sagemaker_training import environment
    env = environment.Environment()
    return {
        "ok": True,
        "env_vars": env.to_env_vars(),
        "argv": env.to_cmd_args(),
        "side": {name: os.environ.get(name) for name in SIDE},
    }

results = {}
for case in json.load(sys.stdin):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            out = run_case(case)
        except BaseException as exc:
            out = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
        with os.fdopen(write_end, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(out))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "r", encoding="utf-8") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    results[case["id"]] = json.loads(data)
json.dump(results, sys.stdout)
"""

# The same, one tree, no fork: for cross-checking the oracle.
SINGLE = r"""
import json, os
from sagemaker_training import environment
env = environment.Environment()
side = {n: os.environ.get(n) for n in ("SAGEMAKER_JOB_NAME", "CURRENT_HOST", "SAGEMAKER_REGION")}
print(json.dumps({"ok": True, "env_vars": env.to_env_vars(), "argv": env.to_cmd_args(), "side": side}))
"""

RC = WORKED["resourceconfig"]
IDC = WORKED["inputdataconfig"]
ONE = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
FILE = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}


def _hetero(current: str = "algo-3") -> dict[str, Any]:
    return {
        "current_host": current,
        "current_instance_type": "ml.p4d.24xlarge" if current != "algo-3" else "ml.c5.xlarge",
        "current_group_name": "train_group" if current != "algo-3" else "data_group",
        "hosts": ["algo-1", "algo-2", "algo-3"],
        "instance_groups": [
            {"instance_group_name": "data_group", "instance_type": "ml.c5.xlarge", "hosts": ["algo-3"]},
            {
                "instance_group_name": "train_group",
                "instance_type": "ml.p4d.24xlarge",
                "hosts": ["algo-2", "algo-1"],
            },
        ],
        "network_interface_name": "eth0",
    }


def _no_groups(rc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rc.items() if k != "instance_groups"}


# (id, raw hyperparameters, inputdataconfig, resourceconfig, extra environment)
Case = tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, str]]

CASES: list[Case] = [
    ("worked-example", WORKED["hyperparameters"], IDC, RC, {"TRAINING_JOB_NAME": "job-1"}),
    ("empty", {}, {}, ONE, {}),
    (
        "decoding-probe",
        {
            "a": "1.50",
            "b": "001",
            "c": "NaN",
            "d": "True",
            "e": "1e-5",
            "f": 7,
            "g": '{"x": {"y": [1, true]}}',
            "h": '""',
        },
        {},
        ONE,
        {},
    ),
    (
        "numbers",
        {
            "big": "1e400",
            "neg0": "-0",
            "exp": "1E5",
            "hex": "0x10",
            "plus": "+1",
            "dot": ".5",
            "dot2": "5.",
            "ws": " 42 ",
            "inf": "Infinity",
            "ninf": "-Infinity",
            "long": "123456789012345678901234567890",
            "f": "0.1",
            "tiny": "5e-324",
            "negexp": "-1.5e-7",
        },
        {},
        ONE,
        {},
    ),
    (
        "booleans",
        {
            "t": "true",
            "f": "false",
            "T": "True",
            "F": "FALSE",
            "yes": "yes",
            "one": "1",
            "json_t": '"true"',
            "raw_true": True,
            "raw_false": False,
        },
        {},
        ONE,
        {},
    ),
    (
        "unicode",
        {
            "u": '"é"',
            "v": "é",
            "w": '{"k": "é", "z": ["ü", 1]}',
            "emoji": '"\\ud83d\\ude80"',
            "rocket": "🚀",
            "cjk": "训练",
            "ключ": "значение",
            "esc": '"tab\\there"',
            "nl": "line1\nline2",
        },
        {},
        ONE,
        {},
    ),
    (
        "nested",
        {
            "d": '{"b": {"c": [1, {"d": null}]}, "a": "x y", "e": 1.0}',
            "l": '[[1, 2], ["a", {"b": false}]]',
            "empty_d": "{}",
            "empty_l": "[]",
            "dl": '{"z": [], "y": {}}',
        },
        {},
        ONE,
        {},
    ),
    (
        "null-and-empty",
        {"n": "null", "e": "", "q": '""', "sp": " ", "json_null": None, "nn": '"null"'},
        {},
        ONE,
        {},
    ),
    (
        "key-shapes",
        {
            "h": "1",
            "x": "y",
            "Z": "true",
            "Batch-Size": "1",
            "batch-size": "2",
            "batch_size": "3",
            "LR": "0.1",
            "lr": "0.2",
            "a b": "c",
            "--already": "1",
            "-": "dash",
            "_": "u",
            "9": "nine",
            "ü": "1",
        },
        {},
        ONE,
        {},
    ),
    ("empty-key", {"": "x", "a": "1"}, {}, ONE, {}),
    (
        "reserved-keys",
        {
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"/opt/code"',
            "sagemaker_enable_cloudwatch_metrics": "false",
            "sagemaker_region": '"eu-west-1"',
            "sagemaker_container_log_level": "10",
            "sagemaker_job_name": '"j"',
            "default_user_module_name": '"m"',
            "_tuning_objective_metric": '"loss"',
            "sagemaker_s3_output": '"s3://b/p"',
            "sagemaker_foo": '"bar"',
            "sagemaker_mpi_custom_mpi_options": '"-x A=1"',
            "sagemaker_instance_type": '"ml.p4d.24xlarge"',
            "user": "1",
            "Sagemaker_program": "not reserved",
            "sagemakerx": "1",
        },
        {},
        ONE,
        {},
    ),
    (
        "raw-api-strings",
        {
            "optimizer": "adam",
            "epochs": "10",
            "lr": "1e-3",
            "flag": "True",
            "layers": "64,32",
            "path": "/data/x",
            "quoted": "'single'",
            "cmd": "$(id); rm -rf /",
            "url": "https://user:pw@example.com/x",
        },
        {},
        ONE,
        {},
    ),
    (
        "channels-many",
        {},
        {
            "train": {**FILE, "ContentType": "application/x-recordio", "RecordWrapperType": "RecordIO"},
            "validation": {**FILE, "TrainingInputMode": "Pipe"},
            "test-set": {**FILE, "TrainingInputMode": "FastFile", "S3DistributionType": "ShardedByS3Key"},
            "Images.v2": {**FILE, "CompressionType": "Gzip", "ShuffleConfig": {"Seed": 3}},
            "a": {},
            "z_last": {"TrainingInputMode": "File"},
        },
        ONE,
        {},
    ),
    ("channels-case-collision", {}, {"train": FILE, "TRAIN": {**FILE, "TrainingInputMode": "Pipe"}}, ONE, {}),
    (
        "hetero-data-host",
        {"sagemaker_distribution_instance_groups": '["train_group"]'},
        IDC,
        _hetero("algo-3"),
        {},
    ),
    (
        "hetero-train-host",
        {"sagemaker_distribution_instance_groups": '["train_group"]'},
        IDC,
        _hetero("algo-1"),
        {},
    ),
    ("hetero-mpi-no-groups-hp", {"sagemaker_mpi_enabled": "true"}, {}, _hetero("algo-2"), {}),
    (
        "hetero-both-groups",
        {"sagemaker_distribution_instance_groups": '["train_group", "data_group"]'},
        {},
        _hetero("algo-2"),
        {},
    ),
    (
        "hetero-unknown-group",
        {"sagemaker_distribution_instance_groups": '["nope"]'},
        {},
        _hetero("algo-2"),
        {},
    ),
    (
        "hetero-empty-groups",
        {"sagemaker_distribution_instance_groups": "[]", "sagemaker_mpi_enabled": "true"},
        {},
        _hetero("algo-2"),
        {},
    ),
    (
        "mpi-true",
        {"sagemaker_mpi_enabled": "true", "sagemaker_mpi_num_of_processes_per_host": "8"},
        IDC,
        RC,
        {},
    ),
    ("mpi-false", {"sagemaker_mpi_enabled": "false"}, IDC, RC, {}),
    # Raw "False" is not JSON: it stays the (truthy) string "False", as in the reference.
    ("mpi-raw-False", {"sagemaker_mpi_enabled": "False"}, IDC, RC, {}),
    ("mpi-true-no-groups", {"sagemaker_mpi_enabled": "true"}, IDC, _no_groups(RC), {}),
    ("no-groups", {}, IDC, _no_groups(RC), {}),
    ("no-groups-one-host", {"sagemaker_torch_distributed_enabled": "true"}, {}, ONE, {}),
    # No current_group_name: the reference's default group matches none of the groups.
    (
        "group-name-default-unmatched",
        {"sagemaker_mpi_enabled": "true"},
        {},
        {k: v for k, v in _no_groups(RC).items() if k != "current_group_name"}
        | {"instance_groups": [{"instance_group_name": "g1", "instance_type": "t", "hosts": ["algo-1"]}]},
        {},
    ),
    (
        "hosts-unordered",
        {"sagemaker_pytorch_ddp_enabled": "true"},
        {},
        {**RC, "hosts": ["algo-2", "algo-1"], "current_host": "algo-1"},
        {},
    ),
    (
        "topology",
        {},
        {},
        {
            **RC,
            "topology": [
                {"hostName": "algo-1", "capacityUnitId": "cu-1"},
                {"hostName": "algo-2", "capacityUnitId": "cu-1"},
            ],
        },
        {},
    ),
    (
        "extra-resource-keys",
        {},
        {},
        {**RC, "future_key": {"x": [1]}, "current_instance_type": "ml.g5.xlarge"},
        {},
    ),
    ("iface-custom", {}, {}, {**ONE, "network_interface_name": "ens5"}, {}),
    ("iface-default", {}, {}, {"current_host": "algo-1", "hosts": ["algo-1"]}, {}),
    ("trn2", {}, {}, {**ONE, "current_instance_type": "ml.trn2.48xlarge"}, {}),
    ("program-env-wins", {"sagemaker_program": '"hp.py"'}, {}, ONE, {"SAGEMAKER_PROGRAM": "env.py"}),
    ("program-env-empty", {"sagemaker_program": '"hp.py"'}, {}, ONE, {"SAGEMAKER_PROGRAM": ""}),
    ("program-none", {}, {}, ONE, {}),
    ("program-shell", {"sagemaker_program": '"run.sh"'}, {}, ONE, {}),
    ("program-nested", {}, {}, ONE, {"SAGEMAKER_PROGRAM": "pkg/train.py"}),
    ("program-module-dots", {"sagemaker_program": '"my.mod.py"'}, {}, ONE, {}),
    ("training-module", {}, {}, ONE, {"SAGEMAKER_TRAINING_MODULE": "pkg.mod:main"}),
    ("training-module-empty", {}, {}, ONE, {"SAGEMAKER_TRAINING_MODULE": ""}),
    ("mp-params", {}, {}, ONE, {"SM_HP_MP_PARAMETERS": '{"ddp_dist_backend": "auto"}'}),
    ("mp-params-empty-obj", {}, {}, ONE, {"SM_HP_MP_PARAMETERS": "{}"}),
    ("mp-params-empty", {}, {}, ONE, {"SM_HP_MP_PARAMETERS": ""}),
    ("job-name-empty", {}, {}, ONE, {"TRAINING_JOB_NAME": ""}),
    ("job-name-unicode", {}, {}, ONE, {"TRAINING_JOB_NAME": "jöb-1"}),
    ("log-level-warning", {"sagemaker_container_log_level": "30"}, {}, ONE, {}),
    ("submit-dir-local", {"sagemaker_submit_directory": '"/tmp/src"'}, {}, ONE, {}),
    ("region-env", {}, {}, ONE, {"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "ap-south-1"}),
    (
        "huge-value",
        {"blob": json.dumps("x" * 100_000), "big_list": json.dumps(list(range(5000)))},
        {},
        ONE,
        {},
    ),
    ("many-keys", {f"key_{i:04d}": str(i) for i in range(400)}, {}, ONE, {}),
    (
        "non-string-values",
        {"i": 7, "f": 0.5, "b": True, "n": None, "l": [1, "a"], "d": {"b": 1, "a": [True]}},
        {},
        ONE,
        {},
    ),
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.randint(-(10**12), 10**12)
    if kind == 1:
        return rng.choice([0.0, -0.0, 1.5, 1e-5, 3.14159, 1e300, -2.5e-8, rng.uniform(-1e6, 1e6)])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind in (3, 4, 5):
        alphabet = string.ascii_letters + string.digits + " -_=,.:/'\"\\$[]{}éß训🚀\t"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
    if kind in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {_random_key(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _random_key(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 10)))


def _random_raw(rng: random.Random, value: Any) -> Any:
    """How a value may be stored: SDK-encoded, a raw string, or a tricky literal."""
    style = rng.randrange(4)
    if style == 0 or not isinstance(value, str):
        return json.dumps(value) if rng.randrange(6) else value
    if style == 1:
        return value
    return rng.choice(
        ["True", "False", "NaN", "001", "1.50", "1e-5", "null", "[1, 2", '{"a":', " ", "-", "0x1F"]
    )


def _random_cases(count: int, seed: int = 20240611) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    for index in range(count):
        hps: dict[str, Any] = {}
        for _ in range(rng.randrange(0, 8)):
            key = _random_key(rng)
            if rng.randrange(8) == 0:
                key = (
                    rng.choice(["sagemaker_", "smtk_x", "_tuning_objective_metric", "sagemaker_program"])
                    + key
                )
                key = key if not key.startswith("smtk_") else "s" + key  # smtk_* is compared separately
                if key.startswith("sagemaker_program"):
                    continue
            hps[key] = _random_raw(rng, _random_value(rng))
        channels = {_random_key(rng): dict(FILE) for _ in range(rng.randrange(0, 4))}
        n_hosts = rng.randrange(1, 4)
        hosts = [f"algo-{i + 1}" for i in range(n_hosts)]
        rc: dict[str, Any] = {
            "current_host": rng.choice(hosts),
            "hosts": hosts,
            "network_interface_name": "eth0",
        }
        if rng.randrange(2):
            rc["instance_groups"] = [
                {
                    "instance_group_name": "homogeneousCluster",
                    "instance_type": "ml.m5.xlarge",
                    "hosts": rng.sample(hosts, len(hosts)),
                }
            ]
            rc["current_group_name"] = "homogeneousCluster"
        if rng.randrange(3) == 0:
            hps[rng.choice(["sagemaker_mpi_enabled", "sagemaker_pytorch_ddp_enabled"])] = rng.choice(
                ["true", "false", "True", "1", "0"]
            )
        cases.append((f"random-{index:02d}", hps, channels, rc, {}))
    return cases


ALL_CASES = CASES + _random_cases(40)

_CPUS = re.compile(r'"num_cpus":\d+')


def _normalise(env_vars: Mapping[str, str]) -> dict[str, str]:
    """Remove the documented SM_NUM_CPUS difference, byte-for-byte elsewhere."""
    out = dict(env_vars)
    if "SM_NUM_CPUS" in out:
        out["SM_NUM_CPUS"] = "<cpus>"
    if "SM_TRAINING_ENV" in out:
        out["SM_TRAINING_ENV"] = _CPUS.sub('"num_cpus":"<cpus>"', out["SM_TRAINING_ENV"])
    return out


def _case_env(home: Path, root: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "SAGEMAKER_BASE_DIR": str(root),
        # No network: boto3's region lookup (always run by the reference) must stay local.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
    }
    env.update(extra)
    return env


def _build(tmp: Path, case: Case) -> tuple[Path, dict[str, str]]:
    name, hps, idc, rc, extra = case
    base = tmp / name
    base.mkdir()
    root = make_tree(
        base,
        hyperparameters=hps,
        inputdataconfig=idc,
        resourceconfig=rc,
        encode=False,
        code={"train.py": "print('hi')\n"},
    )
    (base / "home").mkdir()
    return root, _case_env(base / "home", root, extra)


def _oracle(cases: list[dict[str, Any]]) -> dict[str, Any]:
    proc = subprocess.run(
        [str(REFERENCE_PYTHON), "-c", ORACLE],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cases[0]["env"]["HOME"] if cases else "/"},
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="module")
def compared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Any, Any, dict[str, str]]]]:
    """{case id: (reference result, smtk result, environment)} for every tree."""
    tmp = tmp_path_factory.mktemp("refdiff")
    requests = []
    envs: dict[str, dict[str, str]] = {}
    for case in ALL_CASES:
        root, env = _build(tmp, case)
        envs[case[0]] = env
        requests.append({"id": case[0], "env": env, "cwd": str(root.parent)})
    reference = _oracle(requests)
    hardware.clear_cache()
    out: dict[str, tuple[Any, Any, dict[str, str]]] = {}
    for case in ALL_CASES:
        env = envs[case[0]]
        try:
            smtk_env = Environment(environ=env)
            mine: dict[str, Any] = {"env_vars": smtk_env.to_env_vars(), "argv": smtk_env.to_cmd_args()}
        except Exception as exc:  # reported per case by the test below
            mine = {"error": f"{type(exc).__name__}: {exc}"}
        out[case[0]] = (reference[case[0]], mine, env)
    yield out


@pytest.mark.parametrize("case_id", [case[0] for case in ALL_CASES])
def test_sm_variables_and_argv_match_reference(
    compared: dict[str, tuple[Any, Any, dict[str, str]]], case_id: str
) -> None:
    reference, mine, _ = compared[case_id]
    assert reference["ok"], f"the reference failed on {case_id}: {reference.get('error')}"
    assert "error" not in mine, mine.get("error")
    assert mine["argv"] == reference["argv"]
    ref_vars, my_vars = _normalise(reference["env_vars"]), _normalise(mine["env_vars"])
    assert sorted(my_vars) == sorted(ref_vars)
    for name in sorted(ref_vars):
        assert my_vars[name] == ref_vars[name], name


def test_oracle_matches_a_fresh_interpreter(
    compared: dict[str, tuple[Any, Any, dict[str, str]]],
) -> None:
    """The forked oracle gives what a brand-new ``env -i`` interpreter gives."""
    for case_id in ("worked-example", "hetero-train-host", "program-env-wins"):
        reference, _, env = compared[case_id]
        proc = subprocess.run(
            ["env", "-i", *[f"{k}={v}" for k, v in env.items()], str(REFERENCE_PYTHON), "-c", SINGLE],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout) == reference


def test_worked_example_side_effects_are_what_smtk_exports(
    compared: dict[str, tuple[Any, Any, dict[str, str]]],
) -> None:
    """The reference writes three variables into os.environ; smtk computes the same values."""
    reference, _, env = compared["worked-example"]
    smtk_env = Environment(environ=env)
    assert reference["side"] == {
        "SAGEMAKER_JOB_NAME": smtk_env.job_name_or_default,
        "CURRENT_HOST": smtk_env.current_host,
        "SAGEMAKER_REGION": smtk_env.region,
    }


def test_smtk_reserved_prefix_is_the_only_difference(tmp_path: Path) -> None:
    """``smtk_*`` keys leave argv/SM_HP_*/SM_HPS and land in SM_FRAMEWORK_PARAMS; nothing else moves."""
    base_hps = dict(WORKED["hyperparameters"])
    with_smtk = {**base_hps, "smtk_future_setting": '"x"', "smtk_argv_format": '"compat"'}
    cases: list[Case] = [
        ("without", base_hps, IDC, RC, {"TRAINING_JOB_NAME": "job-1"}),
        ("with", with_smtk, IDC, RC, {"TRAINING_JOB_NAME": "job-1"}),
    ]
    built = {case[0]: _build(tmp_path, case) for case in cases}
    reference = _oracle(
        [{"id": name, "env": env, "cwd": str(root.parent)} for name, (root, env) in built.items()]
    )
    # The reference treats smtk_* as user hyperparameters ...
    assert "--smtk_future_setting" in reference["with"]["argv"]
    mine = Environment(environ=built["with"][1])
    # ... smtk does not: argv and SM_HP_* are exactly the reference's without them,
    assert mine.to_cmd_args() == reference["without"]["argv"]
    my_vars = _normalise(_unroot(mine.to_env_vars(), built["with"][0]))
    ref_vars = _normalise(_unroot(reference["without"]["env_vars"], built["without"][0]))
    framework = json.loads(my_vars.pop("SM_FRAMEWORK_PARAMS"))
    assert framework == {
        "sagemaker_mpi_enabled": False,
        "smtk_future_setting": "x",
        "smtk_argv_format": "compat",
    }
    assert json.loads(ref_vars.pop("SM_FRAMEWORK_PARAMS")) == {"sagemaker_mpi_enabled": False}
    my_training = json.loads(my_vars.pop("SM_TRAINING_ENV"))
    ref_training = json.loads(ref_vars.pop("SM_TRAINING_ENV"))
    assert my_training.pop("additional_framework_parameters") == framework
    ref_training.pop("additional_framework_parameters")
    assert my_training == ref_training
    assert my_vars == ref_vars


def _unroot(env_vars: Mapping[str, str], root: Path) -> dict[str, str]:
    return {name: value.replace(str(root), "<root>") for name, value in env_vars.items()}
