"""`train` as a real subprocess on real job trees: entry points, outcomes, streaming, secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.jobtree import clean_env, make_tree

TRAIN = str(Path(sys.executable).parent / "train")


def run_train(root: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(root, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([TRAIN], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def outcome(root: Path) -> tuple[str | None, dict[str, object] | None]:
    failure = root / "output" / "failure"
    record = root / "output" / "failure.json"
    return (
        failure.read_text() if failure.exists() else None,
        json.loads(record.read_text()) if record.exists() else None,
    )


def script(body: str) -> str:
    return textwrap.dedent(body).lstrip()


def test_python_script_sees_the_reference_contract(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        hyperparameters={"epochs": 3, "lr": 0.5, "name": "plain string", "sagemaker_program": "train.py"},
        inputdataconfig={"train": {"TrainingInputMode": "File"}},
        code={
            "train.py": script(
                """
                import json, os, sys
                assert sys.argv[1:] == ["--epochs", "3", "--lr", "0.5", "--name", "plain string"], sys.argv
                assert os.environ["SM_HP_EPOCHS"] == "3"
                assert os.environ["SM_CURRENT_HOST"] == "algo-1"
                assert os.environ["CURRENT_HOST"] == "algo-1"
                assert os.environ["SM_CHANNEL_TRAIN"].endswith("/input/data/train")
                assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == os.getcwd()
                assert os.getcwd().endswith("/code")
                assert os.getpgid(0) == os.getpid(), "must lead its own process group"
                assert sys.stdin.read() == ""
                with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w") as f:
                    f.write("trained")
                print("done training")
                """
            )
        },
    )
    proc = run_train(root)
    assert proc.returncode == 0, proc.stderr
    assert "done training" in proc.stdout
    assert (root / "output" / "success").exists()
    assert (root / "model" / "model.txt").read_text() == "trained"
    assert outcome(root) == (None, None)


@pytest.mark.parametrize("shebang", [True, False])
def test_shell_script_entry_point(tmp_path: Path, shebang: bool) -> None:
    body = 'echo "args:$*"\n[ "$2" = "plain string" ] || exit 7\n'
    root = make_tree(
        tmp_path,
        hyperparameters={"name": "plain string"},
        code={"run.sh": ("#!/bin/sh\n" if shebang else "") + body},
    )
    proc = run_train(root, SAGEMAKER_PROGRAM="run.sh")
    assert proc.returncode == 0, proc.stderr
    assert "args:--name plain string" in proc.stdout


def test_training_module_function(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        code={
            "mypkg/__init__.py": "",
            "mypkg/entry.py": "import os\n\ndef main():\n    print('in', os.environ['SM_CURRENT_HOST'])\n",
        },
    )
    proc = run_train(root, SAGEMAKER_TRAINING_MODULE="mypkg.entry:main")
    assert proc.returncode == 0, proc.stderr
    assert "in algo-1" in proc.stdout.splitlines()


def test_exception_names_root_cause_and_user_frame(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        hyperparameters={"sagemaker_program": "train.py"},
        code={
            "train.py": "import helper\nhelper.go()\n",
            "helper.py": "def go():\n    shape = (1, 3)\n    raise ValueError(f'bad shape {shape}')\n",
        },
    )
    proc = run_train(root)
    assert proc.returncode == 1
    failure, record = outcome(root)
    assert failure is not None and record is not None
    assert failure.splitlines()[0] == "ValueError: bad shape (1, 3) at helper.py:3"
    assert "host algo-1" in failure.splitlines()[1]
    assert len(failure) <= 1024
    assert record["category"] == "exception"
    assert record["exit_status"] == 1
    assert any("Traceback" in line for line in record["stderr_tail"])  # type: ignore[union-attr]
    assert not (root / "output" / "success").exists()


def test_sys_exit_status_is_kept(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train.py": "import sys\nsys.exit(3)\n"})
    proc = run_train(
        root, SAGEMAKER_PROGRAM="train.py", TRAINING_JOB_NAME="job-7", TRAINING_JOB_ARN="arn:x:job/job-7"
    )
    assert proc.returncode == 3
    failure, record = outcome(root)
    assert failure is not None and failure.startswith("the training script exited with status 3")
    assert record is not None and record["extra"] == {"job_name": "job-7", "job_arn": "arn:x:job/job-7"}


@pytest.mark.parametrize(
    ("signum", "words"),
    [(11, "SIGSEGV"), (9, "out of memory")],
)
def test_killed_by_signal(tmp_path: Path, signum: int, words: str) -> None:
    root = make_tree(
        tmp_path, code={"train.py": f"import os\nprint('about to die')\nos.kill(os.getpid(), {signum})\n"}
    )
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 128 + signum
    failure, record = outcome(root)
    assert failure is not None and record is not None
    assert words in failure.splitlines()[0]
    assert record["signal"] == signum


def test_huge_stderr_keeps_lines_whole_and_report_short(tmp_path: Path) -> None:
    code = script(
        """
        import sys
        long_line = "x" * 200_000
        print(long_line)
        for i in range(20000):
            print(f"noise line {i} " + "y" * 200, file=sys.stderr)
        for i in range(5):
            sys.stdout.write(f"\\rprogress {i}/5")
            sys.stdout.flush()
        sys.stdout.write("\\n")
        raise RuntimeError("the real problem")
        """
    )
    root = make_tree(tmp_path, code={"train.py": code})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 1
    assert "x" * 200_000 in proc.stdout.splitlines()
    assert "progress 4/5" in proc.stdout.splitlines()
    failure, _ = outcome(root)
    assert failure is not None
    assert failure.splitlines()[0] == "RuntimeError: the real problem at train.py:10"
    assert len(failure) <= 1024


def test_user_failure_file_is_kept(tmp_path: Path) -> None:
    code = script(
        """
        import os, sys
        with open(os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w") as f:
            f.write("DataError: custom classification")
        sys.exit(int(os.environ.get("CODE", "4")))
        """
    )
    root = make_tree(tmp_path, code={"train.py": code})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 4
    assert (root / "output" / "failure").read_text() == "DataError: custom classification"
    # Exit 0 with a failure reason never happens.
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py", CODE="0")
    assert proc.returncode == 1
    assert (root / "output" / "failure").read_text() == "DataError: custom classification"
    assert not (root / "output" / "success").exists()


def test_stale_outcome_files_are_removed(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train.py": "print('ok')\n"}, raw_files={"output/failure": "old"})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 0
    assert not (root / "output" / "failure").exists()
    assert (root / "output" / "success").exists()


def test_bad_config_exits_2_with_reason(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path, raw_files={"input/config/resourceconfig.json": '{"hosts": ["algo-1"], "current_host": 7}'}
    )
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 2
    failure, record = outcome(root)
    assert failure is not None and record is not None
    assert "resourceconfig.json" in failure.splitlines()[0]
    assert "current_host" in failure.splitlines()[0]
    assert "Traceback" not in proc.stderr


def test_missing_entry_point_lists_code_dir(tmp_path: Path) -> None:
    root = make_tree(tmp_path, code={"train_model.py": "", "utils.py": ""})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py")
    assert proc.returncode == 2
    failure, _ = outcome(root)
    assert failure is not None
    assert "train.py" in failure and "train_model.py" in failure
    assert "Traceback" not in proc.stderr


def test_secrets_never_reach_logs_or_failure_files(tmp_path: Path) -> None:
    token = "tok-5ecr3t-value-0042"
    password = "hunter2-passw0rd-77"
    code = script(
        """
        import os, sys
        print("token is", os.environ["SM_HP_API_TOKEN"])
        print("password is", os.environ["DB_PASSWORD"], file=sys.stderr)
        raise PermissionError("login failed with " + os.environ["SM_HP_API_TOKEN"])
        """
    )
    root = make_tree(tmp_path, hyperparameters={"api_token": token}, code={"train.py": code})
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py", DB_PASSWORD=password, SMTK_LOG_LEVEL="DEBUG")
    assert proc.returncode == 1
    everything = proc.stdout + proc.stderr + (root / "output" / "failure").read_text()
    everything += (root / "output" / "failure.json").read_text()
    assert token not in everything
    assert password not in everything
    assert "PermissionError: login failed with ****" in (root / "output" / "failure").read_text()


def test_requirements_failure_is_exit_3_with_pip_error(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        code={
            "train.py": "print('never runs')\n",
            "requirements.txt": "--index-url http://user:pipsecret@127.0.0.1:9/simple\nsurely-not-a-package-xyz==1.0\n",
        },
    )
    proc = run_train(root, SAGEMAKER_PROGRAM="train.py", timeout=300)
    assert proc.returncode == 3
    failure, record = outcome(root)
    assert failure is not None and record is not None
    assert "surely-not-a-package-xyz" in failure
    assert "pipsecret" not in failure + proc.stdout + proc.stderr + json.dumps(record)
    assert "never runs" not in proc.stdout


def test_train_path_imports_no_heavy_modules(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        hyperparameters={"epochs": 1},
        inputdataconfig={"train": {"TrainingInputMode": "File"}},
        code={"train.py": "print('first line')\n"},
    )
    env = clean_env(root, SAGEMAKER_PROGRAM="train.py")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "smtk.train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line
    }
    heavy = {
        name for name in imported if name.split(".")[0] in {"boto3", "botocore", "torch", "numpy", "mpi4py"}
    }
    assert heavy == set()
    assert "smtk.supervisor" in imported  # the measurement did see smtk's own imports
