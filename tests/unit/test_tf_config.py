"""TF_CONFIG and parameter servers, compared with AWS's TensorFlow toolkit on the same trees.

The oracle is ``sagemaker-tensorflow-training`` itself (``.venv-tfc``, installed with
``--no-deps`` by scripts/test.sh) running on the reference ``sagemaker-training``
(``.venv-ref``), in a subprocess: its ``_build_tf_config_for_mwms`` /
``_build_tf_config_for_ps`` for the pure cases, and its whole ``train(env, cmd_args)``
on a real ``sagemaker_training.environment.Environment`` read from each tree for the
decisions (which host gets which TF_CONFIG, which runner, where a parameter server starts,
who waits for the master). TensorFlow is replaced by a stand-in module that records what
the toolkit asks of it (its TF_CONFIG code never touches TensorFlow); ``entry_point.run``,
the forked server process and the curl loop are replaced by recorders. Nothing else is
mocked.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smtk import entry_point
from smtk.environment import Environment
from smtk.launch import select, tensorflow, tfserver
from tests.helpers.jobtree import make_tree

REPO = Path(__file__).resolve().parents[2]
REF_PYTHON = Path(os.environ.get("SMTK_REFERENCE_PYTHON", str(REPO / ".venv-ref" / "bin" / "python")))
TFC_SITES = sorted(glob.glob(str(REPO / ".venv-tfc" / "lib" / "python*" / "site-packages")))


def _oracle_missing() -> str | None:
    if not REF_PYTHON.exists():
        return f"the reference toolkit is not installed ({REF_PYTHON} missing; see scripts/test.sh)"
    if not TFC_SITES or not os.path.isdir(os.path.join(TFC_SITES[0], "sagemaker_tensorflow_container")):
        return (
            "the TensorFlow toolkit is not installed (.venv-tfc missing: "
            "`python -m venv .venv-tfc && .venv-tfc/bin/pip install --no-deps sagemaker-tensorflow-training`)"
        )
    return None


pytestmark = pytest.mark.skipif(_oracle_missing() is not None, reason=str(_oracle_missing()))

ORACLE = r"""
import json, os, sys, types
sys.path.append(sys.argv[1])
cases = json.load(open(sys.argv[2]))

# A stand-in for TensorFlow: the toolkit imports it at module level, and asks it for a
# server only in _run_ps. Every call is recorded.
record = {}
class ClusterSpec:
    def __init__(self, cluster):
        self.cluster = cluster
class Server:
    def __init__(self, spec, job_name, task_index, config):
        record["ps"] = {"cluster": spec.cluster, "job_name": job_name, "task_index": task_index,
                        "config": config}
    def join(self):
        pass
tf = types.ModuleType("tensorflow")
tf.train = types.SimpleNamespace(ClusterSpec=ClusterSpec)
tf.distribute = types.SimpleNamespace(Server=Server)
tf.compat = types.SimpleNamespace(v1=types.SimpleNamespace(ConfigProto=lambda **kw: kw))
sys.modules["tensorflow"] = tf

from sagemaker_training import environment
from sagemaker_tensorflow_container import training

class Process:  # the forked server process: recorded, not started
    def __init__(self, target):
        record["ps_process"] = True
    def start(self):
        record["ps_started"] = True
def run(**kwargs):
    record["runs"] = record.get("runs", 0) + 1
    record["tf_config"] = kwargs["env_vars"].get("TF_CONFIG")
    runner = kwargs.get("runner_type", training.runner.ProcessRunnerType)
    record["runner"] = getattr(runner, "name", str(runner))
def waits(master):
    record["waits_for"] = master
training.multiprocessing = types.SimpleNamespace(Process=Process)
training.entry_point.run = run
training._wait_until_master_is_down = waits

out = {"functions": [], "trees": []}
for hosts, current, kind in cases["functions"]:
    try:
        if kind == "mwms":
            value = training._build_tf_config_for_mwms(hosts, current)
        else:
            value = training._build_tf_config_for_ps(hosts, current, ps_task=(kind == "ps-task"))
        out["functions"].append(json.dumps(value))
    except Exception as exc:
        out["functions"].append(f"error: {type(exc).__name__}")
