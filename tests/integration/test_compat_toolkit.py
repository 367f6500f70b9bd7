"""A real AWS framework toolkit on smtk's ``sagemaker_training`` API, against the reference.

``.venv-compat`` holds smtk, the compat distribution (compat/) and
``sagemaker-pytorch-training`` from PyPI, installed *without* AWS's
``sagemaker-training``; ``.venv-compat-ref`` holds the reference 5.1.4 with the same
toolkit (scripts/test.sh makes both). Each job runs ``train`` with
``SAGEMAKER_TRAINING_MODULE=sagemaker_pytorch_container.training:main`` on identical
trees under both, and the user's script reports what it saw (argv, cwd, every ``SM_*``
variable, the toolkit's ``MASTER_*``/``NCCL_*``). Tests skip with the reason when the
venvs are missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.jobtree import clean_env, make_tree

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
COMPAT_VENV = Path(os.environ.get("SMTK_COMPAT_VENV", str(REPO / ".venv-compat")))
REFERENCE_VENV = Path(os.environ.get("SMTK_COMPAT_REF_VENV", str(REPO / ".venv-compat-ref")))
TOOLKIT_MODULE = "sagemaker_pytorch_container.training:main"

#: The user's script: records what it was given, then does what the ``mode`` hyperparameter says.
PROBE = """
import json, os, signal, sys, time
seen = {
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "sm": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
    "toolkit": {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "NCCL_DEBUG", "NCCL_IB_DISABLE",
                                               "NCCL_SOCKET_IFNAME", "SM_DLC_TORCH_VERSION", "CURRENT_HOST")},
}
model_dir = os.environ["SM_MODEL_DIR"]
with open(os.path.join(model_dir, "seen.json"), "w") as f:
    json.dump(seen, f, sort_keys=True)
mode = os.environ.get("SM_HP_MODE", "ok")
if mode == "raise":
    raise ValueError("bad shape (1, 3)")
if mode == "exit":
    sys.exit(3)
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "dist":
    import datetime, torch, torch.distributed as dist
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    value = torch.ones(1)
    dist.all_reduce(value)
    dist.destroy_process_group()
    seen["launcher"] = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "SMTK_RANK", "SMTK_LAUNCHER")}
    with open(os.path.join(model_dir, "seen.json"), "w") as f:
        json.dump(seen, f, sort_keys=True)
if mode == "sigterm":
    def stopped(signum, frame):
        open(os.path.join(model_dir, "got-sigterm"), "w").close()
        sys.exit(0)
    signal.signal(signal.SIGTERM, stopped)
    open(os.path.join(model_dir, "ready"), "w").close()
    time.sleep(120)
with open(os.path.join(model_dir, "model.txt"), "w") as f:
    f.write("weights")
print("probe done", flush=True)
"""


def require(venv: Path) -> None:
    if not (venv / "bin" / "train").exists():
        pytest.skip(
            f"{venv} is not set up (scripts/test.sh makes it: smtk + compat + sagemaker-pytorch-training)"
        )


@dataclass
class Job:
    root: Path
    exit_status: int
    output: str

    def seen(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "model" / "seen.json").read_text())
        return data

    def failure(self) -> str | None:
        path = self.root / "output" / "failure"
        return path.read_text() if path.exists() else None


def job_env(venv: Path, root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return clean_env(
        root,
        PATH=f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin",
        SAGEMAKER_TRAINING_MODULE=TOOLKIT_MODULE,
        # One host named algo-1 that does not resolve here: the toolkit's documented switch
        # that skips its DNS wait (both toolkits honour it).
        SM_STUDIO_LOCAL_MODE="true",
        **(extra or {}),
    )


def make_job(base: Path, mode: str, **flags: Any) -> Path:
    return make_tree(
        base,
        hyperparameters={
            "sagemaker_program": "probe.py",
            "epochs": 2,
            "mode": mode,
            "layers": [64, 32],
            **flags,
        },
        inputdataconfig={"training": {"TrainingInputMode": "File"}},
        code={"probe.py": PROBE},
    )


def run_job(venv: Path, base: Path, mode: str, **flags: Any) -> Job:
    root = make_job(base, mode, **flags)
    result = subprocess.run(
        [str(venv / "bin" / "train")],
        env=job_env(venv, root),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return Job(root, result.returncode, result.stdout + result.stderr)


def normalised(seen: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """``seen`` with the tree's own path replaced, so two trees compare equal."""
    return json.loads(json.dumps(seen).replace(str(root), "<root>"))


