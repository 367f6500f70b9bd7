"""Every job ends with a true, bounded, safe outcome: hostile trees and entry points, as classes.

Each case is a real ``train`` run on a real tree built to break one rule. The invariants
checked for every one (:func:`check_invariants`): the job ends (a timeout fails the
test), the exit status is one of the documented ones, a failure file exists exactly
when the status is not 0, its first line is a reason and not a traceback, and nothing
says "internal error" (that is for smtk's own bugs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.jobtree import clean_env, make_tree
from tests.helpers.processes import pid_alive

TRAIN = str(Path(sys.executable).parent / "train")
#: Exit statuses train documents (CONTRACT.md section 6), besides the user code's own.
DOCUMENTED = {0, 1, 2, 3, 4}


def run_train(
    root: Path, *, timeout: float = 120, argv: list[str] | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = clean_env(root, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        argv or [TRAIN], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def check_invariants(root: Path, proc: subprocess.CompletedProcess[str], allowed: set[int]) -> str | None:
    """The outcome's invariants; returns the failure file's text (None on success)."""
    status = proc.returncode
    assert status in allowed, (status, proc.stderr[-3000:])
    failure = root / "output" / "failure"
    assert (status == 0) == (not failure.exists()), proc.stderr[-3000:]
    assert (status == 0) == (root / "output" / "success").is_file()
    assert "Traceback (most recent call last)" not in proc.stderr.split("smtk INFO launcher")[0]
    if status == 0:
        return None
    text = failure.read_text()
    first = text.splitlines()[0]
    assert first and not first.startswith("Traceback"), text
    assert "internal error" not in text, text
    record = json.loads((root / "output" / "failure.json").read_text())
    assert record["exit_status"] == status and record["cause"]
    return text


def _file_where(sub: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        path = root / sub
        if path.is_dir():
            path.rmdir()
        path.write_text("not a directory")

    return make


@pytest.mark.parametrize(
    ("case", "breaker"),
    [
        ("model", _file_where("model")),
        ("code", _file_where("code")),
        ("output/data", _file_where("output/data")),
    ],
)
def test_a_file_where_the_tree_needs_a_directory_is_a_configuration_error(
    tmp_path: Path, case: str, breaker: Callable[[Path], None]
) -> None:
    root = make_tree(tmp_path, code={"train.py": "print('ran')\n"} if case != "code" else None)
    breaker(root)
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    text = check_invariants(root, proc, {2})
    assert text is not None and text.startswith("ConfigError: job tree: key ") and "a directory" in text


def test_a_file_where_output_belongs_is_moved_aside_and_the_job_runs(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train.py": "print('ran')\n"})
    (root / "output").rmdir()
    (root / "output").write_text("the user's file")
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    check_invariants(root, proc, {0})
    moved = [p for p in root.iterdir() if p.name.startswith("output.moved-")]
    assert len(moved) == 1 and moved[0].read_text() == "the user's file"


def test_an_integer_beyond_pythons_limit_is_a_configuration_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train.py": ""}, raw_files={"input/config/hyperparameters.json": ""})
    (root / "input/config/hyperparameters.json").write_text('{"n": ' + "7" * 5000 + "}")
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    text = check_invariants(root, proc, {2})
    assert text is not None and text.startswith("ConfigError: hyperparameters.json: expected JSON numbers")


@pytest.mark.parametrize("size", [200_000, 3_000_000])
def test_a_hyperparameter_beyond_the_kernels_argument_limit_is_a_configuration_error(
    tmp_path: Path, size: int
) -> None:
    root = make_tree(tmp_path, hyperparameters={"blob": "b" * size}, code={"train.py": "print('ran')\n"})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py", timeout=240)
    text = check_invariants(root, proc, {2})
    assert text is not None and text.startswith("ConfigError: the launch command")
    assert "pass large values in a file" in text


def test_a_shebang_naming_a_missing_interpreter_is_an_entry_point_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"run.sh": "#!/no/such/interpreter\necho hi\n"})
    proc = run_train(root, SAGEMAKER_PROGRAM="run.sh")
    text = check_invariants(root, proc, {2})
    assert text is not None and text.startswith("EntryPointError: entry point 'run.sh' cannot be started")
    assert "/no/such/interpreter" in text


@pytest.mark.parametrize(
    ("module", "words"),
    [("nosuchmodule:main", "no module named 'nosuchmodule'"), ("trainer:nosuchfunc", "no callable named")],
)
def test_a_training_module_or_function_that_does_not_exist_ends_with_status_2(
    tmp_path: Path, module: str, words: str
) -> None:
    root = make_tree(tmp_path, code={"trainer.py": "def main():\n    print('ran')\n"})
    proc = run_train(root, SAGEMAKER_TRAINING_MODULE=module)
    text = check_invariants(root, proc, {2})
    assert text is not None and words in text.splitlines()[0]


def test_a_module_the_training_function_imports_is_the_users_own_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"trainer.py": "import missing_dependency\ndef main():\n    pass\n"})
    proc = run_train(root, SAGEMAKER_TRAINING_MODULE="trainer:main")
    text = check_invariants(root, proc, {1})
    assert text is not None and text.startswith("ModuleNotFoundError: No module named 'missing_dependency'")


def test_the_value_a_training_function_returns_is_ignored_as_by_the_reference(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"trainer.py": "def main():\n    return 3\n"})
    proc = run_train(root, SAGEMAKER_TRAINING_MODULE="trainer:main")
    check_invariants(root, proc, {0})


def test_closed_stdout_and_stderr_keep_the_jobs_status(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train.py": "print('x' * 100000)\n"})
    env = clean_env(root, SAGEMAKER_PROGRAM="train.py")
    proc = subprocess.Popen([TRAIN], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0, "a closed pipe must not turn success into exit 120"
    assert (root / "output" / "success").is_file()


def test_a_failure_file_that_is_a_directory_is_moved_and_the_reason_written(tmp_path: Path) -> None:
    script = (
        "import os\nos.mkdir(os.path.join(os.environ['SM_OUTPUT_DIR'], 'failure'))\nraise SystemExit(5)\n"
    )
    root = make_tree(tmp_path, code={"train.py": script})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    text = check_invariants(root, proc, {5})
    assert text is not None and "exit status 5" in text
    assert any(p.name.startswith("failure.moved-") and p.is_dir() for p in (root / "output").iterdir())


def test_a_fifo_as_the_code_source_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "sourcedir.tar.gz"
    os.mkfifo(fifo)
    root = make_tree(tmp_path / "job", hyperparameters={"sagemaker_submit_directory": str(fifo)})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py", timeout=60)
    text = check_invariants(root, proc, {2})
    assert text is not None and "is a FIFO, not a tar file or a directory" in text


@pytest.mark.parametrize("name", ["pyproject.toml", "requirements.txt"])
def test_a_fifo_in_the_code_dir_never_blocks(tmp_path: Path, name: str) -> None:
    root = make_tree(tmp_path, code={"train.py": "print('ran')\n"})
    os.mkfifo(root / "code" / name)
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py", timeout=60)
    check_invariants(root, proc, {0, 3})


def test_a_relative_base_dir_gives_absolute_paths_to_the_code(tmp_path: Path) -> None:
    script = (
        "import os\n"
        "print('MODEL', os.environ['SM_MODEL_DIR'])\n"
        "open(os.path.join(os.environ['SM_MODEL_DIR'], 'm'), 'w').close()\n"
    )
    root = make_tree(tmp_path / "job", code={"train.py": script})
    env = clean_env(None, SAGEMAKER_BASE_DIR=os.path.relpath(root, tmp_path), SAGEMAKER_PROGRAM="train.py")
    proc = subprocess.run(
        [TRAIN], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    check_invariants(root, proc, {0})
    assert f"MODEL {root / 'model'}" in proc.stdout
    assert (root / "model" / "m").exists()


DAEMON = """
import os, time
PID_FILE = {pid_file!r}
pid = os.fork()
if pid == 0:
    os.setsid()                      # leaves the job's process group and session
    if os.fork() == 0:
        with open(PID_FILE + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(PID_FILE + ".tmp", PID_FILE)
        time.sleep(600)
    os._exit(0)
os.waitpid(pid, 0)
while not os.path.exists(PID_FILE):
    time.sleep(0.05)
print("daemon started", flush=True)
"""


def test_a_daemon_that_left_the_process_group_does_not_outlive_the_job(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    root = make_tree(tmp_path / "job", code={"train.py": DAEMON.format(pid_file=str(pid_file))})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    daemon = int(pid_file.read_text())
    try:
        check_invariants(root, proc, {0})
        assert "daemon started" in proc.stdout
        # train has stopped it before exiting: it is gone, or a zombie nobody will wait for.
        assert not pid_alive(daemon), "a setsid daemon outlived the job"
    finally:
        if pid_alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_a_program_given_as_an_argument_runs_nothing() -> None:
    for argv, status, words in (
        ([TRAIN, "--version"], 0, "train (smtk "),
        ([TRAIN, "--help"], 0, "usage: train"),
        ([TRAIN, "--bogus"], 2, "unexpected argument '--bogus'"),
    ):
        env = clean_env(None, SAGEMAKER_BASE_DIR="/nonexistent/smtk/must-not-be-created")
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == status and words in proc.stdout + proc.stderr
        assert not os.path.exists("/nonexistent/smtk")


@pytest.mark.parametrize("entry", ["script", "function"])
def test_an_error_file_left_by_an_earlier_run_is_not_this_runs_cause(tmp_path: Path, entry: str) -> None:
    # The error file a script's @record leaves (TORCHELASTIC_ERROR_FILE) is per run: one
    # from an earlier run of the same tree must not become this run's root cause.
    code = {
        "train.py": "import sys\nsys.exit(3)\n",
        "trainer.py": "import sys\ndef main():\n    sys.exit(3)\n",
    }
    root = make_tree(tmp_path, code=code)
    stale = root / ".smtk" / "error.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text(json.dumps({"message": "RuntimeError: raised by an earlier run"}))
    extra = (
        {"SAGEMAKER_PROGRAM": "train.py"}
        if entry == "script"
        else {"SAGEMAKER_TRAINING_MODULE": "trainer:main"}
    )
    proc = run_train(root, **extra)
    text = check_invariants(root, proc, {3})
    assert text is not None and "earlier run" not in text, text