for root in cases["trees"]:
    config = os.path.join(root, "input", "config")
    environment.hyperparameters_file_dir = os.path.join(config, "hyperparameters.json")
    environment.resource_config_file_dir = os.path.join(config, "resourceconfig.json")
    environment.input_data_config_file_dir = os.path.join(config, "inputdataconfig.json")
    record.clear()
    try:
        env = environment.Environment()
        training.train(env, [])
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    out["trees"].append(dict(record))
print(json.dumps(out))
"""


def oracle(tmp_path: Path, functions: list[Any], trees: list[Path]) -> dict[str, Any]:
    script = tmp_path / "tf_oracle.py"
    script.write_text(ORACLE)
    cases = tmp_path / "tf_cases.json"
    cases.write_text(json.dumps({"functions": functions, "trees": [str(t) for t in trees]}))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_DEFAULT_REGION": "us-west-2", "HOME": "/tmp"}
    proc = subprocess.run(
        [str(REF_PYTHON), str(script), TFC_SITES[0], str(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _hosts(n: int) -> list[str]:
    return [f"algo-{i + 1}" for i in range(n)]


# -- the pure functions -----------------------------------------------------------------------------


def test_tf_config_functions_match_the_toolkit(tmp_path: Path) -> None:
    cases: list[Any] = []
    ours: list[str] = []
    for n in (1, 2, 3, 4):
        hosts = _hosts(n)
        for current in hosts:
            for kind in ("mwms", "ps", "ps-task"):
                cases.append([hosts, current, kind])
                try:
                    if kind == "mwms":
                        value = tensorflow.mwms_config(hosts, current)
                    else:
                        value = tensorflow.ps_config(hosts, current, ps_task=kind == "ps-task")
                    ours.append(tensorflow.encode(value))
                except ValueError:
                    ours.append("error: ValueError")
    theirs = oracle(tmp_path, cases, [])["functions"]
    assert len(theirs) == len(ours) == len(cases)
    for case, mine, reference in zip(cases, ours, theirs, strict=True):
        assert mine == reference, case
    # the one impossible request fails in both
    assert ours[cases.index([["algo-1"], "algo-1", "ps-task"])] == "error: ValueError"


# -- whole trees: which host gets what ----------------------------------------------------------------

MWMS = {"sagemaker_multi_worker_mirrored_strategy_enabled": True}
PS = {"sagemaker_parameter_server_enabled": True}
MPI = {"sagemaker_mpi_enabled": True}
SMDDP = {"sagemaker_distributed_dataparallel_enabled": True}
TORCH = {"sagemaker_torch_distributed_enabled": True}

FLAG_SETS: dict[str, dict[str, Any]] = {
    "none": {},
    "mwms": MWMS,
    "ps": PS,
    "ps+mwms": {**PS, **MWMS},
    "mwms+mpi": {**MWMS, **MPI},
    "ps+mpi": {**PS, **MPI},
    "mwms+smddp": {**MWMS, **SMDDP},
    "ps+smddp": {**PS, **SMDDP},
    "mwms+torch": {**MWMS, **TORCH},
    "ps+torch": {**PS, **TORCH},
    "mwms+mpi+torch": {**MWMS, **MPI, **TORCH},
}

GROUPS = [
    {"instance_group_name": "train", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1", "algo-2"]},
    {"instance_group_name": "data", "instance_type": "ml.m5.xlarge", "hosts": ["algo-3"]},
]


def _resource(current: str, hosts: list[str], groups: bool) -> dict[str, Any]:
    resource: dict[str, Any] = {"current_host": current, "hosts": hosts, "network_interface_name": "eth0"}
    if groups:
        resource["instance_groups"] = GROUPS
        resource["current_group_name"] = next(
            g["instance_group_name"] for g in GROUPS if current in g["hosts"]
        )
    return resource


def _trees(tmp_path: Path) -> list[tuple[str, Path]]:
    trees: list[tuple[str, Path]] = []
    layouts: list[tuple[int, bool]] = [(1, False), (2, False), (3, False), (3, True)]
    for n, groups in layouts:
        hosts = _hosts(n)
        for name, flags in FLAG_SETS.items():
            hps: dict[str, Any] = {"sagemaker_program": "train.py", **flags}
            if groups:
                hps["sagemaker_distribution_instance_groups"] = ["train"]
            for current in hosts:
                label = f"{n} hosts{' (groups)' if groups else ''}, {name}, {current}"
                base = tmp_path / f"{n}{'g' if groups else ''}-{name}-{current}"
                root = make_tree(
                    base,
                    hyperparameters=hps,
                    resourceconfig=_resource(current, hosts, groups),
                    inputdataconfig={},
                    code={"train.py": "print('hi')\n"},
                )
                trees.append((label, root))
    return trees


def _fake_mpirun(tmp_path: Path) -> str:
    """A directory holding an ``mpirun`` that is only looked up by the MPI plan, never run."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "mpirun").write_text("#!/bin/sh\nexit 99\n")
    (bindir / "mpirun").chmod(0o755)
    return str(bindir)