def test_success_matches_the_reference(tmp_path: Path) -> None:
    require(COMPAT_VENV)
    require(REFERENCE_VENV)
    ours = run_job(COMPAT_VENV, tmp_path / "smtk", "ok")
    theirs = run_job(REFERENCE_VENV, tmp_path / "ref", "ok")
    assert (ours.exit_status, theirs.exit_status) == (0, 0), ours.output[-3000:] + theirs.output[-3000:]
    for job in (ours, theirs):
        assert (job.root / "output" / "success").exists()
        assert (job.root / "model" / "model.txt").read_text() == "weights"
    mine, reference = normalised(ours.seen(), ours.root), normalised(theirs.seen(), theirs.root)
    assert mine["argv"] == reference["argv"] == ["--epochs", "2", "--layers", "[64, 32]", "--mode", "ok"]
    assert mine["cwd"] == reference["cwd"] == "<root>/code"
    # The toolkit's own additions (MASTER_ADDR/PORT=7777, NCCL_*, SM_DLC_TORCH_VERSION) reach the script.
    assert mine["toolkit"] == reference["toolkit"]
    assert mine["toolkit"]["MASTER_PORT"] == "7777"
    assert mine["sm"] == reference["sm"]  # every SM_* variable, byte for byte
    assert len(mine["sm"]) > 30


def test_torch_distributed_on_one_host_runs_the_script_in_smtks_rank(tmp_path: Path) -> None:
    """smtk runs torchrun (a private rendezvous port on one host) over the toolkit's function; the
    toolkit's own MASTER_PORT=7777 must not reach the script, or init_process_group finds no store."""
    require(COMPAT_VENV)
    ours = run_job(COMPAT_VENV, tmp_path / "smtk", "dist", sagemaker_torch_distributed_enabled=True)
    assert ours.exit_status == 0, ours.output[-3000:]
    seen = ours.seen()
    assert seen["launcher"] == {"RANK": "0", "WORLD_SIZE": "1", "SMTK_RANK": "0", "SMTK_LAUNCHER": "torchrun"}
    assert seen["argv"] == ["--epochs", "2", "--layers", "[64, 32]", "--mode", "dist"]
    assert (ours.root / "output" / "success").exists()


#: (mode, smtk's exit status, the first line of smtk's failure reason, the reference's exit status)
FAILURES = [
    ("raise", 1, "ValueError: bad shape (1, 3) at probe.py:", 1),
    ("exit", 3, "the entry point probe.py exited with status 3", 1),
    ("kill", 137, "the entry point probe.py was killed by SIGKILL (signal 9)", 1),
]


@pytest.mark.parametrize(("mode", "status", "reason", "reference_status"), FAILURES)
def test_failures_name_the_root_cause(
    tmp_path: Path, mode: str, status: int, reason: str, reference_status: int
) -> None:
    require(COMPAT_VENV)
    ours = run_job(COMPAT_VENV, tmp_path / "smtk", mode)
    assert ours.exit_status == status, ours.output[-3000:]
    failure = ours.failure()
    assert failure is not None and failure.startswith(reason), failure
    record = json.loads((ours.root / "output" / "failure.json").read_text())
    assert record["exit_status"] == status and record["host"] == "algo-1"
    assert not (ours.root / "output" / "success").exists()
    if REFERENCE_VENV.joinpath("bin", "train").exists():
        # What the reference does on the same tree: the toolkit's error class first, exit status 1.
        theirs = run_job(REFERENCE_VENV, tmp_path / "ref", mode)
        assert theirs.exit_status == reference_status
        assert (theirs.failure() or "").startswith("ExecuteUserScriptError:")


