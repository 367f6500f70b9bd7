"""``import smtk`` does no work: no file created or read, no process, no heavy module.

Watched with Python's audit hooks (PEP 578) in a fresh interpreter, so the test needs no
strace and sees exactly what the interpreter does: every ``open``, ``mkdir`` and spawn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.jobtree import make_tree

HEAVY = ("boto3", "botocore", "torch", "numpy", "mpi4py", "s3transfer", "psutil")

PROBE = r"""
import json, os, sys
base = os.environ["SAGEMAKER_BASE_DIR"]
cwd = os.getcwd()
seen = {"open": [], "write": [], "spawn": []}
SPAWN = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.fork", "os.spawn")
WRITE = ("os.mkdir", "os.rename", "os.remove", "os.symlink", "os.chmod", "shutil.rmtree", "os.truncate")

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        if path.startswith((base, cwd)) or "/input/config/" in path:
            seen["open"].append(path)
        if any(flag in mode for flag in "wax+"):
            seen["write"].append(path)
    elif event.startswith(WRITE):
        seen["write"].append(event)
    elif event.startswith(SPAWN):
        seen["spawn"].append(event)

sys.addaudithook(hook)

def snapshot():
    out = {k: list(v) for k, v in seen.items()}
    out["heavy"] = sorted(m for m in HEAVY if m in sys.modules)
    for v in seen.values():
        v.clear()
    return out

HEAVY = %r
import smtk
after_import = snapshot()
env = smtk.Environment()
after_build = snapshot()
values = env.to_env_vars()
env.to_cmd_args()
dict(env)
after_render = snapshot()
print(json.dumps({"import": after_import, "build": after_build, "render": after_render,
                  "root": env.paths.root, "cpus": values["SM_NUM_CPUS"]}))
"""


def _probe(tmp_path: Path, base: Path, path: str = "/usr/bin:/bin") -> dict[str, dict[str, list[str]]]:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {"PATH": path, "HOME": str(tmp_path / "home"), "SAGEMAKER_BASE_DIR": str(base)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(cwd.iterdir()) == [], "nothing may be created in the working directory"
    assert not (tmp_path / "home").exists(), (
        "nothing may be created in $HOME (the reference makes ~/sagemaker_local)"
    )
    result: dict[str, dict[str, list[str]]] = json.loads(proc.stdout)
    assert result["root"] == str(base)
    return result


def test_import_and_environment_on_a_missing_tree(tmp_path: Path) -> None:
    base = tmp_path / "no" / "such" / "opt" / "ml"
    result = _probe(tmp_path, base)
    assert result["import"] == {"open": [], "write": [], "spawn": [], "heavy": []}
    assert result["build"] == {"open": [], "write": [], "spawn": [], "heavy": []}
    assert result["render"]["heavy"] == [] and result["render"]["write"] == []
    assert not base.exists() and not (tmp_path / "no").exists()


def test_import_reads_nothing_and_environment_reads_only_the_config(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "job", hyperparameters={"lr": 0.1}, inputdataconfig={"train": {}})
    before = sorted(str(p) for p in (tmp_path / "job").rglob("*"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-1)'\n")
    (bindir / "nvidia-smi").chmod(0o755)
    result = _probe(tmp_path, root, path=f"{bindir}:/usr/bin:/bin")
    assert result["import"] == {"open": [], "write": [], "spawn": [], "heavy": []}
    config = root / "input" / "config"
    assert sorted(result["build"]["open"]) == [
        str(config / "hyperparameters.json"),
        str(config / "inputdataconfig.json"),
        str(config / "resourceconfig.json"),
    ]
    assert result["build"]["spawn"] == [], "hardware probes wait until a count is asked for"
    assert result["build"]["heavy"] == [] and result["render"]["heavy"] == []
    assert result["render"]["write"] == []
    # Counts asked for: the one tool present runs once; absent tools spawn nothing.
    assert result["render"]["spawn"] == ["subprocess.Popen"]
    assert sorted(str(p) for p in (tmp_path / "job").rglob("*")) == before, "the tree is left as it was"