#: The toolkit's runner for each smtk launcher. The TensorFlow toolkit does not know the
#: torchrun flags (smtk, one toolkit for every framework, does); SMDDP is torchrun in smtk.
RUNNERS = {"process": "Process", "mpi": "MPI", "mpi-worker": "MPI", "torchrun": "SMDataParallel"}


def test_trees_match_the_toolkit(tmp_path: Path) -> None:
    trees = _trees(tmp_path)
    theirs = oracle(tmp_path, [], [root for _, root in trees])["trees"]
    path = _fake_mpirun(tmp_path)
    compared = errors = 0
    for (label, root), reference in zip(trees, theirs, strict=True):
        env = Environment(root=root, environ={"PATH": path})
        plan = select.build_plan(env, entry_point.resolve(env))
        launcher = select.launcher_for(env)
        if "error" in reference:
            # The toolkit fails on a host outside the distribution groups of a
            # parameter-server job (its tf_config is never built): smtk runs the script there.
            assert "ps" in label and "(groups)" in label and "algo-3" in label, (label, reference)
            assert "tf_config" in reference["error"]
            assert plan.kind == "process" and "TF_CONFIG" not in plan.env and not plan.companions, label
            errors += 1
            continue
        assert reference["runs"] == 1, label
        assert plan.env.get("TF_CONFIG") == reference["tf_config"], label
        expected = RUNNERS[launcher]
        if launcher == "torchrun" and "smddp" not in label:
            assert "torch" in label
            expected = "Process"  # the TensorFlow toolkit ignores the torchrun flags
        assert reference["runner"] == expected, (label, launcher, reference["runner"])
        if "ps" in reference:
            (server,) = plan.companions
            ps = json.loads(server.env["TF_CONFIG"])
            assert ps["cluster"] == reference["ps"]["cluster"], label
            assert ps["task"] == {"type": "ps", "index": reference["ps"]["task_index"]}, label
            assert reference["ps"]["job_name"] == "ps" and reference["ps"]["config"] == {
                "device_count": {"GPU": 0}
            }
            assert server.argv[1:] == ("-m", "smtk.launch.tfserver")
            master = reference.get("waits_for")
            assert server.until_closed == (None if master is None else (master, tensorflow.WORKER_PORT)), (
                label
            )
        else:
            assert plan.companions == (), label
        compared += 1
    assert errors == len([f for f in FLAG_SETS if f.startswith("ps")])  # algo-3 of the groups layout
    assert compared == len(trees) - errors


def test_precedence_parameter_servers_first(tmp_path: Path) -> None:
    """The toolkit's order: parameter servers (more than one host) ignore MPI, SMDDP and
    MWMS; smtk also lets them win over the torchrun flags."""
    hosts = _hosts(2)
    root = make_tree(
        tmp_path,
        hyperparameters={"sagemaker_program": "train.py", **PS, **MWMS, **MPI, **TORCH},
        resourceconfig=_resource("algo-2", hosts, False),
        code={"train.py": ""},
    )
    env = Environment(root=root, environ={"PATH": _fake_mpirun(tmp_path)})
    plan = select.build_plan(env, entry_point.resolve(env))
    assert select.launcher_for(env) == "process" and plan.kind == "process"
    assert json.loads(plan.env["TF_CONFIG"])["task"] == {"index": 0, "type": "worker"}
    assert plan.companions[0].until_closed == ("algo-1", 2222)


