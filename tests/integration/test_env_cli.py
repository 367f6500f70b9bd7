"""``smtk env`` as a real subprocess (the installed console script) against real trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smtk.environment import Environment
from tests.helpers.jobtree import clean_env, make_tree

SMTK = str(Path(sys.executable).parent / "smtk")
WORKED = json.loads((Path(__file__).resolve().parents[1] / "data" / "worked_example.json").read_text())


def _smtk(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMTK, "env", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    marker = tmp_path / "pwned"
    hps = {
        **WORKED["hyperparameters"],
        "db_password": '"hunter2-secret"',
        "api_token": "raw-token-value",
        "repo": '"https://user:pa55@git.example.com/x.git"',
        "multi": json.dumps("line one\nline 'two' \"three\""),
        "dollar": json.dumps(f"$(touch {marker}) `touch {marker}` ${{HOME}}"),
        "unicode": '"训练 é 🚀"',
    }
    idc = {
        **WORKED["inputdataconfig"],
        "stream": {
            "TrainingInputMode": "Pipe",
            "S3DistributionType": "ShardedByS3Key",
            "RecordWrapperType": "RecordIO",
        },
    }
    rc = WORKED["resourceconfig"]
    return make_tree(tmp_path, hyperparameters=hps, inputdataconfig=idc, resourceconfig=rc, encode=False)


def test_summary_is_readable_and_redacted(tree: Path) -> None:
    proc = _smtk(env=clean_env(tree, TRAINING_JOB_NAME="job-1"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = {line.split("  ", 1)[0].strip(): line for line in out.splitlines() if line.strip()}
    assert lines["job"].endswith("job-1")
    assert lines["host"].endswith("algo-2, worker (master: algo-1)")
    assert lines["hosts"].endswith("2: algo-1, algo-2")
    assert "GPU(s)" in lines["hardware"] and "CPU(s)" in lines["hardware"]
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [
        "stream",
        "Pipe",
        "ShardedByS3Key",
        "RecordIO",
        "-",
        str(tree / "input" / "data" / "stream"),
    ] in rows
    assert [
        "train",
        "File",
        "FullyReplicated",
        "None",
        "text/csv",
        str(tree / "input" / "data" / "train"),
    ] in rows
    assert "hunter2-secret" not in out and "raw-token-value" not in out and "pa55" not in out
    assert "db_password  ****" in out and "api_token    ****" in out
    assert "https://****@git.example.com/x.git" in out
    assert "batch-size   64" in out and "sagemaker_mpi_enabled  false" in out
    assert proc.stderr == ""


def test_json_is_dict_of_the_environment(tree: Path) -> None:
    env = clean_env(tree, TRAINING_JOB_NAME="job-1")
    proc = _smtk("--json", "--reveal-secrets", env=env)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    expected = json.loads(Environment(environ=env).to_env_vars()["SM_TRAINING_ENV"])
    assert printed == expected
    assert printed["hyperparameters"]["db_password"] == "hunter2-secret", "--reveal-secrets is exact"
    masked = _smtk("--json", env=env)
    assert masked.returncode == 0, masked.stderr
    assert "hunter2-secret" not in masked.stdout  # masked by default, like every other output
    shown = json.loads(masked.stdout)
    assert shown["hyperparameters"]["db_password"] == "****"
    assert {k: v for k, v in shown.items() if k != "hyperparameters"} == {
        k: v for k, v in expected.items() if k != "hyperparameters"
    }


def test_export_sources_in_bash_to_the_same_variables(tree: Path, tmp_path: Path) -> None:
    env = clean_env(tree, TRAINING_JOB_NAME="job-1")
    dump = 'import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("SM_")}))'
    script = f"set -e; eval \"$({SMTK} env --export --reveal-secrets)\"; {sys.executable} -c '{dump}'"
    proc = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    sourced: dict[str, Any] = json.loads(proc.stdout)
    expected = Environment(environ=env).to_env_vars()
    not_shell_names = {name for name in expected if "-" in name}
    assert not_shell_names == {"SM_HP_BATCH-SIZE"}
    assert sourced == {k: v for k, v in expected.items() if k not in not_shell_names}
    assert sourced["SM_HP_MULTI"] == "line one\nline 'two' \"three\""
    assert sourced["SM_HP_DB_PASSWORD"] == "hunter2-secret", "--reveal-secrets: sourcing needs the values"
    assert not (tmp_path / "pwned").exists(), "nothing in a value may be executed by the shell"

    export = _smtk("--export", env=env).stdout.splitlines()
    names = [line.split("=", 1)[0].removeprefix("export ") for line in export if line.startswith("export ")]
    assert names == sorted(names) and len(names) == len(sourced)
    assert "# not a shell variable name, skipped: SM_HP_BATCH-SIZE" in export
    assert "export SM_HP_DB_PASSWORD='****'" in export  # masked unless revealed
    assert not any("hunter2-secret" in line for line in export)


def test_root_option_overrides_the_variable(tree: Path, tmp_path: Path) -> None:
    other = make_tree(tmp_path / "other", resourceconfig={"current_host": "node-7", "hosts": ["node-7"]})
    proc = _smtk("--json", "--root", str(other), env=clean_env(tree))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["current_host"] == "node-7"


def _bad_fifo(root: Path) -> None:
    path = root / "input" / "config" / "resourceconfig.json"
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("hyperparameters.json", "{not json", "hyperparameters.json: expected valid JSON"),
        ("resourceconfig.json", '{"current_host": "algo-9", "hosts": ["algo-1"]}', "key 'current_host'"),
        ("inputdataconfig.json", '{"../etc": {}}', "key '../etc'"),
        ("inputdataconfig.json", '{"train": {"TrainingInputMode": "Stream"}}', "train.TrainingInputMode"),
        ("resourceconfig.json", None, "expected a regular JSON file, found <a FIFO"),
    ],
)
@pytest.mark.parametrize("mode", [[], ["--json"], ["--export"]])
def test_bad_tree_is_one_line_and_exit_2(
    tmp_path: Path, name: str, content: str | None, needle: str, mode: list[str]
) -> None:
    root = make_tree(tmp_path)
    if content is None:
        _bad_fifo(root)
    else:
        (root / "input" / "config" / name).write_text(content)
    proc = _smtk(*mode, "--root", str(root), env=clean_env())
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("smtk env: ") and needle in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_help_says_what_is_redacted() -> None:
    proc = subprocess.run([SMTK, "env", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "[--reveal-secrets]" in text and "print exact values, secrets included" in text
    assert "masked like smtk's logs" in text


def test_closed_pipe_is_not_an_error(tree: Path) -> None:
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {SMTK} env --export | head -n 1"],
        env=clean_env(tree),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("export SM_CHANNELS=")
    assert proc.stderr == ""