def test_sigterm_reaches_the_script_through_the_toolkit(tmp_path: Path) -> None:
    require(COMPAT_VENV)
    root = make_job(tmp_path / "smtk", "sigterm")
    proc = subprocess.Popen(
        [str(COMPAT_VENV / "bin" / "train")],
        env=job_env(COMPAT_VENV, root, {"SMTK_GRACE_PERIOD": "30"}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (root / "model" / "ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the script never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # train -> the toolkit's process -> the script: each forwarded SIGTERM to the next one.
    assert (root / "model" / "got-sigterm").exists(), output.decode(errors="replace")[-3000:]
    assert proc.returncode == 128 + signal.SIGTERM
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("Stopped: train received SIGTERM"), failure


# -- the reference toolkit's own public example framework ------------------------------------------

#: Public repositories read at test time (a git directory or a checkout); never copied here.
TRAINING_TOOLKIT_GIT = os.environ.get(
    "SMTK_TRAINING_TOOLKIT_GIT", "/work/.mirror/aws+sagemaker-training-toolkit/repo"
)

USER_MODULE = """
import json


class Model:
    def __init__(self, data):
        self.data = data

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.data, f, sort_keys=True)


def train(channel_input_dirs, hyperparameters):
    return Model({"channels": sorted(channel_input_dirs), "hyperparameters": hyperparameters})
"""


def public_file(git_dir: str, path: str) -> str:
    """``path`` at ``HEAD`` of a public repository's git directory or checkout, or skip."""
    found = subprocess.run(
        ["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        checkout = Path(git_dir) / path
        if checkout.is_file():
            return checkout.read_text()
        pytest.skip(f"{path} not available from {git_dir} (set SMTK_TRAINING_TOOLKIT_GIT to a clone)")
    return found.stdout


def test_the_reference_toolkits_simple_framework(tmp_path: Path) -> None:
    """test/functional/simple_framework.py of aws/sagemaker-training-toolkit, as the framework module:
    it uses environment.Environment, modules.import_module and functions.matching_args."""
    require(COMPAT_VENV)
    framework = tmp_path / "framework"
    framework.mkdir()
    (framework / "simple_framework.py").write_text(
        public_file(TRAINING_TOOLKIT_GIT, "test/functional/simple_framework.py")
    )
    jobs = {}
    for name, venv in (("smtk", COMPAT_VENV), ("ref", REFERENCE_VENV)):
        if not (venv / "bin" / "train").exists():
            continue
        root = make_tree(
            tmp_path / name,
            hyperparameters={"sagemaker_program": "user_module", "epochs": 2},
            inputdataconfig={"training": {"TrainingInputMode": "File"}},
            code={"user_module.py": USER_MODULE},
        )
        env = job_env(venv, root, {"PYTHONPATH": str(framework)})
        env["SAGEMAKER_TRAINING_MODULE"] = "simple_framework:train"
        result = subprocess.run(
            [str(venv / "bin" / "train")], env=env, capture_output=True, text=True, timeout=240, check=False
        )
        jobs[name] = (root, result)
    root, result = jobs["smtk"]
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    saved = json.loads((root / "model" / "saved_model").read_text())
    assert saved == {"channels": ["training"], "hyperparameters": {"epochs": 2}}
    if "ref" in jobs:
        # The reference's own functions.getargspec uses inspect.ArgSpec, which Python 3.11 removed.
        ref_root, ref_result = jobs["ref"]
        assert ref_result.returncode == 1
        assert "ArgSpec" in (ref_root / "output" / "failure").read_text()


# -- the TensorFlow framework toolkit ----------------------------------------------------------------

TF_TOOLKIT_VENV = Path(os.environ.get("SMTK_TF_TOOLKIT_VENV", str(REPO / ".venv-tfc")))

TF_PROBE = """
import json, os, sys
with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "tf_config": os.environ.get("TF_CONFIG")}, f)
"""


def test_the_tensorflow_toolkit_runs_on_the_compat_api(tmp_path: Path) -> None:
    """sagemaker-tensorflow-training's main (Environment(hyperparameters=read_hyperparameters()),
    mapping.to_cmd_args, entry_point.run with TF_CONFIG in env_vars), with the test venv's
    TensorFlow and the toolkit installed --no-deps in .venv-tfc."""
    site = next(TF_TOOLKIT_VENV.glob("lib/python3*/site-packages"), None)
    if site is None or not (site / "sagemaker_tensorflow_container").is_dir():
        pytest.skip(f"sagemaker-tensorflow-training is not installed in {TF_TOOLKIT_VENV} (scripts/test.sh)")
    pytest.importorskip("tensorflow")
    root = make_tree(
        tmp_path,
        hyperparameters={
            "sagemaker_program": "probe.py",
            "epochs": 2,
            "sagemaker_multi_worker_mirrored_strategy_enabled": True,
        },
        inputdataconfig={},
        code={"probe.py": TF_PROBE},
    )
    bin_dir = Path(sys.executable).parent
    env = clean_env(
        root,
        PATH=f"{bin_dir}{os.pathsep}/usr/bin:/bin",
        PYTHONPATH=f"{REPO / 'compat' / 'src'}{os.pathsep}{site}",
        SAGEMAKER_TRAINING_MODULE="sagemaker_tensorflow_container.training:main",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    result = subprocess.run(
        [str(bin_dir / "train")], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    seen = json.loads((root / "model" / "seen.json").read_text())
    assert seen["argv"] == ["--epochs", "2"]
    expected = {
        "cluster": {"worker": ["algo-1:8890"]},
        "environment": "cloud",
        "task": {"index": 0, "type": "worker"},
    }
    assert json.loads(seen["tf_config"]) == expected