def test_parameter_servers_with_one_distribution_host(tmp_path: Path) -> None:
    """The toolkit checks ``len(env.hosts) > 1`` but builds the cluster from the
    distribution hosts: with one of them it starts a ``ps`` server for a cluster without a
    ``ps`` job (TensorFlow refuses it), and fails outright on the other host. smtk runs the
    script as a plain process on both, without TF_CONFIG."""
    hosts = _hosts(2)
    groups = [
        {"instance_group_name": "train", "instance_type": "ml.c5.xlarge", "hosts": ["algo-1"]},
        {"instance_group_name": "data", "instance_type": "ml.m5.xlarge", "hosts": ["algo-2"]},
    ]
    roots = []
    for host in hosts:
        resource = {"current_host": host, "hosts": hosts, "network_interface_name": "eth0"}
        resource.update(instance_groups=groups, current_group_name="train" if host == "algo-1" else "data")
        hps = {"sagemaker_program": "train.py", **PS, "sagemaker_distribution_instance_groups": ["train"]}
        roots.append(
            make_tree(
                tmp_path / host,
                hyperparameters=hps,
                resourceconfig=resource,
                inputdataconfig={},
                code={"train.py": ""},
            )
        )
    first, second = oracle(tmp_path, [], roots)["trees"]
    assert "ps" not in first["ps"]["cluster"] and first["ps"]["job_name"] == "ps"
    assert "tf_config" in second["error"]
    for root in roots:
        env = Environment(root=root, environ={"PATH": "/usr/bin:/bin"})
        plan = select.build_plan(env, entry_point.resolve(env))
        assert tensorflow.mode(env) is None
        assert plan.kind == "process" and "TF_CONFIG" not in plan.env and plan.companions == ()


# -- the parameter server's own reading of TF_CONFIG ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "TF_CONFIG is not set"),
        ("", "TF_CONFIG is not set"),
        ("{not json", "TF_CONFIG must be"),
        ('{"cluster": {"ps": ["a:1"]}}', "TF_CONFIG must be"),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": "x"}}', "TF_CONFIG must be"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "has no 'ps' job"),
        ('{"cluster": [], "task": {"type": "ps", "index": 0}}', "has no 'ps' job"),
    ],
)
def test_tfserver_rejects_bad_tf_config(value: str | None, problem: str) -> None:
    environ = {} if value is None else {"TF_CONFIG": value}
    with pytest.raises(ValueError, match=problem):
        tfserver.task_of(environ)


def test_tfserver_reads_the_ps_task_smtk_writes() -> None:
    hosts = _hosts(3)
    config = tensorflow.encode(tensorflow.ps_config(hosts, "algo-3", ps_task=True))
    cluster, job, index = tfserver.task_of({"TF_CONFIG": config})
    assert (job, index) == ("ps", 2) and cluster["ps"][2] == "algo-3:2223"


def test_tfserver_without_tf_config_exits_2_before_importing_tensorflow() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    code = "import sys, runpy; runpy.run_module('smtk.launch.tfserver', run_name='__main__')"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 2
    assert "ValueError: TF_CONFIG is not set" in proc.stderr
    imported = {
        line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }
    assert "smtk.log" in imported and "tensorflow" not in imported


@pytest.mark.parametrize("flags", [PS, MWMS], ids=["ps", "mwms"])
def test_a_framework_toolkits_training_module_does_its_own_tensorflow_setup(
    tmp_path: Path, flags: dict[str, object]
) -> None:
    # The TensorFlow toolkit's training module builds TF_CONFIG and starts its parameter
    # server itself: smtk must not start a second one on the same port.
    root = make_tree(
        tmp_path,
        hyperparameters={**flags},
        resourceconfig=_resource("algo-1", _hosts(2), False),
        code={"trainer.py": "def main():\n    pass\n"},
    )
    env = Environment(
        root=root, environ={"PATH": "/usr/bin:/bin", "SAGEMAKER_TRAINING_MODULE": "trainer:main"}
    )
    plan = select.build_plan(env, entry_point.resolve(env))
    assert tensorflow.mode(env) is None
    assert plan.kind == "function" and "TF_CONFIG" not in plan.env and plan.companions == ()
